"""The ledger: API keys (hashed), usage per account, idempotent responses and image-set owners.

The logic and its SQL are written once here; a `Database` (SQLite or PostgreSQL) runs the statements. The SQL
is the subset both dialects share (``?`` placeholders, ``ON CONFLICT``, ``RETURNING``).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from sharpzo.shared.protocol import AccountUsage, Usage

Row = tuple[Any, ...]  # as the driver returns it: the columns of each query are known to its caller
Execute = Callable[[str, Sequence[object]], list[Row]]
"""Runs one statement with ``?`` placeholders; returns its rows (none for a statement without results)."""
Clock = Callable[[], float]
"""Seconds since the epoch: when keys are made and revoked, and how old a kept response is."""

# Each migration takes the schema from version i to i + 1; {bytes} is the dialect's byte-string type. Version 1
# is the schema of ledgers made before versioning, so applying it to one of those changes nothing.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE IF NOT EXISTS api_keys (
            name TEXT PRIMARY KEY,
            key_hash TEXT NOT NULL UNIQUE,
            quota BIGINT NOT NULL,
            created DOUBLE PRECISION NOT NULL,
            revoked DOUBLE PRECISION
        )""",
        """CREATE TABLE IF NOT EXISTS usage (
            account TEXT PRIMARY KEY,
            queries BIGINT NOT NULL DEFAULT 0,
            image_evals BIGINT NOT NULL DEFAULT 0,
            requests BIGINT NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE IF NOT EXISTS responses (
            account TEXT NOT NULL,
            idempotency_key TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            body {bytes} NOT NULL,
            created DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (account, idempotency_key)
        )""",
        "CREATE INDEX IF NOT EXISTS responses_by_age ON responses (created)",
        "CREATE TABLE IF NOT EXISTS image_sets (id TEXT PRIMARY KEY, owner TEXT NOT NULL)",
    ),
    ("ALTER TABLE usage ADD COLUMN image_forwards BIGINT NOT NULL DEFAULT 0",),
)
SCHEMA_VERSION = len(_MIGRATIONS)
# Expired responses under other keys are deleted at most this often (a key's own expired one goes at once).
_PRUNE_EVERY_S = 60.0


class LedgerError(RuntimeError):
    """The ledger cannot be opened or set up."""


class LedgerUnavailable(RuntimeError):
    """The ledger's database cannot be reached right now (a restart, a network fault); the request may be retried."""


class DuplicateRow(Exception):
    """A unique column already holds the value (raised by a `Database`, turned into a message by the ledger)."""


class QuotaExceeded(Exception):
    def __init__(self, totals: AccountUsage) -> None:
        super().__init__(f"quota of {totals.quota} queries reached")
        self.totals = totals


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

    totals: AccountUsage
    earlier: Replayable | None = None


class Database(Protocol):
    """A backend: runs statements, translating its errors into DuplicateRow and LedgerUnavailable."""

    location: str  # for messages: a path, or a URL without its password
    bytes_type: str

    @property
    def schema_lock(self) -> str | None:
        """A statement that serialises schema set-up across processes, if BEGIN does not."""

    def run(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        """One statement in a transaction of its own."""

    def transaction(self) -> AbstractContextManager[Execute]:
        """A write transaction: committed when the block ends, rolled back when it raises."""

    def close(self) -> None: ...


class Ledger:
    """Thread-safe; several processes (server replicas, ``sharpzo keys``) may share one database. ``clock`` is
    read for every timestamp (a test passes one it advances)."""

    def __init__(self, db: Database, clock: Clock = time.time) -> None:
        self._db = db
        self._clock = clock
        self.location = db.location
        self._prune_at = 0.0
        try:
            self._migrate()
        except BaseException as exc:
            db.close()
            if isinstance(exc, LedgerUnavailable):
                raise LedgerError(f"ledger {db.location}: {exc}") from exc
            raise

    def _migrate(self) -> None:
        with self._db.transaction() as execute:
            if self._db.schema_lock is not None:
                execute(self._db.schema_lock, ())
            execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)", ())
            rows = execute("SELECT version FROM schema_version", ())
            version = int(rows[0][0]) if rows else 0
            if version > SCHEMA_VERSION:
                raise LedgerError(f"ledger {self.location}: schema version {version} is newer than this sharpzo's "
                                  f"({SCHEMA_VERSION}); upgrade sharpzo")
            for statements in _MIGRATIONS[version:]:
                for statement in statements:
                    execute(statement.format(bytes=self._db.bytes_type), ())
            if not rows:
                execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif version < SCHEMA_VERSION:
                execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    def close(self) -> None:
        self._db.close()

    # --- keys

    def add_key(self, name: str, key_hash: str, quota: int) -> None:
        """Raises ValueError when the name (revoked ones included) or the key is taken."""
        try:
            self._db.run("INSERT INTO api_keys (name, key_hash, quota, created) VALUES (?, ?, ?, ?)",
                         (name, key_hash, quota, self._clock()))
        except DuplicateRow as exc:
            raise ValueError(f"a key named {name!r} is already in the ledger (revoked keys keep their name)") from exc

    def revoke_key(self, name: str) -> bool:
        rows = self._db.run("UPDATE api_keys SET revoked = ? WHERE name = ? AND revoked IS NULL RETURNING name",
                            (self._clock(), name))
        return len(rows) == 1

    def keys(self) -> list[StoredKey]:
        rows = self._db.run("SELECT name, quota, created, revoked FROM api_keys ORDER BY created")
        return [StoredKey(*row) for row in rows]

    def find_key(self, key_hash: str) -> StoredKey | None:
        """The live (not revoked) key with this hash."""
        rows = self._db.run("SELECT name, quota, created, revoked FROM api_keys WHERE key_hash = ? AND revoked IS NULL",
                            (key_hash,))
        return StoredKey(*rows[0]) if rows else None

    # --- usage

    @staticmethod
    def _account_usage(rows: list[Row], quota: int | None) -> AccountUsage:
        queries, image_evals, requests, image_forwards = rows[0] if rows else (0, 0, 0, 0)
        return AccountUsage(
            queries=queries, image_evals=image_evals, requests=requests, image_forwards=image_forwards, quota=quota
        )

    _USAGE_COLUMNS = "queries, image_evals, requests, image_forwards"
    _SELECT_USAGE = f"SELECT {_USAGE_COLUMNS} FROM usage WHERE account = ?"

    def totals(self, account: str, quota: int | None) -> AccountUsage:
        return self._account_usage(self._db.run(self._SELECT_USAGE, (account,)), quota)

    def commit(
        self, account: str, quota: int | None, charge: Usage, key: str | None, fingerprint: str, body: bytes,
        window_s: float,
    ) -> Committed:
        """Charge the account and keep ``body`` under idempotency ``key``, in one transaction.

        When the key already holds a live response (a concurrent retry won), nothing is charged and that
        response is returned instead. Raises QuotaExceeded, charging nothing, when the charge would pass
        ``quota``.
        """
        now = self._clock()
        if key is not None and now >= self._prune_at:
            self._prune_at = now + _PRUNE_EVERY_S
            self._db.run("DELETE FROM responses WHERE created < ?", (now - window_s,))
        # Each statement below is atomic on its row, also on PostgreSQL under READ COMMITTED: a concurrent
        # transaction on the same key or account waits for this one and then sees its outcome.
        with self._db.transaction() as execute:
            if key is not None:
                # Takes the key unless it holds a live response; an expired one is overwritten.
                taken = execute(
                    "INSERT INTO responses (account, idempotency_key, fingerprint, body, created) "
                    "VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (account, idempotency_key) DO UPDATE SET fingerprint = excluded.fingerprint, "
                    "body = excluded.body, created = excluded.created WHERE responses.created < ? RETURNING 1",
                    (account, key, fingerprint, zlib.compress(body, 1), now, now - window_s),
                )
                if not taken:
                    earlier = self._replayable(execute, account, key, now - window_s)
                    return Committed(self._account_usage(execute(self._SELECT_USAGE, (account,)), quota), earlier)
            # On a fresh account the row is inserted without the WHERE, hence the first check.
            fits = quota is None or charge.queries <= quota
            rows = [] if not fits else execute(
                f"INSERT INTO usage (account, {self._USAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (account) DO UPDATE SET queries = usage.queries + excluded.queries, "
                "image_evals = usage.image_evals + excluded.image_evals, "
                "requests = usage.requests + excluded.requests, "
                "image_forwards = usage.image_forwards + excluded.image_forwards"
                + ("" if quota is None else " WHERE usage.queries + excluded.queries <= ?")
                + f" RETURNING {self._USAGE_COLUMNS}",
                (account, charge.queries, charge.image_evals, charge.requests, charge.image_forwards,
                 *(() if quota is None else (quota,))),
            )
            if not rows:
                raise QuotaExceeded(self._account_usage(execute(self._SELECT_USAGE, (account,)), quota))
            return Committed(self._account_usage(rows, quota))

    # --- idempotent responses

    @staticmethod
    def _replayable(execute: Execute, account: str, key: str, not_before: float) -> Replayable | None:
        rows = execute(
            "SELECT fingerprint, body FROM responses WHERE account = ? AND idempotency_key = ? AND created >= ?",
            (account, key, not_before),
        )
        return Replayable(key, str(rows[0][0]), zlib.decompress(bytes(rows[0][1]))) if rows else None

    def replayable(self, account: str, key: str, window_s: float) -> Replayable | None:
        """The response kept under ``key`` within the last ``window_s`` seconds."""
        return self._replayable(self._db.run, account, key, self._clock() - window_s)

    def arrival(
        self, account: str, quota: int | None, key: str | None, window_s: float
    ) -> tuple[AccountUsage, Replayable | None]:
        """What a request reads before its work, in one call (one thread hop for the server): the account's totals
        and, under an idempotency key, the response kept for it within the last ``window_s`` seconds."""
        return self.totals(account, quota), None if key is None else self.replayable(account, key, window_s)

    # --- image-set owners

    def own_image_set(self, set_id: str, owner: str) -> None:
        self._db.run("INSERT INTO image_sets (id, owner) VALUES (?, ?) ON CONFLICT (id) DO NOTHING", (set_id, owner))

    def image_set_owner(self, set_id: str) -> str | None:
        rows = self._db.run("SELECT owner FROM image_sets WHERE id = ?", (set_id,))
        return str(rows[0][0]) if rows else None
