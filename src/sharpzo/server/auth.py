"""Who is calling: Bearer API keys (configured or in the ledger), or the anonymous account when auth is off."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sharpzo.shared.protocol import AccountUsage

from .keys import ANONYMOUS, KeySpec, hash_key
from .ledger import Ledger, Replayable


@dataclass(frozen=True)
class Account:
    name: str
    quota: int | None  # None: no limit


ANONYMOUS_ACCOUNT = Account(ANONYMOUS, None)


def usage_headers(usage: AccountUsage) -> dict[str, str]:
    """X-Queries-Used, and X-Quota and X-Queries-Remaining for a key with a quota."""
    headers = {"X-Queries-Used": str(usage.queries)}
    if usage.quota is not None:
        headers["X-Quota"] = str(usage.quota)
        headers["X-Queries-Remaining"] = str(usage.remaining)
    return headers


@dataclass(frozen=True)
class Caller:
    """The account a request is charged to, and what the ledger held for it when the request came in: the account's
    usage and, for a charged POST with an idempotency key (validated), the response an earlier try under that key
    was charged for."""

    account: Account
    usage: AccountUsage
    idempotency_key: str | None = None
    earlier: Replayable | None = None

    def headers(self) -> dict[str, str]:
        return usage_headers(self.usage)


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


@dataclass(frozen=True)
class Admission:
    """What admits a request: the keys (None: auth is off), the per-key rate limit, and the ledger it reads."""

    ledger: Ledger
    authenticator: Authenticator | None
    limiter: TokenBucket | None
    idempotency_window_s: float
