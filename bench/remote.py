"""Tuning over a WAN: every method through a delaying proxy at several round trips, against one server.

    python bench/remote.py --rtt 0 50 200 --budget 3000 --seed 0 \
        --config sharpzo=sharpzo --config zo-sgd=zo-sgd --config bbt=bbt --config spsa-gc=spsa-gc

One embedded stand-in server on loopback; each run goes through its own `bench/wan_proxy.py`
proxy (round trip R ms: R/2 each way, 0 = the proxy without delay; ``--mbit`` caps its bandwidth),
so the bytes each way are counted the same way at every round trip. Runs go config by config,
each config at every round trip in turn, so slow drift of the shared machine hits all round trips
of a config alike. Every figure that compares round trips is a ratio against the same config's
0 ms run of this invocation.

Reported per config and round trip: the wall time of the whole ``tune`` call (connect, image-set
checks, zero-shot, the loop, the final evaluation), its ratio to 0 ms, the HTTP requests charged,
the bytes up and down per query (all requests, monitoring included), and test accuracy; and whether
the tuned w was bit-for-bit the same at every round trip (it must be: nothing a run does depends
on timing). ``--eval-every N`` adds time-to-accuracy curves (test accuracy of the prompt against
the wall time at which the loop had reached it), plotted per config in ``time_to_accuracy.png``.
``--repeats N`` runs each config N times at every round trip (the round trips in turn within each repeat) and
reports the median wall time, its ratio, and the range of the repeats' own ratios: the noise to read them by.
Writes OUT/summary.md, OUT/summary.json and the run directories.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from aggregate import markdown_table, plt, save_figure
from grid import RunConfig

from sharpzo.client.embedded import EmbeddedServer, free_port
from sharpzo.client.runner import tune_async

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wan_proxy import WanProxy  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="groceries")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=int, default=3000)
    parser.add_argument("--eval-every", type=int, default=0, help="monitor evaluations (0: zero-shot and final only)")
    parser.add_argument("--rtt", type=float, nargs="+", default=[0.0, 50.0, 200.0], help="round trips in ms")
    parser.add_argument("--mbit", type=float, help="bandwidth cap of the proxy in Mbit/s each way (default: none)")
    parser.add_argument("--config", action="append", type=RunConfig.parse, required=True,
                        help="NAME=METHOD[:option=json,...]; tune options other than the optimiser's go in --tune")
    parser.add_argument("--tune", type=json.loads, default={},
                        help='extra tune() options as JSON, e.g. \'{"directions": "auto"}\'')
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each config at every round trip, in turn (round trips inside each repeat); the "
                        "table gives the median wall time, its ratio, and the range of the repeats' own ratios")
    parser.add_argument("--out", type=Path, default=Path("bench/results/remote"))
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    return args


def rtt_label(rtt: float) -> str:
    return f"{rtt:g} ms"


def link(args: argparse.Namespace, server: EmbeddedServer, rtt: float) -> WanProxy:
    """The proxy of one run, always on the same port: the client's upload index knows the server by its URL, so
    every run finds the image sets the warm-up uploaded (and pays only the check of each, as a returning user)."""
    return WanProxy(int(server.url.rsplit(":", 1)[1]), rtt_ms=rtt, mbit_per_s=args.mbit, port=args.proxy_port)


async def one_run(
    args: argparse.Namespace, server: EmbeddedServer, config: RunConfig, rtt: float, repeat: int
) -> dict[str, Any]:
    run_dir = args.out / config.name / (f"rtt{rtt:g}" if repeat == 0 else f"rtt{rtt:g}-repeat{repeat}")
    with link(args, server, rtt) as proxy:
        started = time.perf_counter()
        result = await tune_async(
            args.dataset, server=proxy.url, method=config.method, budget=args.budget, shots=args.shots, seed=args.seed,
            out=run_dir, progress=False, eval_every=args.eval_every, options=config.options, **args.tune,
        )
        wall = time.perf_counter() - started
    total = result.budget.total_queries
    row = {
        "config": config.name, "rtt_ms": rtt, "repeat": repeat, "wall_s": wall, "loop_s": result.wall_seconds,
        "requests": result.budget.requests, "total_queries": total, "queries": result.queries,
        "up_bytes_per_query": proxy.traffic.up / total, "down_bytes_per_query": proxy.traffic.down / total,
        "test_accuracy": result.test_accuracy, "zero_shot_test_accuracy": result.zero_shot_test_accuracy,
        "w": result.w.tolist(), "curve": time_curve(run_dir),
    }
    print(f"{config.name} at {rtt_label(rtt)} (repeat {repeat}): {wall:.1f} s, {row['requests']} requests, "
          f"{row['up_bytes_per_query']:.0f} B up and {row['down_bytes_per_query']:.0f} B down a query, "
          f"test {result.test_accuracy:.1%}", flush=True)
    return row


def time_curve(run_dir: Path) -> list[tuple[float, float]]:
    """(wall seconds, test accuracy) of every monitored prompt in the run's log, zero-shot and final included."""
    points = []
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if "test_accuracy" in entry:
            points.append((float(entry["wall_s"]), float(entry["test_accuracy"])))
    return points


def summarise(args: argparse.Namespace, rows: list[dict[str, Any]]) -> str:
    """One line per config and round trip: the median over the repeats (each repeat's ratio is against its own run
    at the first round trip, so the range shows the machine's run-to-run noise)."""
    wall = {(r["config"], r["rtt_ms"], r["repeat"]): r["wall_s"] for r in rows}
    first_w = {r["config"]: r["w"] for r in rows if r["rtt_ms"] == args.rtt[0] and r["repeat"] == 0}
    table = []
    for config in args.config:
        base = float(np.median([wall[config.name, args.rtt[0], i] for i in range(args.repeats)]))
        for rtt in args.rtt:
            runs = [r for r in rows if r["config"] == config.name and r["rtt_ms"] == rtt]
            median = float(np.median([r["wall_s"] for r in runs]))
            ratios = [wall[config.name, rtt, i] / wall[config.name, args.rtt[0], i] for i in range(args.repeats)]
            spread = f" ({min(ratios):.2f}–{max(ratios):.2f})" if args.repeats > 1 else ""
            same = "yes" if all(r["w"] == first_w[config.name] for r in runs) else "NO"
            r = runs[0]
            table.append([
                config.name, rtt_label(rtt), f"{median:.1f}", f"{median / base:.2f}×{spread}", str(r["requests"]),
                f"{r['up_bytes_per_query']:.0f}", f"{r['down_bytes_per_query']:.0f}",
                f"{100 * r['test_accuracy']:.1f}", same,
            ])
    cap = f", bandwidth {args.mbit:g} Mbit/s each way" if args.mbit else ""
    median_of = f"median of {args.repeats} " if args.repeats > 1 else ""
    header = ["config", "round trip", f"wall s ({median_of}runs)" if median_of else "wall s",
              f"÷ {rtt_label(args.rtt[0])}" + (" (range of the repeats)" if median_of else ""), "requests",
              "B up / query", "B down / query", "test %", f"same w as {rtt_label(args.rtt[0])}"]
    lines = [
        f"### {args.dataset} {args.shots}-shot, seed {args.seed}, {args.budget} queries, "
        f"--eval-every {args.eval_every}{cap}" + (f", {args.repeats} repeats" if median_of else ""),
        markdown_table(header, table),
        "Configs: " + "; ".join(f"`{c.name}` = {c.method} {json.dumps(c.options)}" for c in args.config)
        + (f"; tune options {json.dumps(args.tune)}" if args.tune else ""),
    ]
    return "\n\n".join(lines)


def plot(args: argparse.Namespace, rows: list[dict[str, Any]], out: Path) -> None:
    configs = [c.name for c in args.config]
    fig, axes = plt.subplots(1, len(configs), figsize=(4.5 * len(configs), 4), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], configs):
        for r in (r for r in rows if r["config"] == name and r["repeat"] == 0):
            if r["curve"]:
                wall, accuracy = zip(*r["curve"])
                ax.step(wall, 100 * np.asarray(accuracy), where="post", label=rtt_label(r["rtt_ms"]))
        ax.set_title(name)
        ax.set_xlabel("wall time (s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="round trip")
    axes[0][0].set_ylabel("held-out test accuracy (%)")
    save_figure(fig, out, f"{args.dataset} {args.shots}-shot, seed {args.seed}: accuracy against wall time")


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    with EmbeddedServer() as server:
        with link(args, server, 0.0) as warm:  # uploads the image sets once, outside any timing
            await tune_async(args.dataset, server=warm.url, budget=0, shots=args.shots, seed=args.seed,
                             out=args.out / "warm-up", progress=False)
        for config in args.config:
            for repeat in range(args.repeats):
                for rtt in args.rtt:
                    rows.append(await one_run(args, server, config, rtt, repeat))
    return rows


def main() -> None:
    args = parse_args()
    args.proxy_port = free_port()
    rows = asyncio.run(main_async(args))
    args.out.mkdir(parents=True, exist_ok=True)
    text = summarise(args, rows)
    if args.eval_every > 0:
        plot(args, rows, args.out / "time_to_accuracy.png")
    (args.out / "summary.md").write_text(text + "\n")
    kept = [{k: v for k, v in r.items() if k != "w"} for r in rows]
    (args.out / "summary.json").write_text(json.dumps(kept, indent=1))
    print(text)


if __name__ == "__main__":
    main()
