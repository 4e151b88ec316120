"""Client errors as JSON ``{"detail": "<field>: <what was wrong>"}``, never a 500."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sharpzo.shared.protocol import ErrorBody


class ApiError(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


ERROR_RESPONSES: dict[int | str, dict] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (401, "Missing or unknown API key"),
        (404, "Unknown resource"),
        (413, "Request body too large"),
        (422, "Invalid request; the detail names the field"),
        (429, "Over quota or rate"),
    )
}


def _location(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    out = ""
    for part in parts:
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        messages = [
            "body: not valid JSON" if e.get("type") == "json_invalid" else f"{_location(tuple(e.get('loc', ())))}: {e.get('msg', 'invalid')}"
            for e in exc.errors()[:5]
        ]
        return JSONResponse({"detail": "; ".join(messages)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, UnicodeDecodeError):  # FastAPI answers 400 to a body that is not even text
            return JSONResponse({"detail": "body: not valid JSON (not UTF-8 text)"}, status_code=422)
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)
