"""Client errors as JSON ``{"detail": "<field>: <what was wrong>", "code": "<ErrorCode>"}``, never a 500."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sharpzo.shared.protocol import ErrorBody, ErrorCode

from .auth import usage_headers
from .ledger import LedgerUnavailable
from .observation import current_observation

# A ledger outage is usually a restart or a network fault: a short wait is worth a retry.
UNAVAILABLE_RETRY_AFTER_S = 5

_CODE_OF_STATUS: dict[int, ErrorCode] = {
    401: "unauthorized", 404: "not_found", 413: "body_too_large", 422: "invalid_request", 503: "unavailable"
}


class ApiError(Exception):
    """An error answer; ``code`` defaults to the status's generic one."""

    def __init__(
        self, status: int, detail: str, headers: dict[str, str] | None = None, code: ErrorCode | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers
        self.code: ErrorCode = code or _CODE_OF_STATUS.get(status, "invalid_request")

    def with_headers(self, headers: dict[str, str]) -> ApiError:
        """The same error with ``headers`` added under its own (its own win)."""
        return ApiError(self.status, self.detail, {**headers, **(self.headers or {})}, self.code)


ERROR_RESPONSES: dict[int | str, dict] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (401, "Missing or unknown API key"),
        (404, "Unknown resource"),
        (413, "Request body too large"),
        (422, "Invalid request; the detail names the field"),
        (429, "Over quota or rate"),
        (503, "The ledger is unavailable; retry after Retry-After"),
    )
}


def _location(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    out = ""
    for part in parts:
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out or "body"


def _message(error: dict) -> str:
    if error.get("type") == "json_invalid":
        return "body: not valid JSON"
    where, what = _location(tuple(error.get("loc", ()))), error.get("msg", "invalid")
    return what if what.startswith(f"{where}[") else f"{where}: {what}"  # a validator that names the item itself


def invalid_request(exc: RequestValidationError) -> ApiError:
    return ApiError(422, "; ".join(_message(e) for e in exc.errors()[:5]))


def _answer(exc: ApiError) -> JSONResponse:
    return JSONResponse(
        ErrorBody(detail=exc.detail, code=exc.code).model_dump(), status_code=exc.status, headers=exc.headers
    )


def _with_caller_usage(exc: ApiError) -> ApiError:
    """A request's error with its caller's usage headers under its own, once the caller is known."""
    usage = current_observation().usage
    return exc if usage is None else exc.with_headers(usage_headers(usage))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _answer(_with_caller_usage(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _answer(_with_caller_usage(invalid_request(exc)))

    @app.exception_handler(LedgerUnavailable)
    async def _ledger_down(_: Request, exc: LedgerUnavailable) -> JSONResponse:
        retry = {"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)}
        return _answer(ApiError(503, f"ledger: unavailable ({exc}); retry later", retry))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, UnicodeDecodeError):  # FastAPI answers 400 to a body that is not even text
            return _answer(ApiError(422, "body: not valid JSON (not UTF-8 text)"))
        return _answer(ApiError(exc.status_code, str(exc.detail), None if exc.headers is None else dict(exc.headers)))
