"""The ledger: API keys (hashed), usage per account, idempotent responses and image-set owners, in SQLite (the
default, one host) or PostgreSQL (shared by replicas), picked by `open_ledger` from the ``ledger`` setting."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Literal

from .core import (
    SCHEMA_VERSION,
    Clock,
    Committed,
    Ledger,
    LedgerError,
    LedgerUnavailable,
    QuotaExceeded,
    Replayable,
    StoredKey,
)

__all__ = [
    "SCHEMA_VERSION", "Clock", "Committed", "Ledger", "LedgerError", "LedgerUnavailable", "QuotaExceeded", "Replayable",
    "StoredKey", "default_ledger_path", "open_ledger",
]

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_SQLITE_SCHEME = "sqlite:///"  # as in SQLAlchemy: sqlite:///relative.db, sqlite:////absolute.db


def default_ledger_path() -> Path:
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "sharpzo" / "ledger.sqlite3"


def open_ledger(
    setting: str | Path, synchronous: Literal["NORMAL", "FULL"] = "NORMAL", clock: Clock = time.time
) -> Ledger:
    """A ledger on PostgreSQL for a ``postgresql://`` URL; else on SQLite, for a path or a ``sqlite:///`` URL.

    ``synchronous`` is SQLite's durability mode; PostgreSQL's is the server's own (synchronous_commit). ``clock``
    stamps keys and responses.
    Raises LedgerError when the database cannot be opened, reached or set up.
    """
    text = str(setting)
    if text.startswith(_POSTGRES_SCHEMES):
        from .postgres import PostgresDatabase

        return Ledger(PostgresDatabase(text), clock)
    from .sqlite import SQLiteDatabase

    if text.startswith(_SQLITE_SCHEME):
        text = text[len(_SQLITE_SCHEME):]
    elif "://" in text:
        raise LedgerError(f"ledger {text.split('://', 1)[0]}://...: use a file path, sqlite:///PATH or postgresql://...")
    return Ledger(SQLiteDatabase(Path(text), synchronous), clock)
