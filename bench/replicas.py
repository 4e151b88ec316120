"""Replicas: queries/s of the same load of concurrent tuning clients against 1 and 2 Ray Serve replicas.

    .venv/bin/python bench/replicas.py --clients 4 --budget 600 --rounds 2

One local Ray cluster on loopback (CPUS Ray CPUs, one per replica, one torch thread each) and one PostgreSQL (the
ledger and image features, as the tests start it) serve every round; the replica count alternates 1, 2, 1, 2, ...
so that other load on the machine hits both, and the ratio is the median of the per-round ratios. Latencies of
/v1/logits are the replicas' own (Ray's per-replica request log). Any 5xx or client error fails the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from load_test import load  # noqa: E402  (bench/: the same load of concurrent tuning clients)

from sharpzo.client.embedded import free_port  # noqa: E402
from tests.postgres_server import running_postgres  # noqa: E402

_LOGITS = re.compile(r"POST /v1/logits (\d{3}) ([0-9.]+)ms")


def replica_log_lines(ray_dir: Path) -> dict[Path, int]:
    logs = ray_dir.glob("ray/session_latest/logs/serve/replica_*.log")
    return {path: len(path.read_text().splitlines()) for path in logs}


def latencies_since(ray_dir: Path, seen: dict[Path, int]) -> list[float]:
    found: list[float] = []
    for path in ray_dir.glob("ray/session_latest/logs/serve/replica_*.log"):
        for line in path.read_text().splitlines()[seen.get(path, 0):]:
            match = _LOGITS.search(line)
            if match:
                if match.group(1).startswith("5"):
                    raise SystemExit(f"a 5xx in {path}: {line}")
                found.append(float(match.group(2)))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--method", default="zo-sgd")
    parser.add_argument("--budget", type=int, default=600, help="queries per client and round")
    parser.add_argument("--dataset", default="groceries")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/replicas"))
    args = parser.parse_args()
    ray_dir = Path(tempfile.mkdtemp(prefix="sharpzo-bench-ray-"))
    os.environ["RAY_TMPDIR"] = str(ray_dir)
    import ray
    from ray import serve

    from sharpzo.server.ray_serve import ReplicaOptions, sharpzo_app  # first: it keeps Ray on loopback
    from sharpzo.server.settings import ServerSettings

    port = free_port()
    rounds: list[dict[str, dict]] = []
    with running_postgres(fsync=True) as pg:
        settings = ServerSettings(auth="off", ledger=pg.new_database(), access_log=False)
        ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False)
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        try:
            for round_index in range(args.rounds):
                rows = {}
                for replicas in (1, 2):
                    serve.run(sharpzo_app(settings, ReplicaOptions(replicas=replicas, cpus=1)), name="sharpzo",
                              route_prefix="/")
                    out = args.out / f"round{round_index}" / f"replicas{replicas}"
                    out.mkdir(parents=True, exist_ok=True)
                    seen = replica_log_lines(ray_dir)
                    queries, seconds = asyncio.run(load(f"http://127.0.0.1:{port}", args, out))
                    latencies = latencies_since(ray_dir, seen)
                    rows[str(replicas)] = {
                        "queries": queries, "seconds": seconds, "queries_per_s": queries / seconds,
                        "requests": len(latencies), "p50_ms": float(np.percentile(latencies, 50)),
                        "p99_ms": float(np.percentile(latencies, 99)),
                    }
                    print(f"round {round_index} replicas {replicas}", json.dumps(rows[str(replicas)]), flush=True)
                rounds.append(rows)
        finally:
            serve.shutdown()
            ray.shutdown()
            shutil.rmtree(ray_dir, ignore_errors=True)
    ratio = float(np.median([r["2"]["queries_per_s"] / r["1"]["queries_per_s"] for r in rounds]))
    median = {n: {key: float(np.median([r[n][key] for r in rounds])) for key in rounds[0][n]} for n in ("1", "2")}
    summary = {"clients": args.clients, "budget": args.budget, "dataset": args.dataset, "shots": args.shots,
               "model": settings.model, "rounds": rounds, "median": median, "speedup": ratio}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print("| replicas (median of rounds) | queries/s | p50 ms | p99 ms | requests |\n|---|---|---|---|---|")
    for n, row in median.items():
        print(
            f"| {n} | {row['queries_per_s']:.0f} | {row['p50_ms']:.0f} | {row['p99_ms']:.0f} | {row['requests']:.0f} |"
        )
    print(f"2 replicas serve {ratio:.2f}x the queries/s of 1, {args.clients} clients, zero errors")


if __name__ == "__main__":
    main()
