"""Idempotency keys: a POST retried with the same key gets the response its first try was charged for."""

from __future__ import annotations

import hashlib
import re
from typing import Annotated

from fastapi import Header

from sharpzo.shared.protocol import IDEMPOTENCY_HEADER

from .errors import ApiError
from .ledger import Replayable

_PATTERN = r"^[!-~]{1,255}$"

# Declared for the schema, not checked by FastAPI: the caller's dependency checks it where it reads it (`malformed`),
# so that a bad API key is a 401 first and a malformed key is never looked up.
IdempotencyHeader = Annotated[
    str | None,
    Header(
        alias=IDEMPOTENCY_HEADER,
        json_schema_extra={"pattern": _PATTERN},
        description="A fresh value per logical request (a UUID), the same on its retries: a retry within the "
        "server's window gets the first response again and is charged once.",
    ),
]


def malformed(key: str | None) -> ApiError | None:
    """The 422 for a key that does not fit the pattern, worded as FastAPI words a header that fails one."""
    if key is None or re.fullmatch(_PATTERN, key) is not None:
        return None
    return ApiError(422, f"header.{IDEMPOTENCY_HEADER}: String should match pattern '{_PATTERN}'")


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
