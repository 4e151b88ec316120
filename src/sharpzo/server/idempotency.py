"""Idempotency keys: a POST retried with the same key gets the response its first try was charged for."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import Header

from sharpzo.shared.protocol import IDEMPOTENCY_HEADER

from .errors import ApiError
from .ledger import Replayable

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=IDEMPOTENCY_HEADER,
        pattern=r"^[!-~]{1,255}$",
        description="A fresh value per logical request (a UUID), the same on its retries: a retry within the "
        "server's window gets the first response again and is charged once.",
    ),
]


def fingerprint(path: str, body: bytes) -> str:
    """What a key's request was: its path and its body bytes (a retry resends the same bytes)."""
    return hashlib.sha256(path.encode() + b"\n" + body).hexdigest()


def replay(earlier: Replayable, request_fingerprint: str) -> bytes:
    if earlier.fingerprint != request_fingerprint:
        raise ApiError(
            422,
            f"{IDEMPOTENCY_HEADER}: {earlier.key!r} was already used for a different request; "
            "send a fresh key for each new request and the same key only to retry it",
            code="idempotency_conflict",
        )
    return earlier.body
