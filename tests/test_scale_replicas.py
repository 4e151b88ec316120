"""Two replicas of the app (two `create_app` instances, each with its own model and memory) sharing one real
PostgreSQL for the ledger and the image features: what one replica learns, the other serves; tenants stay apart."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from sharpzo.server.app import create_app
from sharpzo.server.settings import ServerSettings
from sharpzo.shared.tensors import Tensor

from .conftest import TINY, b64, encoded_image

KEYS = {"alice": "alice-key-0123456789abcdef", "bob": "bob-key-0123456789abcdef"}
WIDTH = 32  # sharpzo-tiny's token width
RATE_BURST = 4


def replica(ledger_url: str, **settings: object) -> TestClient:
    keys = ",".join(f"{name}:{key}:1000" for name, key in KEYS.items())
    return TestClient(create_app(ServerSettings(**TINY, auth="on", ledger=ledger_url, access_log=False, api_keys=keys,
                                                **settings)))


@pytest.fixture
def replicas(postgres_url: str, request: pytest.FixtureRequest) -> Iterator[tuple[TestClient, TestClient]]:
    settings = getattr(request, "param", {})
    with replica(postgres_url, **settings) as a, replica(postgres_url, **settings) as b:
        yield a, b


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def upload_body(seed: int = 0, n: int = 3) -> dict:
    return {"images": [b64(encoded_image(seed + i)) for i in range(n)]}


def score_body(set_id: str, n_cand: int = 2, labels: tuple[int, ...] = (0, 1, 0)) -> dict:
    prompts = np.random.default_rng(n_cand).normal(0, 0.02, (n_cand, 2, WIDTH)).astype(np.float32)
    return {"image_set": set_id, "class_names": ["cat", "dog"], "labels": list(labels),
            "prompts": Tensor.from_numpy(prompts).model_dump()}


def upload(http: TestClient, name: str, seed: int = 0, n: int = 3) -> str:
    response = http.post("/v1/image-sets", headers=auth(name), json=upload_body(seed, n))
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def score(
    http: TestClient, name: str, set_id: str, n_cand: int = 2, labels: tuple[int, ...] = (0, 1, 0)
) -> httpx.Response:
    return http.post("/v1/logits", headers=auth(name), json=score_body(set_id, n_cand, labels))


def test_a_set_uploaded_on_one_replica_is_scored_on_the_other(replicas: tuple[TestClient, TestClient]) -> None:
    a, b = replicas
    set_id = upload(a, "alice")  # B has not got it in memory: it loads the features from the shared store
    info = b.get(f"/v1/image-sets/{set_id}", headers=auth("alice"))
    assert info.status_code == 200, info.text
    assert info.json() == {"id": set_id, "count": 3, "stem_spread": None}  # uploaded without visual: no stems
    scored_b, scored_a = score(b, "alice", set_id), score(a, "alice", set_id)
    assert scored_b.status_code == 200, scored_b.text
    assert scored_b.json()["loss"] == pytest.approx(scored_a.json()["loss"], rel=1e-5)
    assert b.post("/v1/image-sets/concat", headers=auth("alice"), json={"parts": [set_id, set_id]}).json()["count"] == 6


def test_another_tenant_can_neither_read_nor_probe_a_set_on_any_replica(
    replicas: tuple[TestClient, TestClient],
) -> None:
    a, b = replicas
    set_id = upload(a, "alice")
    missing = "0" * 32
    for http in (a, b):
        answers = [
            http.get(f"/v1/image-sets/{set_id}", headers=auth("bob")),
            score(http, "bob", set_id),
            http.post("/v1/image-sets/concat", headers=auth("bob"), json={"parts": [set_id]}),
        ]
        probes = [
            http.get(f"/v1/image-sets/{missing}", headers=auth("bob")),
            score(http, "bob", missing),
            http.post("/v1/image-sets/concat", headers=auth("bob"), json={"parts": [missing]}),
        ]
        for answer, probe in zip(answers, probes):
            assert answer.status_code == probe.status_code == 404, answer.text
            assert answer.json()["detail"].replace(set_id, missing) == probe.json()["detail"]
    # the same images from bob: his own set, on the features already encoded (content-keyed), charged to him
    bobs = upload(b, "bob")
    assert bobs != set_id
    assert score(a, "bob", bobs).status_code == 200
    usage = {name: a.get("/v1/usage", headers=auth(name)).json()["queries"] for name in KEYS}
    assert usage == {"alice": 0, "bob": 2}


def test_usage_agrees_with_the_ledger_whichever_replica_answers(replicas: tuple[TestClient, TestClient]) -> None:
    a, b = replicas
    set_id = upload(a, "alice")
    for http, n_cand in ((a, 2), (b, 3), (a, 1)):
        answer = score(http, "alice", set_id, n_cand)
        assert answer.status_code == 200, answer.text
    ledger = a.app.state.services.ledger.totals("alice", 1000)
    assert ledger.queries == 6
    for http in (a, b):
        assert http.get("/v1/usage", headers=auth("alice")).json()["queries"] == 6


@pytest.mark.parametrize("replicas", [{"rate_limit_rps": 0.01, "rate_limit_burst": RATE_BURST}], indirect=True)
def test_the_rate_limit_is_per_replica(replicas: tuple[TestClient, TestClient]) -> None:
    """Documented in README "Scaling out": each replica enforces the per-key rate on its own, so N replicas let a
    key through at up to N times SHARPZO_RATE_LIMIT_RPS."""
    a, b = replicas
    statuses_a = [a.get("/v1/usage", headers=auth("alice")).status_code for _ in range(RATE_BURST + 1)]
    assert statuses_a == [200] * RATE_BURST + [429]
    assert [b.get("/v1/usage", headers=auth("alice")).status_code for _ in range(RATE_BURST)] == [200] * RATE_BURST


def test_bad_input_is_a_4xx_on_either_replica(replicas: tuple[TestClient, TestClient]) -> None:
    a, b = replicas
    set_id = upload(a, "alice")
    for http in (a, b):
        assert http.post("/v1/image-sets", headers=auth("alice"), json={"images": ["not base64!"]}).status_code == 422
        assert http.get("/v1/image-sets/%27%3B--", headers=auth("alice")).status_code == 404
        answer = score(http, "alice", set_id, labels=(0, 1, 7))
        assert answer.status_code == 422, answer.text
