"""Charging scoring requests: the quota check before work, the commit (with idempotent replay) before the response,
and the usage headers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Awaitable, Callable

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import Account
from .errors import ApiError
from .idempotency import fingerprint, replay
from .ledger import Charge, Ledger, QuotaExceeded, Totals

# Quotas do not refill by themselves; this only spaces out re-checks in case an operator raises one.
QUOTA_RETRY_AFTER_S = 3600
REPLAYED_HEADER = "Idempotent-Replayed"

Work = Callable[[], Awaitable[tuple[BaseModel, Charge]]]


def _over_quota(account: Account, queries: int, totals: Totals) -> ApiError:
    return ApiError(
        429,
        f"quota: {queries} queries would pass key {account.name!r}'s quota of {totals.quota} "
        f"({totals.remaining} left); ask the operator for more",
        {"Retry-After": str(QUOTA_RETRY_AFTER_S)},
    )


@dataclass
class MeteredCall:
    """One charged POST of an account, with its idempotency key if the client sent one."""

    request: Request
    account: Account
    idempotency_key: str | None
    ledger: Ledger
    window_s: float

    def check_quota(self, queries: int) -> None:
        """Refuse, before any work, a request that cannot fit in what is left of the quota."""
        totals: Totals = self.request.state.totals
        if totals.remaining is not None and queries > totals.remaining:
            raise _over_quota(self.account, queries, totals)

    def _replay(self, body: bytes) -> Response:
        return Response(body, media_type="application/json", headers={REPLAYED_HEADER: "true"})

    async def respond(self, work: Work) -> Response:
        """Replay the key's earlier response, or do the work and commit its charge before answering."""
        request_fingerprint = fingerprint(self.request.url.path, await self.request.body())
        key = self.idempotency_key
        if key is not None:
            earlier = await asyncio.to_thread(self.ledger.replayable, self.account.name, key, self.window_s)
            if earlier is not None:
                return self._replay(replay(earlier, request_fingerprint))
        result, charge = await work()
        content = result.model_dump_json().encode()
        try:
            committed = await asyncio.to_thread(
                self.ledger.commit, self.account.name, self.account.quota, charge, key, request_fingerprint, content,
                self.window_s,
            )
        except QuotaExceeded as exc:  # concurrent requests spent the quota while this one worked
            self.request.state.totals = exc.totals
            raise _over_quota(self.account, charge.queries, exc.totals) from exc
        self.request.state.totals = committed.totals
        if committed.earlier is not None:  # a concurrent try with the same key committed first
            return self._replay(replay(committed.earlier, request_fingerprint))
        self.request.state.charge = charge
        return Response(content, media_type="application/json")


class UsageHeadersMiddleware:
    """X-Queries-Used, and X-Quota and X-Queries-Remaining for a key with a quota, on every authenticated response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_usage(message: Message) -> None:
            totals: Totals | None = scope.get("state", {}).get("totals")
            if message["type"] == "http.response.start" and totals is not None:
                headers = MutableHeaders(scope=message)
                headers["X-Queries-Used"] = str(totals.queries)
                if totals.quota is not None:
                    headers["X-Quota"] = str(totals.quota)
                    headers["X-Queries-Remaining"] = str(totals.remaining)
            await send(message)

        await self.app(scope, receive, send_with_usage)
