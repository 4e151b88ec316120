"""The client's own time per step: projecting a step's candidates to prompts, with OpenBLAS's thread pool and on one
thread (as a tuning run does, client/runner.py), alternating in one process.

    python bench/client_projection.py --repeats 200

A ZO step projects 2 points of d = 512 through an [m * width, d] matrix (m = 4 text tokens of v2's width 192, or 4
visual tokens of 256, or ViT-B/16's 512). Run it beside a busy server (a tuning run) to see the pool's cost where
it matters: the client shares the cores with the server.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from sharpzo.client.prompt import PromptSpace


def per_call_ms(space: PromptSpace, points: np.ndarray, repeats: int) -> float:
    started = time.perf_counter()
    for _ in range(repeats):
        space.ctx(points)
    return (time.perf_counter() - started) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--widths", type=int, nargs="+", default=[192, 256, 512])
    args = parser.parse_args()
    pools = [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]
    print(f"BLAS threads by default: {pools}")
    print("| width | pool: ms a projection | one thread | pool ÷ one thread |")
    print("|---|---|---|---|")
    rng = np.random.default_rng(0)
    for width in args.widths:
        space = PromptSpace.create(rng.normal(0.0, 0.02, (4, width)).astype(np.float32), 512, seed=0)
        points = rng.standard_normal((2, 512))
        pool, single = [], []
        for _ in range(args.rounds):
            pool.append(per_call_ms(space, points, args.repeats))
            with threadpool_limits(limits=1, user_api="blas"):
                single.append(per_call_ms(space, points, args.repeats))
        a, b = float(np.median(pool)), float(np.median(single))
        print(f"| {width} | {a:.2f} | {b:.2f} | {a / b:.0f}× |")


if __name__ == "__main__":
    main()
