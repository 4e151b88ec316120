"""Load test: concurrent tuning clients against one server, micro-batched vs one request at a time.

    python bench/load_test.py --clients 8 --budget 1200

For each serving mode a fresh embedded server starts (the stand-in model by default);
"micro-batched" sets SHARPZO_BATCH_MERGE=1 so that requests in flight together share model batches,
"one-at-a-time" is the server's default (each request runs alone). CLIENTS tuning runs (zo-sgd by
default: small requests, the case batching is for; distinct seeds, the same few-shot task) then run
at once. Throughput is queries per second over the whole load; latency percentiles come from
the server's access log (time inside the server for each /v1/logits request). Any 5xx,
or any client error, fails the run. Bounded: CLIENTS runs of BUDGET queries per mode and
round; the modes alternate over ROUNDS rounds so that other load on the machine hits both,
and the ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import numpy as np

from sharpzo.client.embedded import EmbeddedServer
from sharpzo.client.runner import tune_async

MODES = {"micro-batched": {"SHARPZO_BATCH_MERGE": "1"}, "one-at-a-time": {}}


async def load(url: str, args: argparse.Namespace, out: Path) -> tuple[int, float]:
    common = dict(server=url, method=args.method, shots=args.shots, progress=False, eval_every=0)
    for seed in range(args.clients):  # upload every client's image sets before the clock starts
        await tune_async(args.dataset, budget=0, seed=seed, out=out / f"warmup{seed}", **common)
    started = time.perf_counter()
    results = await asyncio.gather(*(
        tune_async(args.dataset, budget=args.budget, seed=i, out=out / f"client{i}", **common)
        for i in range(args.clients)
    ))
    return sum(r.queries for r in results), time.perf_counter() - started


def access_log(path: Path) -> tuple[list[float], int]:
    latencies, server_errors = [], 0
    for line in path.read_text().splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        server_errors += entry["status"] >= 500
        if entry["path"] == "/v1/logits":
            latencies.append(entry["latency_ms"])
    return latencies, server_errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--budget", type=int, default=1200, help="queries per client")
    parser.add_argument("--method", default="zo-sgd")
    parser.add_argument("--dataset", default="groceries")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/load"))
    args = parser.parse_args()
    rounds: list[dict[str, dict]] = []
    for round_index in range(args.rounds):
        rows = {}
        for mode, env in MODES.items():
            out = args.out / f"round{round_index}" / mode
            out.mkdir(parents=True, exist_ok=True)
            log = out / "server.log"
            log.unlink(missing_ok=True)
            with EmbeddedServer(env={**env, "SHARPZO_LEDGER": str(out / "ledger.sqlite3")}, log_path=log) as server:
                queries, seconds = asyncio.run(load(server.url, args, out))
            latencies, server_errors = access_log(log)
            if server_errors:
                raise SystemExit(f"{mode}: {server_errors} responses were 5xx; see {log}")
            rows[mode] = {
                "queries": queries, "seconds": seconds, "queries_per_s": queries / seconds,
                "requests": len(latencies), "p50_ms": float(np.percentile(latencies, 50)),
                "p99_ms": float(np.percentile(latencies, 99)),
            }
            print(f"round {round_index}", mode, json.dumps(rows[mode]), flush=True)
        rounds.append(rows)
    ratios = [r["micro-batched"]["queries_per_s"] / r["one-at-a-time"]["queries_per_s"] for r in rounds]
    ratio = float(np.median(ratios))
    rows = {mode: {key: float(np.median([r[mode][key] for r in rounds])) for key in rounds[0][mode]} for mode in MODES}
    summary = {"clients": args.clients, "budget": args.budget, "method": args.method, "dataset": args.dataset,
               "rounds": rounds, "median": rows, "batching_speedup": ratio}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print("| mode (median of rounds) | queries/s | p50 ms | p99 ms | requests |\n|---|---|---|---|---|")
    for mode, row in rows.items():
        rates = f"{row['queries_per_s']:.0f} | {row['p50_ms']:.0f} | {row['p99_ms']:.0f} | {row['requests']:.0f}"
        print(f"| {mode} | {rates} |")
    print(f"micro-batching raises throughput {ratio:.2f}x over one-at-a-time serving, "
          f"{args.clients} clients, zero errors")


if __name__ == "__main__":
    main()
