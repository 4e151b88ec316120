"""The ledger: API keys (hashed), usage per account, idempotent responses and image-set owners, in SQLite (WAL)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import zlib
from typing import Literal
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    name TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    quota INTEGER NOT NULL,
    created REAL NOT NULL,
    revoked REAL
);
CREATE TABLE IF NOT EXISTS usage (
    account TEXT PRIMARY KEY,
    queries INTEGER NOT NULL DEFAULT 0,
    image_evals INTEGER NOT NULL DEFAULT 0,
    requests INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS responses (
    account TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    body BLOB NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (account, idempotency_key)
);
CREATE INDEX IF NOT EXISTS responses_by_age ON responses (created);
CREATE TABLE IF NOT EXISTS image_sets (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL
);
"""


def default_ledger_path() -> Path:
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "sharpzo" / "ledger.sqlite3"


class LedgerError(RuntimeError):
    """The ledger file cannot be opened or set up."""


class LedgerUnavailable(RuntimeError):
    """The ledger's database cannot be reached right now (a restart, a network fault); the request may be retried."""


class QuotaExceeded(Exception):
    def __init__(self, totals: "Totals") -> None:
        super().__init__(f"quota of {totals.quota} queries reached")
        self.totals = totals


@dataclass(frozen=True)
class Charge:
    queries: int = 0
    image_evals: int = 0
    requests: int = 0


@dataclass(frozen=True)
class Totals:
    """An account's usage so far, and its quota (None: no limit)."""

    queries: int
    image_evals: int
    requests: int
    quota: int | None

    @property
    def remaining(self) -> int | None:
        return None if self.quota is None else max(self.quota - self.queries, 0)


@dataclass(frozen=True)
class StoredKey:
    name: str
    quota: int
    created: float
    revoked: float | None


@dataclass(frozen=True)
class Replayable:
    """A response kept under an idempotency key: ``fingerprint`` identifies the request that made it."""

    key: str
    fingerprint: str
    body: bytes


@dataclass(frozen=True)
class Committed:
    """What a charge left: the account's new totals, and the earlier response if the idempotency key was taken."""

    totals: Totals
    earlier: Replayable | None = None


class Ledger:
    """One SQLite connection shared by threads under a lock; other processes (``sharpzo keys``) wait on busy_timeout."""

    def __init__(self, path: Path, synchronous: Literal["NORMAL", "FULL"] = "NORMAL") -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            # Charge and replayable response commit in one transaction under either setting, so no
            # query is ever charged twice. NORMAL survives process crashes; a power loss may forget the
            # last charges together with their responses (then a retry is charged once). FULL also
            # keeps those, at an fsync per charged request.
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(f"ledger {path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- keys

    def add_key(self, name: str, key_hash: str, quota: int) -> None:
        """Raises ValueError when the name (revoked ones included) or the key is taken."""
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO api_keys (name, key_hash, quota, created) VALUES (?, ?, ?, ?)",
                    (name, key_hash, quota, time.time()),
                )
            except sqlite3.IntegrityError as exc:
                raise ValueError(f"a key named {name!r} is already in the ledger (revoked keys keep their name)") from exc

    def revoke_key(self, name: str) -> bool:
        with self._lock:
            cursor = self._db.execute(
                "UPDATE api_keys SET revoked = ? WHERE name = ? AND revoked IS NULL", (time.time(), name)
            )
            return cursor.rowcount == 1

    def keys(self) -> list[StoredKey]:
        with self._lock:
            rows = self._db.execute("SELECT name, quota, created, revoked FROM api_keys ORDER BY created").fetchall()
        return [StoredKey(*row) for row in rows]

    def find_key(self, key_hash: str) -> StoredKey | None:
        """The live (not revoked) key with this hash."""
        with self._lock:
            row = self._db.execute(
                "SELECT name, quota, created, revoked FROM api_keys WHERE key_hash = ? AND revoked IS NULL", (key_hash,)
            ).fetchone()
        return None if row is None else StoredKey(*row)

    # --- usage

    def _totals(self, account: str, quota: int | None) -> Totals:
        row = self._db.execute(
            "SELECT queries, image_evals, requests FROM usage WHERE account = ?", (account,)
        ).fetchone()
        return Totals(*(row or (0, 0, 0)), quota=quota)

    def totals(self, account: str, quota: int | None) -> Totals:
        with self._lock:
            return self._totals(account, quota)

    def commit(
        self, account: str, quota: int | None, charge: Charge, key: str | None, fingerprint: str, body: bytes,
        window_s: float,
    ) -> Committed:
        """Charge the account and keep ``body`` under idempotency ``key``, in one transaction.

        When the key already holds a live response (a concurrent retry won), nothing is charged and that
        response is returned instead. Raises QuotaExceeded, charging nothing, when the charge would pass
        ``quota``.
        """
        now = time.time()
        packed = None if key is None else zlib.compress(body, 1)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if key is not None:
                    self._db.execute("DELETE FROM responses WHERE created < ?", (now - window_s,))
                    earlier = self._replayable(account, key, now - window_s)
                    if earlier is not None:
                        self._db.execute("COMMIT")
                        return Committed(self._totals(account, quota), earlier)
                totals = self._totals(account, quota)
                if quota is not None and totals.queries + charge.queries > quota:
                    raise QuotaExceeded(totals)
                self._db.execute(
                    "INSERT INTO usage (account, queries, image_evals, requests) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (account) DO UPDATE SET queries = queries + excluded.queries, "
                    "image_evals = image_evals + excluded.image_evals, requests = requests + excluded.requests",
                    (account, charge.queries, charge.image_evals, charge.requests),
                )
                if key is not None:
                    self._db.execute(
                        "INSERT INTO responses (account, idempotency_key, fingerprint, body, created) VALUES (?, ?, ?, ?, ?)",
                        (account, key, fingerprint, packed, now),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return Committed(self._totals(account, quota))

    # --- idempotent responses

    def _replayable(self, account: str, key: str, not_before: float) -> Replayable | None:
        row = self._db.execute(
            "SELECT fingerprint, body FROM responses WHERE account = ? AND idempotency_key = ? AND created >= ?",
            (account, key, not_before),
        ).fetchone()
        return None if row is None else Replayable(key, row[0], zlib.decompress(row[1]))

    def replayable(self, account: str, key: str, window_s: float) -> Replayable | None:
        """The response kept under ``key`` within the last ``window_s`` seconds."""
        with self._lock:
            return self._replayable(account, key, time.time() - window_s)

    # --- image-set owners

    def own_image_set(self, set_id: str, owner: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO image_sets (id, owner) VALUES (?, ?)", (set_id, owner))

    def image_set_owner(self, set_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT owner FROM image_sets WHERE id = ?", (set_id,)).fetchone()
        return None if row is None else row[0]
