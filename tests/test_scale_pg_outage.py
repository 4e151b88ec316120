"""Tuning runs over HTTP while their PostgreSQL ledger goes down and comes back (`pg_ctl restart -m fast`, or stop
and start): a request caught by the outage gets 503 with Retry-After, never a 500; the client retries it under the
same idempotency key; every run finishes, and the ledger's charge equals what the clients counted."""

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
KEY = "pgoutage-key--0123456789abcdef"
BUDGET = 1500
RUNS = 2  # two tuning clients on one key, so that an outage finds requests in flight
OUTAGES = 4  # the last a plain `pg_ctl restart -m fast`, the others a stop, a probe while down, and a start


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def statuses(url: str) -> dict[int, float]:
    """Requests answered so far, by HTTP status, from the server's /metrics."""
    counts: dict[int, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text):
        for sample in family.samples:
            if sample.name == "sharpzo_http_requests_total" and sample.labels["route"] != "/metrics":
                status = int(sample.labels["status"])
                counts[status] = counts.get(status, 0.0) + sample.value
    return counts


def charged_queries(url: str) -> int:
    return int(httpx.get(f"{url}/v1/usage", headers=auth(), timeout=30).json()["queries"])


# Sessions waiting on the usage table's lock: a request's usage lookup (each request starts with one) or its charge.
# A run is sequential, so it has at most one waiting. Neither state nor query is filtered on: a prepared statement
# takes its locks at Bind, where pg_stat_activity still shows 'idle' and the session's previous statement.
_WAITING = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sharpzo' AND wait_event_type = 'Lock'"


def outage_with_requests_in_flight(postgres_server: PostgresServer, postgres_url: str, url: str,
                                   restart: bool) -> httpx.Response | None:
    """Take PostgreSQL down while every run has a request inside it: either ``pg_ctl restart -m fast`` as it is, or
    ``pg_ctl stop -m fast``, a request for usage while it is down, and ``pg_ctl start``. A lock on the usage table
    holds each run's request at its usage lookup or, after its idempotent response was written, inside its charge's
    transaction, until the shutdown cuts it. Returns the answer to the request made while the database was down."""
    locker = psycopg.connect(postgres_url, autocommit=True)  # not a context manager: its exit would talk to a dead server
    try:
        locker.execute("BEGIN")
        locker.execute("LOCK TABLE usage IN ACCESS EXCLUSIVE MODE")
        deadline = time.monotonic() + 120
        while (waiting := locker.execute(_WAITING).fetchone()[0]) < RUNS:
            assert time.monotonic() < deadline, f"{waiting} requests wait on the usage table, want {RUNS}"
            time.sleep(0.02)
        if restart:
            postgres_server.restart()
            return None
        postgres_server.stop()
    finally:
        locker.close()
    try:
        return httpx.get(f"{url}/v1/usage", headers=auth(), timeout=60)
    finally:
        postgres_server.start()


def test_tune_runs_survive_postgres_outages(postgres_server: PostgresServer, postgres_url: str,
                                             tmp_path: Path) -> None:
    env = {"SHARPZO_LEDGER": postgres_url, "SHARPZO_AUTH": "on", "SHARPZO_API_KEYS": f"tenant:{KEY}:10000000"}
    with EmbeddedServer(**TINY, env=env) as server:
        runs = [tmp_path / f"run{i}" for i in range(RUNS)]
        tunes = [
            subprocess.Popen(
                [SHARPZO, "tune", "--server", server.url, "--api-key", KEY, "--out", str(run), "--dataset", "animals",
                 "--shots", "2", "--method", "zo-sgd", "--budget", str(BUDGET), "--eval-every", "0", "--seed", str(i),
                 "--no-progress"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            for i, run in enumerate(runs)
        ]
        probes = []
        try:
            for outage in range(OUTAGES):
                deadline = time.monotonic() + 300
                target = (outage + 1) * RUNS * BUDGET // (OUTAGES + 1)
                while (charged := charged_queries(server.url)) < target:
                    assert all(t.poll() is None for t in tunes), "a run ended before the outages were done"
                    assert time.monotonic() < deadline, f"before outage {outage}: {charged} of {target} queries"
                    time.sleep(0.05)
                probe = outage_with_requests_in_flight(postgres_server, postgres_url, server.url,
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
        charged = charged_queries(server.url)

    counted = sum(json.loads((run / "result.json").read_text())["budget"]["total_queries"] for run in runs)
    assert charged == counted
    assert len(probes) == OUTAGES - 1
    for probe in probes:
        assert probe.status_code == 503 and probe.json()["code"] == "unavailable", probe.text
        assert int(probe.headers["Retry-After"]) > 0
    server_errors = {status: n for status, n in answered.items() if status >= 500}
    # Not every run's request caught in a shutdown gets 503: the lock holder may die first, and a waiter then commits
    # before its own termination. The probes did.
    assert set(server_errors) == {503}, answered
