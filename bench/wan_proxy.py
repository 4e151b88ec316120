"""A WAN on loopback: a TCP proxy that delays every chunk, caps bandwidth, and drops or stalls on request.

``tc netem`` is not available in these kernels, so the network is simulated in userspace. The proxy
listens on 127.0.0.1 and forwards each accepted connection to one target. Every chunk read from either
side is queued with its due time (arrival + the one-way delay) and written then, so order is kept and
each direction adds exactly the delay (and a new connection's first request 1.5 round trips, as a TCP
handshake costs); with a bandwidth cap, writes are further spaced by size / rate
(the link is busy while a chunk goes through it). A round trip of R ms is ``delay_ms = R / 2``.

Faults, each for a counted number of times (``Faults``):

* ``drop_responses``: when a response's first bytes come back from the target, close both sides
  without forwarding them. The target has done the work (a scoring request was charged); the client
  sees a closed connection and must retry without being charged twice.
* ``drop_requests``: forward only the first half of a request's first chunk, then close both sides:
  the target never sees a whole request.
* ``stall_responses``: swallow a response (the connection stays open until the client gives up):
  only a read timeout gets the client out.

The proxy runs its own event loop in a daemon thread, so synchronous tests and asyncio code alike
can use it: ``with WanProxy(port, rtt_ms=50) as proxy: proxy.url``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType

CHUNK = 65536


@dataclass
class Faults:
    """How many times each fault is still to happen (decremented as they do), to requests that start with ``only``."""

    drop_responses: int = 0
    drop_requests: int = 0
    stall_responses: int = 0
    only: bytes = b""  # e.g. b"POST /v1/logits": the faults hit those requests (and their responses) alone

    def take(self, name: str) -> bool:
        left = getattr(self, name)
        if left > 0:
            setattr(self, name, left - 1)
            return True
        return False


@dataclass
class Traffic:
    """Bytes through the proxy, by direction, connections accepted, and by method and path (``"POST /v1/logits"``)
    the requests that came in and the most in flight at once: sent and not yet answered."""

    up: int = 0
    down: int = 0
    connections: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)
    open: dict[str, int] = field(default_factory=dict)
    most_open: dict[str, int] = field(default_factory=dict)


@dataclass
class _Turn:
    """Whose turn it is on one connection: a request has started and its response has not."""

    request_open: bool = False
    targeted: bool = False  # the open request is one the faults are for
    route: str = ""  # the open request's method and path


class _Link:
    """One direction of one connection: writes each chunk at its due time, in order."""

    def __init__(self, writer: asyncio.StreamWriter, delay_s: float, bytes_per_s: float | None) -> None:
        self.writer = writer
        self.delay_s = delay_s
        self.bytes_per_s = bytes_per_s
        self.queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        self.busy_until = 0.0

    def put(self, data: bytes) -> None:
        due = max(time.monotonic() + self.delay_s, self.busy_until)
        if self.bytes_per_s:  # store and forward: a chunk arrives once its last byte has crossed the link
            due += len(data) / self.bytes_per_s
            self.busy_until = due
        self.queue.put_nowait((due, data))

    async def run(self) -> None:
        while (item := await self.queue.get()) is not None:
            due, data = item
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self.writer.write(data)
            await self.writer.drain()
        self.writer.close()


class WanProxy:
    """Forward 127.0.0.1:<port> to ``target_host:target_port`` with ``rtt_ms`` of round trip."""

    def __init__(
        self, target_port: int, rtt_ms: float = 0.0, mbit_per_s: float | None = None,
        faults: Faults | None = None, target_host: str = "127.0.0.1", port: int = 0,
    ) -> None:
        if rtt_ms < 0 or (mbit_per_s is not None and mbit_per_s <= 0):
            raise ValueError(f"rtt_ms must be >= 0 and mbit_per_s > 0, got {rtt_ms} and {mbit_per_s}")
        self.target = (target_host, target_port)
        self.delay_s = rtt_ms / 2000.0
        self.bytes_per_s = None if mbit_per_s is None else mbit_per_s * 1e6 / 8
        self.faults = faults or Faults()
        self.traffic = Traffic()
        self.port = port  # 0: any free port
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="wan-proxy", daemon=True)
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> WanProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._accept, "127.0.0.1", self.port), self._loop
        ).result(timeout=10)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            tasks = asyncio.all_tasks() - {asyncio.current_task()}
            for task in tasks:
                task.cancel()
            if tasks:  # let them finish cancelling, so that none is destroyed while still pending
                await asyncio.wait(tasks, timeout=5)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _count(self, direction: str, n: int) -> None:
        with self._lock:
            setattr(self.traffic, direction, getattr(self.traffic, direction) + n)

    def _opened(self, turn: _Turn, data: bytes) -> None:
        turn.request_open = True
        turn.route = b" ".join(data.split(b" ", 2)[:2]).decode("latin-1")
        with self._lock:
            self.traffic.requests[turn.route] = self.traffic.requests.get(turn.route, 0) + 1
            now = self.traffic.open[turn.route] = self.traffic.open.get(turn.route, 0) + 1
            self.traffic.most_open[turn.route] = max(now, self.traffic.most_open.get(turn.route, 0))

    def _answered(self, turn: _Turn) -> None:
        if turn.request_open:
            turn.request_open = False
            with self._lock:
                self.traffic.open[turn.route] -= 1

    def _fault(self, name: str) -> bool:
        with self._lock:
            hit = self.faults.take(name)
            if hit:
                self.traffic.faults[name] = self.traffic.faults.get(name, 0) + 1
            return hit

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            await self._serve(client_r, client_w)
        except asyncio.CancelledError:  # the proxy is closing
            client_w.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        with self._lock:
            self.traffic.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        up = _Link(server_w, self.delay_s, self.bytes_per_s)
        up.busy_until = time.monotonic() + 3 * self.delay_s  # the TCP handshake: a client's first byte lands 1.5 RTT on
        down = _Link(client_w, self.delay_s, self.bytes_per_s)
        cut = asyncio.Event()
        turn = _Turn()
        pumps = [
            asyncio.create_task(self._pump(client_r, up, "up", turn, cut)),
            asyncio.create_task(self._pump(server_r, down, "down", turn, cut)),
        ]
        writers = [asyncio.create_task(up.run()), asyncio.create_task(down.run())]
        cutter = asyncio.create_task(cut.wait())
        await asyncio.wait([*pumps, cutter], return_when=asyncio.FIRST_COMPLETED)
        if cut.is_set():  # a fault: close both sides at once, dropping what is queued
            for task in (*pumps, *writers):
                task.cancel()
            client_w.close()
            server_w.close()
        else:
            await asyncio.gather(*pumps, return_exceptions=True)
            await asyncio.gather(*writers, return_exceptions=True)
        cutter.cancel()
        self._answered(turn)  # a request cut off, or a connection closed before its answer

    async def _pump(
        self, reader: asyncio.StreamReader, link: _Link, direction: str, turn: _Turn, cut: asyncio.Event
    ) -> None:
        """Read one side and queue for the other; an end of stream (or a reset) closes the other side in order."""
        try:
            while data := await reader.read(CHUNK):
                if direction == "up" and not turn.request_open:  # the first bytes of a request
                    self._opened(turn, data)
                    turn.targeted = data.startswith(self.faults.only)
                    if turn.targeted and self._fault("drop_requests"):
                        link.put(data[: len(data) // 2])
                        await asyncio.sleep(self.delay_s + 0.05)
                        cut.set()
                        return
                if direction == "down" and turn.request_open:  # the first bytes of its response
                    self._answered(turn)
                    if turn.targeted and self._fault("drop_responses"):
                        cut.set()
                        return
                    if turn.targeted and self._fault("stall_responses"):
                        while await reader.read(CHUNK):  # swallowed until the client gives up and both close
                            pass
                        return
                self._count(direction, len(data))
                link.put(data)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            link.queue.put_nowait(None)
