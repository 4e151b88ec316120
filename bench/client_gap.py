"""The client's own time on a pipelined run's critical path: from a training answer to the request it lets out.

    python bench/client_gap.py --method bbt --rtt 200 --budget 3000

One run of ``--method`` (its defaults; a method whose P is the same throughout: BBT, ZO-SGD, SPSA-GC) through a
``bench/wan_proxy.py`` proxy with ``--eval-every 0``, against an embedded stand-in server, timing every training
request (POST /v1/logits on the training image set) where the client's ``ApiClient`` makes it: when the call
began and when its answer was in. With P asks in flight (the method's ``pipeline``), request i goes out once
answer i − P has been told, so (start of i) − (end of i − P) is the client's time between them: the tell, the
next ask, the request's projection, and whatever else the loop did first. A run keeps P chains of round trips
going, and each link of a chain pays this gap once. Reports its median and quartiles over the run, with the
server's own time per request (Server-Timing) for scale.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from sharpzo.client.api import ApiClient
from sharpzo.client.embedded import EmbeddedServer
from sharpzo.client.latency import option_default, server_seconds
from sharpzo.client.runner import tune_async
from sharpzo.shared.protocol import SERVER_TIMING_HEADER, LogitsRequest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wan_proxy import WanProxy  # noqa: E402

Timed = tuple[str, float, float, float | None]  # image set, call began, answer in, server seconds


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="bbt")
    parser.add_argument("--dataset", default="groceries")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=int, default=3000)
    parser.add_argument("--rtt", type=float, default=200.0, help="round trip in ms")
    parser.add_argument("--out", type=Path, default=Path("runs/client-gap"))
    return parser.parse_args()


def timing(calls: list[Timed]) -> type[ApiClient]:
    """ApiClient's ``_send`` (every attempt and its retries), timed into ``calls`` for scoring requests."""
    send = ApiClient._send

    async def timed(self: ApiClient, method: str, path: str, body: Any = None, *rest: Any) -> Any:
        began = time.perf_counter()
        response = await send(self, method, path, body, *rest)
        if isinstance(body, LogitsRequest):
            calls.append((body.image_set, began, time.perf_counter(),
                          server_seconds(response.headers.get(SERVER_TIMING_HEADER))))
        return response

    ApiClient._send = timed  # type: ignore[method-assign]
    return ApiClient


def gaps(calls: list[Timed], depth: int) -> np.ndarray:
    """(start of training request i) − (end of training request i − depth), in the order the requests began."""
    train_set = Counter(c[0] for c in calls).most_common(1)[0][0]  # all but the zero-shot's and final's 2 each
    train = sorted((c for c in calls if c[0] == train_set), key=lambda c: c[1])
    return np.array([train[i][1] - train[i - depth][2] for i in range(depth, len(train))])


async def main_async(args: argparse.Namespace) -> None:
    calls: list[Timed] = []
    timing(calls)
    depth = option_default(args.method, "pipeline") or 1
    with EmbeddedServer() as server:
        port = int(server.url.rsplit(":", 1)[1])
        with WanProxy(port, rtt_ms=0) as warm:  # uploads the image sets once, outside the timing
            await tune_async(args.dataset, server=warm.url, budget=0, shots=args.shots, seed=args.seed,
                             out=args.out / "warm-up", progress=False)
        calls.clear()
        with WanProxy(port, rtt_ms=args.rtt) as proxy:
            result = await tune_async(args.dataset, server=proxy.url, method=args.method, budget=args.budget,
                                      shots=args.shots, seed=args.seed, out=args.out / "run", progress=False,
                                      eval_every=0)
    gap = 1000 * gaps(calls, depth)
    server_ms = [1000 * c[3] for c in calls if c[3] is not None]
    q1, median, q3 = np.percentile(gap, [25, 50, 75])
    print(f"{args.method} (pipeline {depth}) at {args.rtt:g} ms: {len(gap)} gaps, client time between an answer and "
          f"the request it lets out: median {median:.1f} ms (quartiles {q1:.1f}–{q3:.1f}); server's own time per "
          f"request median {np.median(server_ms):.0f} ms; loop {result.wall_seconds:.2f} s")


def main() -> None:
    asyncio.run(main_async(parse_args()))


if __name__ == "__main__":
    main()
