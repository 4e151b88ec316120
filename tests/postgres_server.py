"""A throwaway PostgreSQL server on loopback for the tests: initdb in a temporary folder, pg_ctl start on a free
port, stopped by PID at the end of the session. As root (CI), it runs as a dedicated system user, since initdb
refuses to run as root."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

SERVICE_USER = "sharpzo-pg"
SUPERUSER = "sharpzo"


class PostgresMissing(RuntimeError):
    pass


def _binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise PostgresMissing(f"PostgreSQL's {name} is neither on PATH nor in /usr/lib/postgresql/*/bin: the "
                              "PostgreSQL ledger tests need a PostgreSQL server (Debian: apt-get install postgresql; "
                              "`make test` installs it when run as root)")
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _service_user() -> str | None:
    """The user to run PostgreSQL as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
                       check=True, capture_output=True)
    return SERVICE_USER


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class PostgresServer:
    data_dir: Path
    port: int
    user: str | None
    fsync: bool = False  # off for tests: a lost commit on a power cut does not matter to a throwaway server

    def _run(self, *argv: str) -> None:
        prefix = [] if self.user is None else ["runuser", "-u", self.user, "--"]
        done = subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            log = self.data_dir / "log"
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}"
                               + (f"\n{log}:\n{log.read_text()[-2000:]}" if log.exists() else ""))

    @property
    def pid(self) -> int:
        """The postmaster's PID, from the first line of postmaster.pid."""
        return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def initdb(self) -> None:
        self._run(_binary("initdb"), "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not self.fsync:
            options += " -c fsync=off"
        self._run(_binary("pg_ctl"), "-D", str(self.data_dir), "-o", options, "-l", str(self.data_dir / "log"),
                  "-w", "start")

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: open connections are cut, transactions in flight abort."""
        # -l again: without it the new postmaster writes to (and holds open) our stdout pipe
        self._run(_binary("pg_ctl"), "-D", str(self.data_dir), "-l", str(self.data_dir / "log"), "-m", "fast", "-w",
                  "restart")

    def stop(self) -> None:
        pid = self.pid
        try:
            self._run(_binary("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop")
        finally:
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
                raise RuntimeError(f"PostgreSQL (PID {pid}) outlived pg_ctl stop; killed")

    def new_database(self) -> str:
        """A fresh, empty database's URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


@contextmanager
def running_postgres(fsync: bool = False) -> Iterator[PostgresServer]:
    """A new PostgreSQL server, stopped (and its folder removed) when the block ends."""
    user = _service_user()
    root = Path(tempfile.mkdtemp(prefix="sharpzo-pg-"))  # in /tmp: pytest's temp folders are private to root
    server = PostgresServer(root / "data", _free_port(), user, fsync)
    try:
        server.data_dir.mkdir(mode=0o700)
        if user is not None:
            os.chmod(root, 0o755)
            shutil.chown(server.data_dir, user, user)
        server.initdb()
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL for the session; `postgres_url` gives each test its own database on it."""
    try:
        with running_postgres() as server:
            yield server
    except PostgresMissing as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    url = postgres_server.new_database()
    yield url
    postgres_server.drop_database(url)
