"""An inference server in a subprocess on loopback, talked to over HTTP like any remote one."""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx


class ServerStartError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedServer:
    """``with EmbeddedServer(model=..., pretrained=...) as server: server.url``.

    ``command`` replaces ``python -m sharpzo.server`` (e.g. the ``sharpzo serve`` script).
    ``env`` adds SHARPZO_* settings. The server's log goes to ``log_path`` at ``log_level``
    (a temporary file by default) and is quoted when start-up fails.
    """

    def __init__(
        self,
        model: str | None = None,
        pretrained: str | None = None,
        port: int | None = None,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        start_timeout: float = 180.0,
        command: list[str] | None = None,
        log_level: str = "warning",
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(env or {})
        if model is not None:
            self.env["SHARPZO_MODEL"] = model
        if pretrained is not None:
            self.env["SHARPZO_PRETRAINED"] = pretrained
        self.env.setdefault("SHARPZO_AUTH", "off")
        self._temporary_log = log_path is None
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="sharpzo-server-", suffix=".log")[1])
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.command = command or [sys.executable, "-m", "sharpzo.server"]
        self.log_level = log_level

    def start(self) -> EmbeddedServer:
        command = [*self.command, "--port", str(self.port), "--log-level", self.log_level]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        atexit.register(self.stop)  # no orphaned server when the client exits without reaching stop()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_tail()
                self.stop()
                raise ServerStartError(f"the embedded server exited with {self.process.returncode}:\n{tail}")
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        tail = self.log_tail()
        self.stop()
        raise ServerStartError(f"the embedded server did not answer within {self.start_timeout:.0f} s:\n{tail}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        atexit.unregister(self.stop)
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._temporary_log:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
