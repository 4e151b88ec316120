"""What the app learns about one request while it runs, for its access-log line and its error answers.

One context variable holds it: `ObserveMiddleware` begins an `Observation` for each HTTP request, the caller's
dependency notes who is charged, and the metering notes the queries it charged. A context variable is per request
because each request runs in its own task.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass

from sharpzo.shared.protocol import AccountUsage


@dataclass
class Observation:
    started: float  # perf_counter when the request reached the app
    key: str | None = None  # the account charged, once it is known
    usage: AccountUsage | None = None  # that account's usage when the request came in
    queries: int = 0  # what the request was charged


_CURRENT: ContextVar[Observation] = ContextVar("sharpzo_observation")


def begin_observation() -> Observation:
    """A fresh observation for the request now starting in this task."""
    seen = Observation(time.perf_counter())
    _CURRENT.set(seen)
    return seen


def current_observation() -> Observation:
    return _CURRENT.get()
