"""The transport floor that bench/step_latency.py compares the server against: it must read the body, wait as long
as asked, and report its own time as the server does, or the floor it gives is not the floor of that step."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import httpx

from sharpzo.shared.protocol import SERVER_TIMING_HEADER

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from transport_floor import FloorServer


def test_the_floor_waits_as_asked_and_reports_its_time() -> None:
    with FloorServer() as floor, httpx.Client(base_url=floor.url, timeout=60) as http:
        for wait_ms in (0.0, 30.0):
            response = http.post(f"/v1/logits?wait_ms={wait_ms}", content=b"x" * 50_000)
            assert response.status_code == 200 and response.json() == {"ok": True}
            app_ms = float(re.fullmatch(r"app;dur=([0-9.]+)", response.headers[SERVER_TIMING_HEADER]).group(1))
            assert app_ms >= wait_ms  # a lower bound only: load can lengthen the wait, never shorten it
