"""Every endpoint of a real server process over HTTP, and every bad-input case (4xx naming the field)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from sharpzo.data.identity import image_digest, image_set_key
from sharpzo.shared.tensors import Tensor

from .conftest import b64, encoded_image

CLASSES = ["granny smith apple", "pear", "orange"]


@pytest.fixture(scope="module")
def http(tiny_server) -> httpx.Client:
    with httpx.Client(base_url=tiny_server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def info(http) -> dict:
    return http.get("/v1/model").json()


@pytest.fixture(scope="module")
def image_set(http) -> dict:
    images = [b64(encoded_image(i, fmt=("PNG", "JPEG")[i % 2])) for i in range(6)]
    response = http.post("/v1/image-sets", json={"images": images})
    assert response.status_code == 200, response.text
    return response.json()


def prompts(info: dict, n: int = 2, m: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.02, size=(n, m, info["width"])).astype(np.float32)


def logits_body(image_set: dict, p: np.ndarray, **extra) -> dict:
    return {"image_set": image_set["id"], "class_names": CLASSES, "prompts": Tensor.from_numpy(p).model_dump(), **extra}


def test_health_and_model(http, info) -> None:
    assert http.get("/v1/health").json() == {"status": "ok", "model": "sharpzo-tiny"}
    assert info["name"] == "sharpzo-tiny" and info["width"] == 32 and info["context_length"] == 24
    assert info["limits"]["max_candidates"] == 256


def test_token_embeddings(http, info) -> None:
    body = http.post("/v1/token-embeddings", json={"text": "a photo of a"}).json()
    emb = Tensor(**body["embeddings"]).to_numpy()
    assert emb.shape == (4, info["width"]) and len(body["tokens"]) == 4
    assert np.isfinite(emb).all() and np.abs(emb).sum() > 0


def test_image_set_is_content_addressed(http, image_set) -> None:
    assert image_set["count"] == 6
    images = [b64(encoded_image(i, fmt=("PNG", "JPEG")[i % 2])) for i in range(6)]
    again = http.post("/v1/image-sets", json={"images": images})
    assert again.json()["id"] == image_set["id"]
    assert http.get(f"/v1/image-sets/{image_set['id']}").json() == image_set
    augmented = http.post("/v1/image-sets", json={"images": [b64(encoded_image(0))], "augment": True}).json()
    assert augmented["id"] != image_set["id"]


def test_image_set_id_is_the_shared_key_of_its_image_bytes(http, info) -> None:
    raw = [encoded_image(40 + i, fmt=("PNG", "JPEG")[i % 2]) for i in range(3)]
    made = http.post("/v1/image-sets", json={"images": [b64(data) for data in raw], "seed": 5}).json()
    scope = f"{info['name']}|{info['pretrained']}|anonymous"  # the model, its weights and the owner (auth is off)
    assert made["id"] == image_set_key([image_digest(data) for data in raw], False, 5, scope)[:32]


def test_logits_shape_usage_and_scores(http, info, image_set) -> None:
    p = prompts(info, n=3)
    labels = [0, 1, 2, 0, 1, 2]
    response = http.post("/v1/logits", json=logits_body(image_set, p, labels=labels))
    assert response.status_code == 200, response.text
    body = response.json()
    logits = Tensor(**body["logits"]).to_numpy()
    assert logits.shape == (3, 6, 3)
    assert body["usage"] == {"queries": 3, "image_evals": 18, "requests": 1, "image_forwards": 0}
    # the server's cross-entropy and accuracy agree with its own logits
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    ce = -logp[:, np.arange(6), labels].mean(1)
    np.testing.assert_allclose(body["loss"], ce, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(body["accuracy"], (logits.argmax(-1) == labels).mean(1))
    assert np.abs(logits).max() <= info["logit_scale"] * 1.0001


def test_logits_indices_dtype_and_scores_only(http, info, image_set) -> None:
    p = prompts(info, n=2)
    full = Tensor(**http.post("/v1/logits", json=logits_body(image_set, p)).json()["logits"]).to_numpy()
    sub = http.post("/v1/logits", json=logits_body(image_set, p, indices=[4, 1], logits_dtype="float16")).json()
    half = Tensor(**sub["logits"])
    assert half.dtype == "float16" and sub["usage"]["image_evals"] == 4
    np.testing.assert_allclose(half.to_numpy(), full[:, [4, 1]], atol=2e-2)
    lean_body = logits_body(image_set, p, indices=[0, 1], labels=[0, 1], return_logits=False)
    lean = http.post("/v1/logits", json=lean_body).json()
    assert lean["logits"] is None and len(lean["loss"]) == 2


_CODES = {404: "unknown_image_set", 413: "body_too_large", 422: "invalid_request"}  # every 404 here is an image set


def _error(response: httpx.Response, status: int, field: str) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and field in detail, detail
    assert response.json()["code"] == _CODES[status], response.text


def wire(prompts: np.ndarray) -> dict:
    return Tensor.from_numpy(prompts.astype(np.float32)).model_dump()


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        (lambda b, i: b.update(prompts=wire(np.zeros((2, 4, i["width"] + 1)))), 422, "width"),
        (lambda b, i: b.update(prompts=wire(np.zeros((2, 0, i["width"])))), 422, "prompts"),
        (lambda b, i: b.update(prompts=wire(np.zeros((2, 30, i["width"])))), 422, "prompts"),
        (lambda b, i: b.update(prompts=wire(np.full((1, 4, i["width"]), np.nan))), 422, "NaN"),
        (lambda b, i: b.update(prompts=wire(np.full((1, 4, i["width"]), np.inf))), 422, "Inf"),
        (lambda b, i: b.update(prompts=wire(np.zeros((300, 4, i["width"])))), 422, "candidates"),
        (lambda b, i: b["prompts"].update(data="!!!!" + b["prompts"]["data"][4:]), 422, "base64"),
        (lambda b, i: b["prompts"].update(shape=[1, 2]), 422, "prompts"),
        (lambda b, i: b["prompts"].update(dtype="int64"), 422, "prompts.dtype"),
        (lambda b, i: b.update(image_set="nope"), 404, "image_set"),
        (lambda b, i: b.update(class_names=[]), 422, "class_names"),
        (lambda b, i: b.update(class_names=["pear", " "]), 422, "class_names[1]"),
        (lambda b, i: b.update(class_names=["pear", "fig", "pear"]), 422, "class_names[2]"),
        (lambda b, i: b.update(class_names=["pear", "word " * 30]), 422, "class_names[1]"),
        (lambda b, i: b.update(class_names=[f"c{k}" for k in range(51)]), 422, "class_names"),
        (lambda b, i: b.update(indices=[0, 99]), 422, "indices"),
        (lambda b, i: b.update(indices=[-1]), 422, "indices"),
        (lambda b, i: b.update(labels=[0, 1]), 422, "labels"),
        (lambda b, i: b.update(labels=[0, 1, 2, 0, 1, 7]), 422, "labels"),
        (lambda b, i: b.update(return_logits=False), 422, "return_logits"),
        (lambda b, i: b.update(logits_dtype="int8"), 422, "logits_dtype"),
        (lambda b, i: b.update(surprise=1), 422, "surprise"),
        (lambda b, i: b.pop("prompts"), 422, "prompts"),
    ],
)
def test_logits_bad_input(http, info, image_set, change, status, field) -> None:
    body = logits_body(image_set, prompts(info))
    change(body, info)
    _error(http.post("/v1/logits", json=body), status, field)


def test_body_not_json_and_too_large(http) -> None:
    _error(http.post("/v1/logits", content=b"{not json", headers={"content-type": "application/json"}), 422, "body")
    too_large = http.post("/v1/image-sets", content=b"x" * 2_000_001, headers={"content-type": "application/json"})
    _error(too_large, 413, "body")


def test_unknown_route_is_not_found(http) -> None:
    response = http.get("/v1/nothing-here")
    assert response.status_code == 404 and response.json()["code"] == "not_found"


def test_image_set_bad_input(http) -> None:
    good = b64(encoded_image(1))
    _error(http.post("/v1/image-sets", json={"images": []}), 422, "images")
    _error(http.post("/v1/image-sets", json={"images": [good, b64(b"not an image at all")]}), 422, "images[1]")
    _error(http.post("/v1/image-sets", json={"images": [good, "***"]}), 422, "images[1]")
    _error(http.post("/v1/image-sets", json={"images": [good] * 65}), 422, "images")
    big = b64(encoded_image(2, size=(600, 600)))  # 360k pixels > the 250k limit
    _error(http.post("/v1/image-sets", json={"images": [big]}), 422, "images[0]")
    _error(http.get("/v1/image-sets/unknown"), 404, "image_set")
    _error(http.post("/v1/token-embeddings", json={"text": ""}), 422, "text")
    _error(http.post("/v1/token-embeddings", json={"text": "word " * 40}), 422, "text")
