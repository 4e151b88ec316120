"""The HTTP floor under a scoring request: uvicorn, configured as `sharpzo serve` runs it, serving a bare ASGI app
that reads the whole body, waits ``?wait_ms=`` milliseconds without using the CPU, and answers a small JSON document
with its own time in Server-Timing ("app", as the real server does). No FastAPI, pydantic, ledger or model.

`bench/step_latency.py` times the same request bytes against it, with the same httpx client, in the same rounds as
the real servers, waiting as long as the real server's model took: whatever a request costs outside the model can
be no less than this round trip less the app's time. The wait matters on this VM: a client that sleeps 12 ms in its
receive, and an event loop that sleeps as long, wake up 0.7–0.9 ms later than after a wait of nothing.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qs

import httpx
from starlette.types import Receive, Scope, Send

from sharpzo.client.embedded import free_port
from sharpzo.shared.protocol import SERVER_TIMING_HEADER

_ANSWER = b'{"ok":true}'
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_ANSWER)).encode())]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    started = time.perf_counter()
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    wait_ms = float(parse_qs(scope["query_string"].decode()).get("wait_ms", ["0"])[0])
    # the event loop may wake a fraction of a millisecond early (its clock and perf_counter differ), so sleep again
    while (left_s := wait_ms / 1000.0 - (time.perf_counter() - started)) > 0:
        await asyncio.sleep(left_s)
    app_ms = (time.perf_counter() - started) * 1000.0
    timing = (SERVER_TIMING_HEADER.lower().encode(), f"app;dur={app_ms:.3f}".encode())
    await send({"type": "http.response.start", "status": 200, "headers": [*_HEADERS, timing]})
    await send({"type": "http.response.body", "body": _ANSWER})


class FloorServer:
    """This module's app under uvicorn in a child process on loopback (uvloop and httptools where installed, as
    for the real server; no access log, as `sharpzo serve`)."""

    def __init__(self, startup_timeout_s: float = 60.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._timeout = startup_timeout_s
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> FloorServer:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(__file__).resolve().parent), "transport_floor:app",
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning", "--no-access-log"],
        )
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the floor server exited with status {self._process.returncode}")
            try:
                httpx.post(self.url, content=b"{}", timeout=2.0)
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        self.__exit__(None, None, None)
        raise RuntimeError(f"the floor server did not answer on {self.url} within {self._timeout:g} s")

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=30)
