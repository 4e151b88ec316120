"""The ledger's SQLite backend (WAL): one connection shared by threads under a lock; other processes (``sharpzo
keys``) wait on busy_timeout."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from .core import DuplicateRow, Execute, LedgerError, LedgerUnavailable, Row

# Errors that may pass on retry: locked past busy_timeout, an I/O error, a full disk.
_TRANSIENT = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_FULL")


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except sqlite3.IntegrityError as exc:
        raise DuplicateRow(str(exc)) from exc
    except sqlite3.OperationalError as exc:
        # Python 3.10 names no errors: there every OperationalError counts as transient
        if not getattr(exc, "sqlite_errorname", _TRANSIENT[0]).startswith(_TRANSIENT):
            raise
        raise LedgerUnavailable(f"SQLite: {exc}") from exc


class SQLiteDatabase:
    bytes_type = "BLOB"
    schema_lock = None  # BEGIN IMMEDIATE already excludes other writers

    def __init__(self, path: Path, synchronous: Literal["NORMAL", "FULL"] = "NORMAL") -> None:
        self.location = str(path)
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
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(f"ledger {path}: {exc}") from exc

    def _execute(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        return self._db.execute(sql, params).fetchall()

    def run(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        with self._lock, _translated():
            return self._execute(sql, params)

    @contextmanager
    def transaction(self) -> Iterator[Execute]:
        with self._lock, _translated():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._execute
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()
