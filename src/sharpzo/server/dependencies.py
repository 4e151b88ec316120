"""Per-request dependencies: who is calling (with their usage on every answer, errors included) and the metering."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from sharpzo.shared.protocol import IDEMPOTENCY_HEADER

from .auth import ANONYMOUS_ACCOUNT, Caller
from .errors import ApiError, invalid_request
from .idempotency import IdempotencyKey
from .metering import MeteredCall
from .metrics import Observation, observation
from .services import Services, ServicesDep

_bearer = HTTPBearer(auto_error=False, description="An API key: `sharpzo keys add NAME --quota N` prints one.")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}

ObservationDep = Annotated[Observation, Depends(observation)]


def _arrival(services: Services, api_key: str | None, idempotency_key: str | None) -> Caller | None:
    """The caller, None for an unknown or revoked key. The ledger reads that every request makes before its work are
    all here, so that they cost one thread hop: the key (when the ledger keeps it), the usage, the replay lookup."""
    account = ANONYMOUS_ACCOUNT if services.authenticator is None else services.authenticator.account(api_key or "")
    if account is None:
        return None
    usage, earlier = services.ledger.arrival(
        account.name, account.quota, idempotency_key, services.settings.idempotency_window_s
    )
    return Caller(account, usage, earlier)


async def current_caller(
    request: Request,
    response: Response,
    services: ServicesDep,
    seen: ObservationDep,
    credentials: HTTPAuthorizationCredentials | None = Security(_bearer),
) -> AsyncIterator[Caller]:
    """The caller, with the rate limit applied; its usage goes on the route's answer, and on any error it raises."""
    if services.authenticator is not None and credentials is None:
        raise ApiError(401, "Authorization: missing; send 'Authorization: Bearer <API key>'", _CHALLENGE)
    # Read raw, so that the replay lookup shares the caller's hop; `metered` validates the key and refuses a
    # malformed one (which no stored response can have) before any work.
    idempotency_key = request.headers.get(IDEMPOTENCY_HEADER) if request.method == "POST" else None
    caller = await asyncio.to_thread(_arrival, services, credentials and credentials.credentials, idempotency_key)
    if caller is None:
        raise ApiError(401, "Authorization: unknown or revoked API key", _CHALLENGE)
    seen.key = caller.account.name
    if services.limiter is not None:
        wait = services.limiter.take(caller.account.name)
        if wait > 0:
            raise ApiError(
                429, f"rate: key {caller.account.name!r} is over {services.limiter.rate:g} requests/s",
                {"Retry-After": str(math.ceil(wait)), **caller.headers()}, code="rate_limited",
            )
    response.headers.update(caller.headers())
    try:
        yield caller
    except RequestValidationError as exc:  # the body is validated after this dependency ran
        raise invalid_request(exc).with_headers(caller.headers()) from exc
    except ApiError as exc:
        raise exc.with_headers(caller.headers()) from exc


CallerDep = Annotated[Caller, Depends(current_caller)]


async def metered(
    request: Request, caller: CallerDep, services: ServicesDep, seen: ObservationDep, idempotency_key: IdempotencyKey = None
) -> MeteredCall:
    return MeteredCall(
        request, caller, idempotency_key, services.ledger, services.settings.idempotency_window_s, services.metrics, seen
    )


MeteredDep = Annotated[MeteredCall, Depends(metered)]
