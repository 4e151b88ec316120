"""Requests in flight from several clients are merged into model batches by the micro-batcher."""

from __future__ import annotations

import asyncio
import re

import httpx
import numpy as np

from sharpzo.shared.tensors import Tensor

from .conftest import b64, encoded_image


def batch_counters(url: str) -> tuple[float, float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    count = float(re.search(r"^sharpzo_batch_requests_count (\S+)$", text, re.M).group(1))
    total = float(re.search(r"^sharpzo_batch_requests_sum (\S+)$", text, re.M).group(1))
    return count, total


def test_concurrent_requests_share_model_batches(tiny_server) -> None:
    with httpx.Client(base_url=tiny_server.url, timeout=60) as http:
        width = http.get("/v1/model").json()["width"]
        set_id = http.post("/v1/image-sets", json={"images": [b64(encoded_image(900 + i)) for i in range(4)]}).json()["id"]
    rng = np.random.default_rng(0)
    bodies = [
        {"image_set": set_id, "class_names": ["cat", "dog", "cow"], "labels": [0, 1, 2, 0], "return_logits": False,
         "prompts": Tensor.from_numpy(rng.normal(0, 0.02, (64, 4, width)).astype(np.float32)).model_dump()}
        for _ in range(16)
    ]

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=tiny_server.url, timeout=120) as client:
            return await asyncio.gather(*(client.post("/v1/logits", json=body) for body in bodies))

    batches_before, jobs_before = batch_counters(tiny_server.url)
    responses = asyncio.run(fire())
    batches_after, jobs_after = batch_counters(tiny_server.url)
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    assert jobs_after - jobs_before == len(bodies)
    assert batches_after - batches_before < len(bodies)  # some batch carried more than one request
    # merged or not, each request gets its own candidates' scores
    single = httpx.post(f"{tiny_server.url}/v1/logits", json=bodies[3], timeout=60).json()
    np.testing.assert_allclose(responses[3].json()["loss"], single["loss"], rtol=1e-5)
