"""Per-request dependencies: who is calling, and for a charged POST its validated idempotency key.

The caller's usage goes on the route's answer here; on an error answer the error handlers add it from the request's
`Observation`, noted here once the caller is known.
"""

from __future__ import annotations

import asyncio
import math
from typing import Annotated

from fastapi import Depends, Response, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .auth import ANONYMOUS_ACCOUNT, Admission, Caller
from .errors import ApiError
from .idempotency import IdempotencyHeader, malformed
from .observation import current_observation
from .services import AdmissionDep

_bearer = HTTPBearer(auto_error=False, description="An API key: `sharpzo keys add NAME --quota N` prints one.")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _arrival(admission: Admission, api_key: str | None, idempotency_key: str | None) -> Caller | None:
    """The caller, None for an unknown or revoked key. The ledger reads that every request makes before its work are
    all here, so that they cost one thread hop: the key (when the ledger keeps it), the usage, the replay lookup."""
    account = ANONYMOUS_ACCOUNT if admission.authenticator is None else admission.authenticator.account(api_key or "")
    if account is None:
        return None
    usage, earlier = admission.ledger.arrival(
        account.name, account.quota, idempotency_key, admission.idempotency_window_s
    )
    return Caller(account, usage, idempotency_key, earlier)


async def _admit(
    admission: Admission, response: Response, credentials: HTTPAuthorizationCredentials | None, key: str | None
) -> Caller:
    """Authenticate, read the ledger once, apply the rate limit, refuse a malformed ``key``; the caller's usage goes
    on the answer, an error's too."""
    if admission.authenticator is not None and credentials is None:
        raise ApiError(401, "Authorization: missing; send 'Authorization: Bearer <API key>'", _CHALLENGE)
    refused = malformed(key)
    api_key = None if credentials is None else credentials.credentials
    caller = await asyncio.to_thread(_arrival, admission, api_key, None if refused else key)
    if caller is None:
        raise ApiError(401, "Authorization: unknown or revoked API key", _CHALLENGE)
    seen = current_observation()
    seen.key, seen.usage = caller.account.name, caller.usage
    if admission.limiter is not None:
        wait = admission.limiter.take(caller.account.name)
        if wait > 0:
            raise ApiError(
                429, f"rate: key {caller.account.name!r} is over {admission.limiter.rate:g} requests/s",
                {"Retry-After": str(math.ceil(wait))}, code="rate_limited",
            )
    if refused is not None:
        raise refused
    response.headers.update(caller.headers())
    return caller


async def current_caller(
    response: Response, admission: AdmissionDep, credentials: HTTPAuthorizationCredentials | None = Security(_bearer)
) -> Caller:
    """The caller of an uncharged route, with the rate limit applied."""
    return await _admit(admission, response, credentials, None)


async def charged_caller(
    response: Response,
    admission: AdmissionDep,
    credentials: HTTPAuthorizationCredentials | None = Security(_bearer),
    idempotency_key: IdempotencyHeader = None,
) -> Caller:
    """The caller of a charged POST, with its idempotency key and the response kept under it, if any."""
    return await _admit(admission, response, credentials, idempotency_key)


CallerDep = Annotated[Caller, Depends(current_caller)]
ChargedCallerDep = Annotated[Caller, Depends(charged_caller)]
