"""The ledger's PostgreSQL backend: psycopg 3 with a small connection pool per process (``pip install
'sharpzo[scale]'``), so that server replicas on several hosts share quotas, keys and idempotent responses."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

from .core import DuplicateRow, Execute, LedgerError, LedgerUnavailable, Row

try:
    import psycopg
    from psycopg_pool import ConnectionPool
except ImportError:  # the scale extra is optional; open_ledger reports it for a postgresql:// ledger only
    psycopg = None  # type: ignore[assignment]

# pg_advisory_xact_lock key that serialises schema set-up of replicas starting together ("sharpzo" in hex).
_SCHEMA_LOCK_ID = 0x736861727A6F


def redacted(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{netloc}"))


@contextmanager
def _translated(location: str) -> Iterator[None]:
    try:
        yield
    except psycopg.errors.UniqueViolation as exc:
        raise DuplicateRow(str(exc)) from exc
    # Connection refused or lost, the server shutting down or starting up, the pool's timeout (PoolTimeout), a
    # deadlock or serialisation failure: all OperationalError, and all may pass on retry.
    except psycopg.OperationalError as exc:
        raise LedgerUnavailable(f"PostgreSQL ledger {location}: {str(exc).strip() or type(exc).__name__}") from exc


class PostgresDatabase:
    bytes_type = "BYTEA"
    schema_lock = f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK_ID})"

    def __init__(
        self, url: str, timeout_s: float = 10.0, open_timeout_s: float = 60.0, max_connections: int = 8
    ) -> None:
        """``timeout_s`` bounds both connecting and a request's wait for a connection: longer than a quick restart of
        the database, short enough that a request fails with LedgerUnavailable rather than hanging. Opening waits
        up to ``open_timeout_s`` for the first connection (a database starting beside the server)."""
        self.location = redacted(url)
        if psycopg is None:
            raise LedgerError(f"ledger {self.location}: PostgreSQL needs psycopg: pip install 'sharpzo[scale]'")
        self._pool = ConnectionPool(
            url, min_size=1, max_size=max_connections, timeout=timeout_s, open=False,
            kwargs={"autocommit": True, "connect_timeout": max(int(timeout_s), 1), "application_name": "sharpzo"},
            # a connection idle in the pool across a database restart is found dead here, not by a request
            check=ConnectionPool.check_connection,
        )
        try:
            # one direct try first: a refused or rejected connection fails at once, where the pool would retry
            psycopg.connect(url, connect_timeout=max(int(open_timeout_s), 1)).close()
            self._pool.open(wait=True, timeout=open_timeout_s)
        except psycopg.OperationalError as exc:
            self._pool.close()
            raise LedgerError(f"ledger {self.location}: cannot connect: {exc}") from exc

    @staticmethod
    def _execute(connection: psycopg.Connection, sql: str, params: Sequence[object] = ()) -> list[Row]:
        cursor = connection.execute(sql.replace("?", "%s"), params)
        return cursor.fetchall() if cursor.description is not None else []

    def run(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        with _translated(self.location), self._pool.connection() as connection:
            return self._execute(connection, sql, params)

    @contextmanager
    def transaction(self) -> Iterator[Execute]:
        with _translated(self.location), self._pool.connection() as connection, connection.transaction():
            yield lambda sql, params=(): self._execute(connection, sql, params)  # type: ignore[misc]

    def close(self) -> None:
        self._pool.close()
