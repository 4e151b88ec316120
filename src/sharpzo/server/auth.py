"""Who is calling: Bearer API keys (configured or in the ledger), or the anonymous account when auth is off."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .errors import ApiError
from .keys import ANONYMOUS, KeySpec, hash_key
from .ledger import Ledger


@dataclass(frozen=True)
class Account:
    name: str
    quota: int | None  # None: no limit


class TokenBucket:
    """Per-account request rate limit: ``rate`` requests per second on average, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, when)

    def take(self, name: str) -> float:
        """Spend one token; 0 when allowed, else the seconds until a token is there."""
        now = time.monotonic()
        tokens, when = self._buckets.get(name, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - when) * self.rate)
        if tokens < 1.0:
            self._buckets[name] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self._buckets[name] = (tokens - 1.0, now)
        return 0.0


class Authenticator:
    def __init__(self, ledger: Ledger, configured: dict[str, KeySpec]) -> None:
        self.ledger = ledger
        self.configured = configured

    def account(self, key: str) -> Account | None:
        """The account of a live key, looked up in the ledger each time so that a revocation counts at once."""
        key_hash = hash_key(key)
        spec = self.configured.get(key_hash)
        if spec is not None:
            return Account(spec.name, spec.quota)
        stored = self.ledger.find_key(key_hash)
        return None if stored is None else Account(stored.name, stored.quota)


AccountDependency = Callable[..., Awaitable[Account]]


async def _remember(request: Request, ledger: Ledger, account: Account) -> None:
    """Keep the account and its usage on the request, for quota checks and the usage headers."""
    request.state.account = account
    request.state.totals = await asyncio.to_thread(ledger.totals, account.name, account.quota)


def anonymous_dependency(ledger: Ledger) -> AccountDependency:
    anonymous = Account(ANONYMOUS, None)

    async def anonymous_account(request: Request) -> Account:
        await _remember(request, ledger, anonymous)
        return anonymous

    return anonymous_account


def bearer_dependency(authenticator: Authenticator, limiter: TokenBucket) -> AccountDependency:
    bearer = HTTPBearer(auto_error=False, description="An API key: `sharpzo keys add NAME --quota N` prints one.")
    challenge = {"WWW-Authenticate": "Bearer"}

    async def bearer_account(request: Request, credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> Account:
        if credentials is None:
            raise ApiError(401, "Authorization: missing; send 'Authorization: Bearer <API key>'", challenge)
        account = await asyncio.to_thread(authenticator.account, credentials.credentials)
        if account is None:
            raise ApiError(401, "Authorization: unknown or revoked API key", challenge)
        await _remember(request, authenticator.ledger, account)
        wait = limiter.take(account.name)
        if wait > 0:
            raise ApiError(
                429, f"rate: key {account.name!r} is over {limiter.rate:g} requests/s", {"Retry-After": str(math.ceil(wait))}
            )
        return account

    return bearer_account
