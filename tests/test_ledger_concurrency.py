"""Several processes (server replicas, in effect) hammering one key with repeated idempotency keys: the ledger
charges exactly the quota, no request twice, and every replay returns the first response."""

from __future__ import annotations

import multiprocessing
import random
from collections import defaultdict
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

from sharpzo.server.ledger import QuotaExceeded, open_ledger
from sharpzo.shared.protocol import Usage

PROCESSES = 4
KEYS = 200  # idempotency keys; every process tries each once, in its own order
QUOTA = 500
QUERIES = 4  # a request; the quota pays for QUOTA // QUERIES = 125 of the 200 keys
WINDOW_S = 3600.0

Outcome = tuple[str, str, bytes | None]  # key, "charged" / "replayed" / "quota", the response it got


def hammer(setting: str, worker: int, start: Barrier, results: Queue) -> None:
    """One process's tries, put on ``results`` (or what went wrong, as text)."""
    try:
        results.put((worker, _tries(setting, worker, start)))
    except BaseException as exc:
        results.put((worker, repr(exc)))
        raise


def _tries(setting: str, worker: int, start: Barrier) -> list[Outcome]:
    ledger = open_ledger(setting)
    outcomes: list[Outcome] = []
    try:
        start.wait(timeout=120)
        for k in random.Random(worker).sample(range(KEYS), KEYS):
            key, body = f"k{k}", f"worker {worker}, key {k}".encode()
            try:
                committed = ledger.commit("alice", QUOTA, Usage(queries=QUERIES, image_evals=8, requests=1), key,
                                          f"request {k}", body, WINDOW_S)
            except QuotaExceeded:
                outcomes.append((key, "quota", None))
                continue
            if committed.earlier is None:
                outcomes.append((key, "charged", body))
            else:
                outcomes.append((key, "replayed", committed.earlier.body))
    finally:
        ledger.close()
    return outcomes


def test_processes_racing_on_one_key_charge_the_quota_exactly_and_nothing_twice(ledger_setting: str) -> None:
    open_ledger(ledger_setting).close()  # the schema, before the race
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(PROCESSES), context.Queue()
    workers = [context.Process(target=hammer, args=(ledger_setting, w, start, results)) for w in range(PROCESSES)]
    for process in workers:
        process.start()
    try:
        reported = dict(results.get(timeout=300) for _ in workers)
    finally:
        for process in workers:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    assert sorted(reported) == list(range(PROCESSES))

    by_key: dict[str, list[tuple[str, bytes | None]]] = defaultdict(list)
    for outcomes in reported.values():
        assert isinstance(outcomes, list), outcomes
        assert len(outcomes) == KEYS
        for key, outcome, body in outcomes:
            by_key[key].append((outcome, body))
    charged = {key: [body for outcome, body in tries if outcome == "charged"] for key, tries in by_key.items()}
    assert all(len(bodies) <= 1 for bodies in charged.values()), "a request was charged twice"
    assert sum(len(bodies) for bodies in charged.values()) == QUOTA // QUERIES
    for key, tries in by_key.items():
        replays = [body for outcome, body in tries if outcome == "replayed"]
        assert replays == charged[key] * len(replays), f"{key}: a replay differs from the first response"

    ledger = open_ledger(ledger_setting)
    try:
        totals = ledger.totals("alice", QUOTA)
        assert (totals.queries, totals.requests, totals.remaining) == (QUOTA, QUOTA // QUERIES, 0)
        for key, bodies in charged.items():
            kept = ledger.replayable("alice", key, WINDOW_S)
            assert (kept.body if kept else None) == (bodies[0] if bodies else None)
    finally:
        ledger.close()
