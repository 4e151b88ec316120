"""Large splits go up in chunks, sent concurrently, and are joined on the server; a re-run reuses the server's set."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np

from sharpzo.client.api import ApiClient
from sharpzo.client.image_sets import UploadIndex, chunked, upload_split
from sharpzo.data.base import LabeledImages
from sharpzo.data.identity import image_set_key

from .conftest import b64, encoded_image

CLASSES = ["apple", "pear"]


def test_chunking_respects_byte_and_count_limits() -> None:
    images = [b"x" * 300] * 10
    chunks = chunked(images, max_bytes=1000, max_images=4)
    assert [len(c) for c in chunks] == [2, 2, 2, 2, 2]
    assert chunked(images, max_bytes=10_000, max_images=4)[0] == images[:4]
    assert chunked([b"x" * 5000], max_bytes=1000, max_images=4) == [[b"x" * 5000]]


def test_runs_sharing_the_upload_index_can_write_it_at_once(tmp_path) -> None:
    """Several tuning processes share one index file: concurrent writes must not trip over each other's
    temporary file (they did with one fixed temporary name: a FileNotFoundError ended a run)."""
    index = UploadIndex(tmp_path / "image-sets.json")

    def writer(n: int) -> None:
        for i in range(150):
            index.put(f"key-{n}-{i}", f"set-{n}-{i}")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(writer, range(4)))
    assert json.loads((tmp_path / "image-sets.json").read_text())  # readable, whatever entries won
    assert [p.name for p in tmp_path.iterdir()] == ["image-sets.json"]  # no temporary file left behind


def test_chunked_upload_equals_single_upload(tiny_server, tmp_path) -> None:
    # noise PNGs of about 120 kB: the fixture's 2 MB body limit forces several chunks
    images = LabeledImages([encoded_image(700 + i, size=(200, 200)) for i in range(20)], np.arange(20) % 2, CLASSES)

    async def run() -> tuple[str, str, np.ndarray, np.ndarray]:
        index = UploadIndex(tmp_path / "sets.json")
        async with ApiClient(tiny_server.url) as api:
            assert len(chunked(images.images, (await api.model_info()).limits.max_body_bytes // 2)) > 1
            joined = await upload_split(api, images, index=index)
            again = await upload_split(api, images, index=index)
            width = (await api.model_info()).width
            prompts = np.random.default_rng(0).normal(0, 0.02, (2, 4, width)).astype(np.float32)
            whole = await api.score(joined.set_id, CLASSES, prompts, labels=joined.labels)
            halves = [await api.score(joined.set_id, CLASSES, prompts, labels=joined.labels[idx], indices=list(idx))
                      for idx in (range(0, 10), range(10, 20))]
            return joined.set_id, again.set_id, whole.loss, np.mean([h.loss for h in halves], axis=0)

    first, second, whole, halves = asyncio.run(run())
    assert first == second
    # the index keys the upload as the server keys its sets: by the one image-set key function
    key = image_set_key(images.hashes(), False, 0, scope=tiny_server.url)
    assert json.loads((tmp_path / "sets.json").read_text()) == {key: first}
    np.testing.assert_allclose(whole, halves, rtol=1e-5)


class OverlapTransport(httpx.AsyncBaseTransport):
    """The network, counting image-set uploads in flight; the first waits (boundedly) until a second is under way,
    so uploads sent one after the other show 1 and uploads sent together show 2 or more, however fast the server."""

    def __init__(self) -> None:
        self._network = httpx.AsyncHTTPTransport()
        self.in_flight = 0
        self.most = 0
        self._second = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        upload = request.method == "POST" and request.url.path == "/v1/image-sets"
        if not upload:
            return await self._network.handle_async_request(request)
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        if self.in_flight >= 2:
            self._second.set()
        try:
            if self.most == 1:
                await asyncio.wait([asyncio.ensure_future(self._second.wait())], timeout=10)
            return await self._network.handle_async_request(request)
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        await self._network.aclose()


def test_chunks_are_sent_concurrently_into_the_same_set(tiny_server) -> None:
    images = LabeledImages([encoded_image(900 + i, size=(200, 200)) for i in range(20)], np.arange(20) % 2, CLASSES)

    async def run() -> tuple[int, str, str]:
        transport = OverlapTransport()
        async with ApiClient(tiny_server.url, transport=transport) as api:
            chunks = chunked(images.images, (await api.model_info()).limits.max_body_bytes // 2)
            assert len(chunks) > 1
            together = (await upload_split(api, images)).set_id
        async with ApiClient(tiny_server.url) as api:  # the same chunks, one after the other
            parts = [(await api.create_image_set(chunk)).id for chunk in chunks]
            one_by_one = (await api.concat_image_sets(parts)).id
        return transport.most, together, one_by_one

    most, together, one_by_one = asyncio.run(run())
    assert most > 1
    assert together == one_by_one


def test_concat_errors_name_the_part(tiny_server) -> None:
    with httpx.Client(base_url=tiny_server.url, timeout=60) as http:
        part = http.post("/v1/image-sets", json={"images": [b64(encoded_image(1))] * 40}).json()["id"]
        missing = http.post("/v1/image-sets/concat", json={"parts": [part, "nope"]})
        assert missing.status_code == 404 and "parts[1]" in missing.json()["detail"]
        too_many = http.post("/v1/image-sets/concat", json={"parts": [part, part]})
        assert too_many.status_code == 422 and "parts" in too_many.json()["detail"]
        assert http.post("/v1/image-sets/concat", json={"parts": []}).status_code == 422
