"""ASGI middleware that accepts gzip-compressed request bodies (``Content-Encoding: gzip``).

A soft-prompt body is mostly base64 of float32, which gzip shrinks to about 0.76 of its size at
level 1: a remote client on a slow link sends a quarter fewer bytes, losslessly. The app behind
this middleware sees the plain body (so validation, the Idempotency-Key fingerprint and the
charge are the same whichever way the bytes came), and the decompressed size is held to the
same limit as a plain body, so a small bomb cannot expand past it. ``/v1/model`` advertises
the encoding (``request_encodings``); a client uses it only when offered.
"""

from __future__ import annotations

import zlib

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .body_limit import send_error

ENCODINGS = ("gzip",)


class GzipRequestMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        encoding = _header(scope, b"content-encoding")
        if scope["type"] != "http" or encoding in (None, b"identity"):
            await self.app(scope, receive, send)
            return
        if encoding != b"gzip":
            await send_error(send, 415, f"Content-Encoding: {encoding.decode('latin-1')!r} is not supported; "
                          f"send one of {list(ENCODINGS)} or none", "invalid_request")
            return
        compressed = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            compressed += message.get("body", b"")
            more = message.get("more_body", False)
        inflater = zlib.decompressobj(wbits=31)
        try:
            body = inflater.decompress(bytes(compressed), self.max_bytes + 1)
            complete = inflater.eof
        except zlib.error as exc:
            await send_error(send, 422, f"body: not a valid gzip stream ({exc})", "invalid_request")
            return
        if len(body) > self.max_bytes:
            await send_error(send, 413, f"body: larger than the limit of {self.max_bytes} bytes once decompressed",
                          "body_too_large")
            return
        if not complete:
            await send_error(send, 422, "body: the gzip stream is truncated", "invalid_request")
            return
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-encoding", b"content-length")]
        plain_scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
        sent = False

        async def plain_receive() -> Message:
            nonlocal sent
            if sent:
                return await receive()  # after the body: wait for the disconnect, as the server would report it
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(plain_scope, plain_receive, send)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value).strip().lower()
    return None
