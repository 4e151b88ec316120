"""API keys over real HTTP: 401s, keys from the environment, a file and the CLI, image-set ownership,
quotas and rates (429 + Retry-After), usage headers, /v1/usage, /metrics and the access log."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from sharpzo.client.embedded import EmbeddedServer
from sharpzo.server.auth import TokenBucket
from sharpzo.server.keys import KeyConfigError, configured_keys, hash_key
from sharpzo.shared.tensors import Tensor

from .conftest import TINY, b64, encoded_image

KEYS = {
    "alice": "alice-key-0123456789abcdef",
    "bob": "bob-key-0123456789abcdef",
    "small": "small-key-0123456789abcdef",
    "flood": "flood-key-0123456789abcdef",
}
CAROL = "carol-key-0123456789abcdef"
WIDTH = 32  # sharpzo-tiny's token width


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("auth") / "ledger.sqlite3"


@pytest.fixture(scope="module")
def server(ledger: Path) -> Iterator[EmbeddedServer]:
    keys_file = ledger.parent / "keys.txt"
    keys_file.write_text(f"# name:key:quota\ncarol:{CAROL}:50  # from the file\n")
    quotas = {"alice": 1000, "bob": 1000, "small": 5, "flood": 1000}
    env = {
        "SHARPZO_AUTH": "on",
        "SHARPZO_API_KEYS": ",".join(f"{name}:{key}:{quotas[name]}" for name, key in KEYS.items()),
        "SHARPZO_API_KEYS_FILE": str(keys_file),
        "SHARPZO_LEDGER": str(ledger),
        "SHARPZO_RATE_LIMIT_RPS": "5",
        "SHARPZO_RATE_LIMIT_BURST": "20",
    }
    with EmbeddedServer(**TINY, env=env) as running:
        yield running


def client(server: EmbeddedServer, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=60)


def upload(http: httpx.Client, seed: int = 0, n: int = 3) -> str:
    response = http.post("/v1/image-sets", json={"images": [b64(encoded_image(seed + i)) for i in range(n)]})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def logits_body(set_id: str, n_cand: int) -> dict:
    prompts = np.random.default_rng(n_cand).normal(0, 0.02, (n_cand, 2, WIDTH)).astype(np.float32)
    return {"image_set": set_id, "class_names": ["cat", "dog"], "prompts": Tensor.from_numpy(prompts).model_dump()}


def test_health_is_open_and_the_rest_needs_a_key(server) -> None:
    with client(server, None) as anonymous:
        assert anonymous.get("/v1/health").status_code == 200
        assert anonymous.get("/metrics").status_code == 200
        for response in (
            anonymous.get("/v1/model"),
            anonymous.get("/v1/usage"),
            anonymous.post("/v1/logits", json=logits_body("x", 1)),
            anonymous.get("/v1/model", headers={"Authorization": f"Basic {KEYS['alice']}"}),
        ):
            assert response.status_code == 401, response.text
            assert response.json()["detail"].startswith("Authorization: missing")
            assert response.json()["code"] == "unauthorized"
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert "X-Queries-Used" not in response.headers
    with client(server, "not-a-key-0123456789") as wrong:
        response = wrong.get("/v1/model")
        assert response.status_code == 401 and "unknown" in response.json()["detail"]


def test_keys_from_the_environment_and_a_file(server) -> None:
    for key, quota in ((KEYS["alice"], 1000), (CAROL, 50)):
        with client(server, key) as http:
            assert http.get("/v1/model").status_code == 200
            usage = http.get("/v1/usage").json()
            assert usage == {"queries": 0, "image_evals": 0, "requests": 0, "image_forwards": 0, "quota": quota}


def test_image_set_belongs_to_its_uploader(server) -> None:
    with client(server, KEYS["alice"]) as alice, client(server, KEYS["bob"]) as bob:
        set_id = upload(alice, seed=10)
        assert alice.get(f"/v1/image-sets/{set_id}").json() == {"id": set_id, "count": 3, "stem_spread": None}
        assert alice.post("/v1/logits", json=logits_body(set_id, 1)).status_code == 200
        missing = bob.get(f"/v1/image-sets/{set_id}")
        assert missing.status_code == 404
        assert missing.json()["detail"] == f"image_set: no image set {set_id!r} on this server"
        stolen = bob.post("/v1/logits", json=logits_body(set_id, 1))
        assert stolen.status_code == 404 and stolen.json()["detail"].startswith("image_set:")
        assert stolen.json()["code"] == missing.json()["code"] == "unknown_image_set"
        own = upload(bob, seed=10)  # the same images make bob a set of his own
        assert own != set_id and bob.get(f"/v1/image-sets/{own}").status_code == 200
        assert bob.get("/v1/usage").json()["queries"] == 0


def test_quota_refuses_a_request_that_does_not_fit_before_any_work(server) -> None:
    with client(server, KEYS["small"]) as http:
        set_id = upload(http, seed=20)
        first = http.post("/v1/logits", json=logits_body(set_id, 3))
        assert first.status_code == 200
        quota = (first.headers["X-Queries-Used"], first.headers["X-Queries-Remaining"], first.headers["X-Quota"])
        assert quota == ("3", "2", "5")
        refused = http.post("/v1/logits", json=logits_body(set_id, 3))
        assert refused.status_code == 429 and refused.json()["detail"].startswith("quota:")
        assert refused.json()["code"] == "quota_exhausted"
        assert int(refused.headers["Retry-After"]) > 0
        assert refused.headers["X-Queries-Remaining"] == "2"
        assert http.get("/v1/usage").json() == {
            "queries": 3, "image_evals": 9, "requests": 1, "image_forwards": 0, "quota": 5
        }
        last = http.post("/v1/logits", json=logits_body(set_id, 2))
        assert last.status_code == 200 and last.headers["X-Queries-Remaining"] == "0"
        assert http.post("/v1/logits", json=logits_body(set_id, 1)).status_code == 429


def test_usage_headers_on_every_response_and_usage_endpoint(server) -> None:
    with client(server, CAROL) as http:
        before = http.get("/v1/usage").json()
        set_id = upload(http, seed=30, n=4)
        scored = http.post("/v1/logits", json=logits_body(set_id, 2))
        assert scored.json()["usage"] == {"queries": 2, "image_evals": 8, "requests": 1, "image_forwards": 0}
        after = http.get("/v1/usage")
        assert after.json() == {**before, "queries": before["queries"] + 2, "image_evals": before["image_evals"] + 8,
                                "requests": before["requests"] + 1}
        bad = http.post("/v1/logits", json={**logits_body(set_id, 1), "class_names": []})
        for response in (scored, after, bad, http.get("/v1/model"), http.get("/v1/image-sets/nope")):
            assert response.headers["X-Quota"] == "50", response.url
            assert int(response.headers["X-Queries-Used"]) + int(response.headers["X-Queries-Remaining"]) == 50


def test_rate_limit_answers_429_with_retry_after(server) -> None:
    with client(server, KEYS["flood"]) as flood, client(server, KEYS["bob"]) as bob:
        statuses = [flood.get("/v1/usage") for _ in range(40)]
        limited = [r for r in statuses if r.status_code == 429]
        assert limited and limited[0].json()["detail"].startswith("rate:")
        assert limited[0].json()["code"] == "rate_limited"
        assert int(limited[0].headers["Retry-After"]) >= 1 and limited[0].headers["X-Queries-Used"] == "0"
        assert bob.get("/v1/usage").status_code == 200  # buckets are per key


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=1000.0, burst=3)
    assert [bucket.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = bucket.take("a")
    assert 0 < wait <= 0.001
    assert bucket.take("b") == 0.0


def keys_cli(ledger: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sharpzo.server.keys", *args, "--ledger", str(ledger)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_keys_cli_add_list_usage_revoke(server, ledger) -> None:
    added = keys_cli(ledger, "add", "dave", "--quota", "7")
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip()
    assert key.startswith("szk_") and "\n" not in key
    with client(server, key) as dave:
        response = dave.get("/v1/usage")
        assert response.status_code == 200 and response.json()["quota"] == 7 and response.headers["X-Quota"] == "7"
        set_id = upload(dave, seed=40)
        assert dave.post("/v1/logits", json=logits_body(set_id, 2)).status_code == 200
        listing = keys_cli(ledger, "list")
        assert listing.returncode == 0
        assert any(line.split()[:3] == ["dave", "7", "2"] for line in listing.stdout.splitlines())
        assert json.loads(keys_cli(ledger, "usage", "dave").stdout) == {
            "name": "dave", "queries": 2, "image_evals": 6, "requests": 1, "image_forwards": 0, "quota": 7
        }
        assert keys_cli(ledger, "add", "dave", "--quota", "1").returncode == 1  # names are never reused
        assert keys_cli(ledger, "revoke", "dave").returncode == 0
        assert dave.get("/v1/usage").status_code == 401
        assert keys_cli(ledger, "revoke", "dave").returncode == 1
    stored = b"".join(path.read_bytes() for path in ledger.parent.glob(f"{ledger.name}*"))
    assert hash_key(key).encode() in stored
    for plain in (key, *KEYS.values(), CAROL):
        assert plain.encode() not in stored


def test_key_configuration_is_checked() -> None:
    specs = configured_keys("a:0123456789abcdef:1, b:0123456789abcdeg:2", None).values()
    assert [spec.name for spec in specs] == ["a", "b"]
    for bad in ("a:short:1", "a:0123456789abcdef", "a:0123456789abcdef:x", "anonymous:0123456789abcdef:1",
                "a:0123456789abcdef:1,a:0123456789abcdeg:1", "bad name:0123456789abcdef:1"):
        with pytest.raises(KeyConfigError):
            configured_keys(bad, None)


def test_metrics_and_access_log(server) -> None:
    with client(server, KEYS["alice"]) as http:
        set_id = upload(http, seed=50)
        assert http.post("/v1/logits", json=logits_body(set_id, 4)).status_code == 200
        text = http.get("/metrics").text
    lines = [line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#")]
    samples = {name: float(value) for name, value in lines}
    assert samples['sharpzo_http_requests_total{method="POST",route="/v1/logits",status="200"}'] >= 1
    assert samples['sharpzo_http_requests_total{method="GET",route="/v1/model",status="401"}'] >= 1
    assert samples['sharpzo_queries_total{key="alice"}'] >= 4
    assert samples["sharpzo_batch_candidates_count"] >= 1 and samples["sharpzo_batch_candidates_sum"] >= 4
    assert samples["sharpzo_queue_wait_seconds_count"] >= 1
    assert samples['sharpzo_http_request_duration_seconds_count{method="POST",route="/v1/logits"}'] >= 1
    lines = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{")]
    scored = [
        line for line in lines if line["path"] == "/v1/logits" and line["key"] == "alice" and line["queries"] == 4
    ]
    assert scored and scored[-1]["status"] == 200 and scored[-1]["method"] == "POST" and scored[-1]["latency_ms"] > 0


def test_plain_serve_writes_one_access_line_a_request(tmp_path: Path) -> None:
    """`sharpzo serve` at its default log level, info (embedded servers run at warning): the app's JSON line, not
    uvicorn's plain one beside it."""
    log_path = tmp_path / "serve.log"
    with EmbeddedServer(**TINY, env={"SHARPZO_LEDGER": str(tmp_path / "ledger.sqlite3")}, log_path=log_path,
                        log_level="info") as running:
        assert httpx.get(f"{running.url}/v1/model", timeout=30).status_code == 200
    mentions = [line for line in log_path.read_text().splitlines() if "/v1/model" in line]
    assert len(mentions) == 1 and json.loads(mentions[0])["status"] == 200, mentions


def test_auth_off_charges_the_anonymous_account(tiny_server) -> None:
    with httpx.Client(base_url=tiny_server.url, timeout=60) as http:
        before = http.get("/v1/usage").json()
        assert before["quota"] is None
        set_id = upload(http, seed=60)
        response = http.post("/v1/logits", json=logits_body(set_id, 3))
        assert response.status_code == 200 and "X-Quota" not in response.headers
        # exact: the session's server has a ledger of its own (conftest's private home), and tests run one at a time
        assert int(response.headers["X-Queries-Used"]) == before["queries"] + 3
        assert http.get("/v1/usage").json() == {
            **before, "queries": before["queries"] + 3, "image_evals": before["image_evals"] + 9,
            "requests": before["requests"] + 1,
        }


def test_bodies_the_fuzzer_broke_are_client_errors_or_scored(server) -> None:
    with client(server, KEYS["bob"]) as http:
        headers = {"content-type": "application/json", "Idempotency-Key": "raw-1"}
        response = http.post("/v1/logits", content=b"\xff\xfe\x00\xd8garbage", headers=headers)
        assert response.status_code == 422 and response.json()["detail"].startswith("body:")
        set_id = upload(http, seed=70)
        # a lone surrogate is not UTF-8: the request's fingerprint must come from its bytes, not re-encoded text
        raw = json.dumps({**logits_body(set_id, 1), "class_names": ["\ud800"]}).encode()
        assert http.post("/v1/logits", content=raw, headers={**headers, "Idempotency-Key": "raw-2"}).status_code == 200
