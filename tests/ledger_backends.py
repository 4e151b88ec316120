"""The ledger's backends as test parameters."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_setting(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The ``ledger`` setting of each backend: a SQLite file, or the URL of a new PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.sqlite3")
    return str(request.getfixturevalue("postgres_url"))
