"""The ledger, on SQLite and on PostgreSQL: charges and idempotent responses survive a stop and a SIGKILL; a retried
POST is charged once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from sharpzo.client.embedded import EmbeddedServer
from sharpzo.server.ledger import Ledger, QuotaExceeded, open_ledger
from sharpzo.shared.protocol import IDEMPOTENCY_HEADER, Usage
from sharpzo.shared.tensors import Tensor

from .conftest import TINY, b64, encoded_image

KEY = "ledger-key-0123456789abcdef"
IMAGES = [b64(encoded_image(i)) for i in range(4)]


def charge(queries: int, image_evals: int, requests: int) -> Usage:
    return Usage(queries=queries, image_evals=image_evals, requests=requests)


def start(ledger: str) -> EmbeddedServer:
    env = {"SHARPZO_AUTH": "on", "SHARPZO_API_KEYS": f"alice:{KEY}:1000", "SHARPZO_LEDGER": ledger}
    return EmbeddedServer(**TINY, env=env).start()


def body(set_id: str, n_cand: int, seed: int = 0) -> dict:
    prompts = np.random.default_rng(seed).normal(0, 0.02, (n_cand, 2, 32)).astype(np.float32)
    return {"image_set": set_id, "class_names": ["cat", "dog"], "prompts": Tensor.from_numpy(prompts).model_dump(),
            "labels": [0, 1, 0, 1]}


def post(http: httpx.Client, path: str, payload: dict, key: str) -> httpx.Response:
    response = http.post(path, json=payload, headers={IDEMPOTENCY_HEADER: key})
    assert response.status_code == 200, response.text
    return response


def usage(http: httpx.Client) -> dict:
    return http.get("/v1/usage").json()


def test_ledger_and_idempotency_survive_stop_and_sigkill(ledger_setting: str) -> None:
    ledger = ledger_setting
    headers = {"Authorization": f"Bearer {KEY}"}

    server = start(ledger)
    try:
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as http:
            set_id = post(http, "/v1/image-sets", {"images": IMAGES}, "upload-1").json()["id"]
            first = post(http, "/v1/logits", body(set_id, 3), "k1")
            again = post(http, "/v1/logits", body(set_id, 3), "k1")
            assert again.content == first.content and again.headers["Idempotent-Replayed"] == "true"
            assert again.headers["X-Queries-Used"] == "3"
            conflict = http.post("/v1/logits", json=body(set_id, 3, seed=1), headers={IDEMPOTENCY_HEADER: "k1"})
            assert conflict.status_code == 422 and conflict.json()["detail"].startswith(f"{IDEMPOTENCY_HEADER}: 'k1'")
            with ThreadPoolExecutor(4) as pool:  # retries racing the first try still charge once
                raced = list(pool.map(lambda _: post(http, "/v1/logits", body(set_id, 2, seed=2), "k-race"), range(4)))
            assert len({r.content for r in raced}) == 1
            assert usage(http) == {"queries": 5, "image_evals": 20, "requests": 2, "image_forwards": 0, "quota": 1000}
    finally:
        server.stop()

    server = start(ledger)
    try:
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as http:
            assert usage(http)["queries"] == 5
            assert post(http, "/v1/logits", body(set_id, 3), "k1").content == first.content
            # features were in memory only: a retried upload is done again (not replayed) and keeps its id
            assert post(http, "/v1/image-sets", {"images": IMAGES}, "upload-1").json()["id"] == set_id
            assert http.get(f"/v1/image-sets/{set_id}").status_code == 200
            second = post(http, "/v1/logits", body(set_id, 4, seed=3), "k2")
            assert second.headers["X-Queries-Used"] == "9"
    finally:
        server.kill()

    server = start(ledger)
    try:
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as http:
            replayed = post(http, "/v1/logits", body(set_id, 4, seed=3), "k2")
            assert replayed.content == second.content and json.loads(replayed.content)["usage"]["queries"] == 4
            assert usage(http) == {"queries": 9, "image_evals": 36, "requests": 3, "image_forwards": 0, "quota": 1000}
    finally:
        server.stop()


class FakeClock:
    """A clock that moves only when the test advances it."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ledger(ledger_setting: str, clock: FakeClock) -> Iterator[Ledger]:
    opened = open_ledger(ledger_setting, clock=clock)
    yield opened
    opened.close()


def test_commit_refuses_a_charge_over_quota_and_charges_nothing(ledger: Ledger) -> None:
    ledger.commit("a", 5, charge(4, 8, 1), None, "", b"", 60.0)
    with pytest.raises(QuotaExceeded):
        ledger.commit("a", 5, charge(2, 4, 1), "key", "f", b"{}", 60.0)
    assert ledger.totals("a", 5).queries == 4 and ledger.replayable("a", "key", 60.0) is None
    assert ledger.commit("a", 5, charge(1, 2, 1), None, "", b"", 60.0).totals.remaining == 0


def test_commit_under_a_taken_key_returns_the_first_response(ledger: Ledger) -> None:
    ledger.commit("a", None, charge(1, 1, 1), "key", "f1", b'{"n": 1}', 60.0)
    later = ledger.commit("a", None, charge(1, 1, 1), "key", "f1", b'{"n": 2}', 60.0)
    assert later.earlier is not None and later.earlier.body == b'{"n": 1}' and later.totals.queries == 1
    assert ledger.commit("b", None, charge(1, 1, 1), "key", "f1", b"{}", 60.0).earlier is None  # keys are per account


def test_responses_expire_after_the_window(ledger: Ledger, clock: FakeClock) -> None:
    window = 60.0
    ledger.commit("a", None, charge(1, 1, 1), "key", "f", b"{}", window)
    clock.advance(window - 1)
    assert ledger.replayable("a", "key", window) is not None
    clock.advance(2)
    assert ledger.replayable("a", "key", window) is None
    assert ledger.commit("a", None, charge(1, 1, 1), "key", "f", b"{}", window).earlier is None
