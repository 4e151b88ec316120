"""Charging scoring requests: the replay of a retried one, the quota check before work, and the commit (charge and
response in one transaction) before the answer, which carries the account's usage and the request's stage times."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from fastapi.responses import Response
from pydantic import BaseModel

from sharpzo.shared.protocol import SERVER_TIMING_HEADER, AccountUsage, Usage

from .auth import Account, Caller, usage_headers
from .errors import ApiError
from .idempotency import fingerprint, replay
from .ledger import Ledger, QuotaExceeded
from .metrics import Metrics, StageTimes
from .observation import current_observation

# Quotas do not refill by themselves; this only spaces out re-checks in case an operator raises one.
QUOTA_RETRY_AFTER_S = 3600
REPLAYED_HEADER = "Idempotent-Replayed"


def _over_quota(account: Account, queries: int, usage: AccountUsage) -> ApiError:
    return ApiError(
        429,
        f"quota: {queries} queries would pass key {account.name!r}'s quota of {usage.quota} "
        f"({usage.remaining} left); ask the operator for more",
        {"Retry-After": str(QUOTA_RETRY_AFTER_S), **usage_headers(usage)},
        code="quota_exhausted",
    )


def _replayed(body: bytes, usage: AccountUsage) -> Response:
    return Response(body, media_type="application/json", headers={REPLAYED_HEADER: "true", **usage_headers(usage)})


@dataclass
class MeteredRequest:
    """One charged POST of a caller: what identifies it for its idempotency key, and its stage times."""

    caller: Caller
    fingerprint: str
    stages: StageTimes = field(default_factory=StageTimes)

    def replayed(self) -> Response | None:
        """The response an earlier try under this key was charged for (looked up with the caller's usage), if any."""
        earlier = self.caller.earlier
        return None if earlier is None else _replayed(replay(earlier, self.fingerprint), self.caller.usage)

    def check_quota(self, queries: int) -> None:
        """Refuse, before any work, a request that cannot fit in what is left of the quota."""
        usage = self.caller.usage
        if usage.remaining is not None and queries > usage.remaining:
            raise _over_quota(self.caller.account, queries, usage)


class Metering:
    def __init__(self, ledger: Ledger, window_s: float, metrics: Metrics) -> None:
        self.ledger = ledger
        self.window_s = window_s
        self.metrics = metrics

    def arrive(self, caller: Caller, path: str, body: bytes) -> MeteredRequest:
        """The request as the ledger will know it; its time so far is the "accept" stage."""
        call = MeteredRequest(caller, fingerprint(path, body))
        call.stages.add("accept", time.perf_counter() - current_observation().started)
        return call

    async def commit(self, call: MeteredRequest, result: BaseModel, charge: Usage) -> Response:
        """Charge ``charge`` and keep ``result`` under the key in one transaction, then answer with it."""
        with call.stages.time("encode"):
            content = result.model_dump_json().encode()
        account = call.caller.account
        try:
            with call.stages.time("ledger"):
                committed = await asyncio.to_thread(
                    self.ledger.commit, account.name, account.quota, charge, call.caller.idempotency_key,
                    call.fingerprint, content, self.window_s,
                )
        except QuotaExceeded as exc:  # concurrent requests spent the quota while this one worked
            raise _over_quota(account, charge.queries, exc.totals) from exc
        if committed.earlier is not None:  # a concurrent try with the same key committed first
            return _replayed(replay(committed.earlier, call.fingerprint), committed.totals)
        self.metrics.charged(account.name, charge)
        self.metrics.on_stages(call.stages)
        current_observation().queries = charge.queries
        headers = {**usage_headers(committed.totals), SERVER_TIMING_HEADER: call.stages.header()}
        return Response(content, media_type="application/json", headers=headers)
