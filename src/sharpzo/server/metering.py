"""Charging scoring requests: the quota check before work, and the commit (with idempotent replay) before the
response, which carries the account's usage and the request's stage times."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel

from sharpzo.shared.protocol import SERVER_TIMING_HEADER, AccountUsage, Usage

from .auth import Account, Caller, usage_headers
from .errors import ApiError
from .idempotency import fingerprint, replay
from .ledger import Ledger, QuotaExceeded
from .metrics import Metrics, Observation, StageTimes

# Quotas do not refill by themselves; this only spaces out re-checks in case an operator raises one.
QUOTA_RETRY_AFTER_S = 3600
REPLAYED_HEADER = "Idempotent-Replayed"

Work = Callable[[], Awaitable[tuple[BaseModel, Usage]]]


def _over_quota(account: Account, queries: int, usage: AccountUsage) -> ApiError:
    return ApiError(
        429,
        f"quota: {queries} queries would pass key {account.name!r}'s quota of {usage.quota} "
        f"({usage.remaining} left); ask the operator for more",
        {"Retry-After": str(QUOTA_RETRY_AFTER_S), **usage_headers(usage)},
        code="quota_exhausted",
    )


@dataclass
class MeteredCall:
    """One charged POST of a caller, with its idempotency key if the client sent one."""

    request: Request
    caller: Caller
    idempotency_key: str | None
    ledger: Ledger
    window_s: float
    metrics: Metrics
    observation: Observation
    stages: StageTimes = field(default_factory=StageTimes)

    def check_quota(self, queries: int) -> None:
        """Refuse, before any work, a request that cannot fit in what is left of the quota."""
        usage = self.caller.usage
        if usage.remaining is not None and queries > usage.remaining:
            raise _over_quota(self.caller.account, queries, usage)

    def _replay(self, body: bytes, usage: AccountUsage) -> Response:
        return Response(body, media_type="application/json", headers={REPLAYED_HEADER: "true", **usage_headers(usage)})

    async def respond(self, work: Work) -> Response:
        """Replay the key's earlier response, or do the work and commit its charge before answering."""
        self.stages.add("accept", time.perf_counter() - self.observation.started)
        request_fingerprint = fingerprint(self.request.url.path, await self.request.body())
        key = self.idempotency_key
        account = self.caller.account
        if self.caller.earlier is not None:  # looked up under this request's key, with the caller's usage
            return self._replay(replay(self.caller.earlier, request_fingerprint), self.caller.usage)
        result, charge = await work()
        with self.stages.time("encode"):
            content = result.model_dump_json().encode()
        try:
            with self.stages.time("ledger"):
                committed = await asyncio.to_thread(
                    self.ledger.commit, account.name, account.quota, charge, key, request_fingerprint, content,
                    self.window_s,
                )
        except QuotaExceeded as exc:  # concurrent requests spent the quota while this one worked
            raise _over_quota(account, charge.queries, exc.totals) from exc
        if committed.earlier is not None:  # a concurrent try with the same key committed first
            return self._replay(replay(committed.earlier, request_fingerprint), committed.totals)
        self.metrics.charged(account.name, charge)
        self.metrics.on_stages(self.stages)
        self.observation.queries = charge.queries
        headers = {**usage_headers(committed.totals), SERVER_TIMING_HEADER: self.stages.header()}
        return Response(content, media_type="application/json", headers=headers)
