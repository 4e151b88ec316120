"""Per-request dependencies: who is calling (with their usage on every answer, errors included) and the metering."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .auth import ANONYMOUS_ACCOUNT, Account, Caller
from .errors import ApiError, invalid_request
from .idempotency import IdempotencyKey
from .metering import MeteredCall
from .metrics import Observation, observation
from .services import Services, ServicesDep

_bearer = HTTPBearer(auto_error=False, description="An API key: `sharpzo keys add NAME --quota N` prints one.")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}

ObservationDep = Annotated[Observation, Depends(observation)]


async def _account(services: Services, credentials: HTTPAuthorizationCredentials | None) -> Account:
    if services.authenticator is None:
        return ANONYMOUS_ACCOUNT
    if credentials is None:
        raise ApiError(401, "Authorization: missing; send 'Authorization: Bearer <API key>'", _CHALLENGE)
    account = await asyncio.to_thread(services.authenticator.account, credentials.credentials)
    if account is None:
        raise ApiError(401, "Authorization: unknown or revoked API key", _CHALLENGE)
    return account


async def current_caller(
    response: Response,
    services: ServicesDep,
    seen: ObservationDep,
    credentials: HTTPAuthorizationCredentials | None = Security(_bearer),
) -> AsyncIterator[Caller]:
    """The caller, with the rate limit applied; its usage goes on the route's answer, and on any error it raises."""
    account = await _account(services, credentials)
    seen.key = account.name
    caller = Caller(account, await asyncio.to_thread(services.ledger.totals, account.name, account.quota))
    if services.limiter is not None:
        wait = services.limiter.take(account.name)
        if wait > 0:
            raise ApiError(
                429, f"rate: key {account.name!r} is over {services.limiter.rate:g} requests/s",
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
