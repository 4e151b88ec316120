"""Schemathesis fuzzes every operation of the live OpenAPI schema: no 5xx, and every response conforms to it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from sharpzo.client.embedded import EmbeddedServer

from .conftest import TINY

KEY = "fuzz-key-0123456789abcdef"
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    env = {
        "SHARPZO_AUTH": "on",
        "SHARPZO_API_KEYS": f"fuzz:{KEY}:100000000",
        "SHARPZO_LEDGER": str(tmp_path_factory.mktemp("fuzz") / "ledger.sqlite3"),
        "SHARPZO_RATE_LIMIT_RPS": "100000",
        "SHARPZO_MAX_CANDIDATES": "64",
        "SHARPZO_MAX_CLASSES": "20",
        "SHARPZO_MAX_IMAGES_PER_SET": "8",
        "SHARPZO_MAX_BODY_BYTES": "200000",
        "SHARPZO_MAX_IMAGE_PIXELS": "250000",
        "SHARPZO_ACCESS_LOG": "false",
    }
    with EmbeddedServer(**TINY, env=env) as server:
        yield server


def test_every_operation_conforms_to_the_schema(fuzzed_server: EmbeddedServer, tmp_path) -> None:
    # the CLI, not the pytest plugin: the plugin's lazy loader does not run under pytest 9
    command = [
        sys.executable, "-c", "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
        "run", f"{fuzzed_server.url}/openapi.json",
        "--checks", ",".join(CHECKS),
        "--header", f"Authorization: Bearer {KEY}",
        "--max-examples", "25",
        "--seed", "1",
        "--workers", "1",
        "--generation-database", "none",
        "--no-color",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:] + fuzzed_server.log_tail(40)
