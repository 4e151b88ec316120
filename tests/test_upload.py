"""Large splits go up in chunks and are joined on the server; a re-run reuses the server's set."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np

from sharpzo.client.api import ApiClient
from sharpzo.data.base import LabeledImages
from sharpzo.client.image_sets import ImageSetCache, chunked, upload_split

from .conftest import b64, encoded_image

CLASSES = ["apple", "pear"]


def test_chunking_respects_byte_and_count_limits() -> None:
    images = [b"x" * 300] * 10
    chunks = chunked(images, max_bytes=1000, max_images=4)
    assert [len(c) for c in chunks] == [2, 2, 2, 2, 2]
    assert chunked(images, max_bytes=10_000, max_images=4)[0] == images[:4]
    assert chunked([b"x" * 5000], max_bytes=1000, max_images=4) == [[b"x" * 5000]]


def test_chunked_upload_equals_single_upload(tiny_server, tmp_path) -> None:
    # noise PNGs of about 120 kB: the fixture's 2 MB body limit forces several chunks
    images = LabeledImages([encoded_image(700 + i, size=(200, 200)) for i in range(20)], np.arange(20) % 2, CLASSES)

    async def run() -> tuple[str, str, np.ndarray, np.ndarray]:
        cache = ImageSetCache(tmp_path / "sets.json")
        async with ApiClient(tiny_server.url) as api:
            assert len(chunked(images.images, (await api.model_info()).limits.max_body_bytes // 2)) > 1
            joined = await upload_split(api, images, cache=cache)
            again = await upload_split(api, images, cache=cache)
            width = (await api.model_info()).width
            prompts = np.random.default_rng(0).normal(0, 0.02, (2, 4, width)).astype(np.float32)
            whole = await api.score(joined.set_id, CLASSES, prompts, labels=joined.labels)
            halves = [await api.score(joined.set_id, CLASSES, prompts, labels=joined.labels[idx], indices=list(idx))
                      for idx in (range(0, 10), range(10, 20))]
            return joined.set_id, again.set_id, whole.loss, np.mean([h.loss for h in halves], axis=0)

    first, second, whole, halves = asyncio.run(run())
    assert first == second
    np.testing.assert_allclose(whole, halves, rtol=1e-5)


def test_concat_errors_name_the_part(tiny_server) -> None:
    with httpx.Client(base_url=tiny_server.url, timeout=60) as http:
        part = http.post("/v1/image-sets", json={"images": [b64(encoded_image(1))] * 40}).json()["id"]
        missing = http.post("/v1/image-sets/concat", json={"parts": [part, "nope"]})
        assert missing.status_code == 404 and "parts[1]" in missing.json()["detail"]
        too_many = http.post("/v1/image-sets/concat", json={"parts": [part, part]})
        assert too_many.status_code == 422 and "parts" in too_many.json()["detail"]
        assert http.post("/v1/image-sets/concat", json={"parts": []}).status_code == 422
