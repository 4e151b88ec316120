"""Tuning runs over HTTP while their PostgreSQL ledger goes down and comes back (`pg_ctl restart -m fast`, or stop
and start): a request caught by the outage gets 503 with Retry-After, never a 500; the client retries it under the
same idempotency key; every run finishes, and each account's charge in the ledger equals what its client counted."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from sharpzo.client.embedded import EmbeddedServer

from .conftest import TINY
from .postgres_server import PostgresServer

SHARPZO = str(Path(sys.executable).parent / "sharpzo")
BUDGET = 1500
RUNS = 2  # two tuning clients, each on its own account, so that an outage finds requests in flight
OUTAGES = 4  # the last a plain `pg_ctl restart -m fast`, the others a stop, a probe while down, and a start
ACCOUNTS = [f"tenant{i}" for i in range(RUNS)]
KEYS = [f"pgoutage-key{i}-0123456789abcdef" for i in range(RUNS)]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def statuses(url: str) -> dict[int, float]:
    """Requests answered so far, by HTTP status, from the server's /metrics."""
    counts: dict[int, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text):
        for sample in family.samples:
            if sample.name == "sharpzo_http_requests_total" and sample.labels["route"] != "/metrics":
                status = int(sample.labels["status"])
                counts[status] = counts.get(status, 0.0) + sample.value
    return counts


def charged_queries(url: str, key: str) -> int:
    return int(httpx.get(f"{url}/v1/usage", headers=auth(key), timeout=30).json()["queries"])


# Sessions waiting on a lock: a run's request held at its charge by the lock on its account's usage row. A run is
# sequential, so it has at most one waiting. Neither state nor query is filtered on: a prepared statement takes its
# locks at Bind, where pg_stat_activity still shows 'idle' and the session's previous statement.
_WAITING = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sharpzo' AND wait_event_type = 'Lock'"


def outage_with_requests_in_flight(postgres_server: PostgresServer, postgres_url: str, url: str,
                                   tunes: list[subprocess.Popen[str]], target: int,
                                   restart: bool) -> httpx.Response | None:
    """Take PostgreSQL down while every run has a request inside it: either ``pg_ctl restart -m fast`` as it is, or
    ``pg_ctl stop -m fast``, a request for usage while it is down, and ``pg_ctl start``.

    Each run's account row is locked once that run has been charged ``target`` queries, so its next request waits
    inside its charge's transaction, after its idempotent response was written, until the shutdown cuts it. A run
    that gets ahead (one that slept out a 503's Retry-After less than the other) is held there while the other
    catches up, so neither can finish before the outage. Returns the answer to the request made while the database
    was down."""
    # not a context manager: its exit would talk to a dead server
    locker = psycopg.connect(postgres_url, autocommit=True)
    try:
        locker.execute("BEGIN")
        held: set[int] = set()
        deadline = time.monotonic() + 300
        while len(held) < RUNS:
            ended = [t for t in tunes if t.poll() is not None]
            assert not ended, f"a run ended before the outages were done:\n{ended[0].communicate()[0] if ended else ''}"
            charged = {run: charged_queries(url, KEYS[run]) for run in set(range(RUNS)) - held}
            for run, queries in charged.items():
                if queries >= target:
                    locker.execute("SELECT 1 FROM usage WHERE account = %s FOR UPDATE", (ACCOUNTS[run],))
                    held.add(run)
            assert time.monotonic() < deadline, f"waiting for {target} queries a run; runs not yet held: {charged}"
            time.sleep(0.05)
        deadline = time.monotonic() + 120
        while (waiting := locker.execute(_WAITING).fetchone()[0]) < RUNS:
            assert time.monotonic() < deadline, f"{waiting} requests wait on their account's row, want {RUNS}"
            time.sleep(0.02)
        if restart:
            postgres_server.restart()
            return None
        postgres_server.stop()
    finally:
        locker.close()
    try:
        return httpx.get(f"{url}/v1/usage", headers=auth(KEYS[0]), timeout=60)
    finally:
        postgres_server.start()


def test_tune_runs_survive_postgres_outages(postgres_server: PostgresServer, postgres_url: str,
                                             tmp_path: Path) -> None:
    keys = ",".join(f"{account}:{key}:10000000" for account, key in zip(ACCOUNTS, KEYS))
    env = {"SHARPZO_LEDGER": postgres_url, "SHARPZO_AUTH": "on", "SHARPZO_API_KEYS": keys}
    with EmbeddedServer(**TINY, env=env) as server:
        runs = [tmp_path / f"run{i}" for i in range(RUNS)]
        tunes = [
            subprocess.Popen(
                [SHARPZO, "tune", "--server", server.url, "--api-key", KEYS[i], "--out", str(run), "--dataset",
                 "animals", "--shots", "2", "--method", "zo-sgd", "--budget", str(BUDGET), "--eval-every", "0",
                 "--seed", str(i), "--no-progress", "--opt", "pipeline=1"],  # one request a run waits on its row:
                # pipelined, 8 would, and hold the server's ledger pool so that the usage reads here wait too
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            for i, run in enumerate(runs)
        ]
        probes = []
        try:
            for outage in range(OUTAGES):
                probe = outage_with_requests_in_flight(postgres_server, postgres_url, server.url, tunes,
                                                       target=(outage + 1) * BUDGET // (OUTAGES + 1),
                                                       restart=outage == OUTAGES - 1)
                if probe is not None:
                    probes.append(probe)
            outputs = [t.communicate(timeout=300)[0] for t in tunes]
        finally:
            for t in tunes:
                if t.poll() is None:
                    t.kill()
        for t, output in zip(tunes, outputs):
            assert t.returncode == 0, output
        answered = statuses(server.url)
        charged = [charged_queries(server.url, key) for key in KEYS]

    counted = [json.loads((run / "result.json").read_text())["budget"]["total_queries"] for run in runs]
    assert charged == counted
    assert len(probes) == OUTAGES - 1
    for probe in probes:
        assert probe.status_code == 503 and probe.json()["code"] == "unavailable", probe.text
        assert int(probe.headers["Retry-After"]) > 0
    server_errors = {status: n for status, n in answered.items() if status >= 500}
    # Not every run's request caught in a shutdown gets 503: the lock holder may die first, and a waiter then commits
    # before its own termination. The probes did.
    assert set(server_errors) == {503}, answered
