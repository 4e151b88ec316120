"""The ledger's commit rate on PostgreSQL (and SQLite for comparison), on loopback: commits/s from one process and
from N processes, each commit a charged request with its idempotent response (about 1 kB), as the server makes.

    .venv/bin/python bench/ledger_commit_rate.py --processes 1 2 4 --seconds 5

PostgreSQL is started in a temporary folder as the tests do, with its defaults (fsync and synchronous_commit on);
``--no-fsync`` shows what the rate would be without waiting for the disk (CPU and round trips only).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sharpzo.server.ledger import open_ledger  # noqa: E402
from sharpzo.shared.protocol import Usage  # noqa: E402
from tests.postgres_server import running_postgres  # noqa: E402

CHARGE = Usage(queries=40, image_evals=640, requests=1)
BODY = os.urandom(512).hex().encode()  # a 1 kB response (random: it does not compress)


def commit_loop(setting: str, worker: int, seconds: float, start: Barrier, results: Queue) -> None:
    ledger = open_ledger(setting)
    start.wait(timeout=120)
    done, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        ledger.commit(f"tenant-{worker % 4}", None, CHARGE, f"{worker}-{done}", "fingerprint", BODY, 3600.0)
        done += 1
    ledger.close()
    results.put(done)


def commit_rate(setting: str, processes: int, seconds: float) -> float:
    open_ledger(setting).close()  # the schema, before the clock starts
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(processes), context.Queue()
    workers = [
        context.Process(target=commit_loop, args=(setting, w, seconds, start, results)) for w in range(processes)
    ]
    for process in workers:
        process.start()
    total = sum(results.get(timeout=seconds + 300) for _ in workers)
    for process in workers:
        process.join()
    return total / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--no-fsync", action="store_true", help="PostgreSQL with fsync=off")
    args = parser.parse_args()
    print(f"{'backend':<12} {'processes':>9} {'commits/s':>10}")
    with tempfile.TemporaryDirectory() as folder:
        for n in args.processes:
            setting = str(Path(folder) / f"ledger-{n}.sqlite3")
            print(f"{'sqlite':<12} {n:>9} {commit_rate(setting, n, args.seconds):>10.0f}", flush=True)
    with running_postgres(fsync=not args.no_fsync) as server:
        for n in args.processes:
            setting = server.new_database()
            print(f"{'postgresql':<12} {n:>9} {commit_rate(setting, n, args.seconds):>10.0f}", flush=True)


if __name__ == "__main__":
    main()
