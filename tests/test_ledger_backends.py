"""The ledger's backends: the setting that picks one, schema versions, key management on either, and PostgreSQL
restarted under load (LedgerUnavailable, never a raw driver error, then reconnected)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sharpzo.server.keys import hash_key
from sharpzo.server.ledger import SCHEMA_VERSION, LedgerError, LedgerUnavailable, open_ledger
from sharpzo.shared.protocol import Usage

from .postgres_server import PostgresServer

ONE = Usage(queries=1, image_evals=4, requests=1)


def test_the_setting_picks_the_backend(tmp_path: Path) -> None:
    for setting in (str(tmp_path / "a.sqlite3"), f"sqlite:///{tmp_path / 'b.sqlite3'}"):
        open_ledger(setting).close()
    assert (tmp_path / "a.sqlite3").exists() and (tmp_path / "b.sqlite3").exists()
    with pytest.raises(LedgerError, match="mysql://"):
        open_ledger("mysql://db/ledger")


def test_a_ledger_made_before_schema_versions_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as old:  # the schema as sharpzo wrote it before versioning
        old.executescript("""
            CREATE TABLE api_keys (name TEXT PRIMARY KEY, key_hash TEXT NOT NULL UNIQUE, quota INTEGER NOT NULL,
                                   created REAL NOT NULL, revoked REAL);
            CREATE TABLE usage (account TEXT PRIMARY KEY, queries INTEGER NOT NULL DEFAULT 0,
                                image_evals INTEGER NOT NULL DEFAULT 0, requests INTEGER NOT NULL DEFAULT 0);
            INSERT INTO api_keys VALUES ('alice', 'hash', 10, 1.0, NULL);
            INSERT INTO usage VALUES ('alice', 3, 12, 1);
        """)
    old.close()
    ledger = open_ledger(path)
    try:
        assert ledger.find_key("hash") is not None and ledger.totals("alice", 10).queries == 3
        assert ledger.commit("alice", 10, ONE, "k", "f", b"{}", 60.0).totals.queries == 4  # responses table made
    finally:
        ledger.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    db.close()


def test_a_ledger_from_a_newer_sharpzo_is_refused(ledger_setting: str) -> None:
    open_ledger(ledger_setting).close()
    if ledger_setting.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(ledger_setting, autocommit=True) as db:
            db.execute("UPDATE schema_version SET version = version + 1")
    else:
        with sqlite3.connect(ledger_setting) as db:
            db.execute("UPDATE schema_version SET version = version + 1")
        db.close()
    with pytest.raises(LedgerError, match="newer than this sharpzo"):
        open_ledger(ledger_setting)


def test_a_database_that_is_down_at_start_is_a_ledger_error(postgres_server: PostgresServer) -> None:
    down = postgres_server.url().replace(f":{postgres_server.port}/", ":1/")
    with pytest.raises(LedgerError, match="cannot connect"):
        open_ledger(down)


def keys_cli(setting: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sharpzo.server.keys", "--ledger", setting, *args],
                          capture_output=True, text=True, timeout=120)


def test_keys_cli_manages_keys_on_either_backend(ledger_setting: str) -> None:
    added = keys_cli(ledger_setting, "add", "bob", "--quota", "10")
    assert added.returncode == 0, added.stderr
    ledger = open_ledger(ledger_setting)
    try:
        found = ledger.find_key(hash_key(added.stdout.strip()))
        assert found is not None and (found.name, found.quota) == ("bob", 10)
        ledger.commit("bob", 10, ONE, None, "", b"", 60.0)
    finally:
        ledger.close()
    listed = keys_cli(ledger_setting, "list")
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[:3] for line in listed.stdout.splitlines()[1:]] == [["bob", "10", "1"]]
    assert keys_cli(ledger_setting, "add", "bob", "--quota", "5").returncode == 1  # names stay taken
    assert keys_cli(ledger_setting, "revoke", "bob").returncode == 0
    assert keys_cli(ledger_setting, "revoke", "bob").returncode == 1
    assert "revoked" in keys_cli(ledger_setting, "list").stdout


def test_pg_restart_mid_run_gives_ledger_unavailable_and_retries_charge_once(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """Clients commit without pause, retrying a LedgerUnavailable under the same idempotency key, as the HTTP client
    does after a 503; the database restarts under them."""
    ledger = open_ledger(postgres_url)
    done = [0] * 4  # keys each client has been answered for
    errors: list[BaseException] = []
    stop = threading.Event()

    def client(c: int) -> None:
        for i in range(100_000):
            give_up = time.monotonic() + 60
            while True:
                try:
                    ledger.commit("alice", None, ONE, f"{c}-{i}", "f", b"{}", 3600.0)
                    break
                except Exception as exc:  # noqa: BLE001  every kind is recorded, and checked below
                    errors.append(exc)
                    if not isinstance(exc, LedgerUnavailable) or time.monotonic() > give_up:
                        return
                    time.sleep(0.02)
            done[c] = i + 1
            if stop.is_set():
                return

    def wait_for(total: int) -> None:
        deadline = time.monotonic() + 60
        while sum(done) < total and time.monotonic() < deadline and any(t.is_alive() for t in threads):
            time.sleep(0.01)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(len(done))]
    try:
        for thread in threads:
            thread.start()
        wait_for(100)
        postgres_server.restart()
        wait_for(sum(done) + 100)  # commits resume after the restart
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    try:
        assert not [e for e in errors if not isinstance(e, LedgerUnavailable)], errors
        assert errors, "no request was in flight during the restart"
        answered = sum(done)
        assert answered >= 200
        totals = ledger.totals("alice", None)
        assert (totals.queries, totals.requests) == (answered, answered)  # each key charged once, retries replayed
    finally:
        ledger.close()


def test_connections_idle_across_a_restart_are_replaced_before_use(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    ledger = open_ledger(postgres_url)
    try:
        ledger.commit("alice", None, ONE, None, "", b"", 60.0)
        postgres_server.restart()
        assert ledger.commit("alice", None, ONE, None, "", b"", 60.0).totals.queries == 2
    finally:
        ledger.close()
