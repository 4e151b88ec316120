"""The micro-batcher: by default each request runs alone and is answered as soon as its own passes are done; with
merging, requests in flight together share model batches, and a lone request is not held back for a batch window."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import torch

from sharpzo.server.batcher import BatchStats, LogitsJob, MicroBatcher
from sharpzo.server.text import ClassSuffixes
from sharpzo.shared.tensors import Tensor

from .conftest import b64, encoded_image


def batch_counters(url: str) -> tuple[float, float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    count = float(re.search(r"^sharpzo_batch_requests_count (\S+)$", text, re.M).group(1))
    total = float(re.search(r"^sharpzo_batch_requests_sum (\S+)$", text, re.M).group(1))
    return count, total


def test_concurrent_requests_run_alone_and_get_their_own_scores(tiny_server) -> None:
    with httpx.Client(base_url=tiny_server.url, timeout=60) as http:
        width = http.get("/v1/model").json()["width"]
        images = [b64(encoded_image(900 + i)) for i in range(4)]
        set_id = http.post("/v1/image-sets", json={"images": images}).json()["id"]
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
    assert batches_after - batches_before == len(bodies)  # the server does not merge by default
    single = httpx.post(f"{tiny_server.url}/v1/logits", json=bodies[3], timeout=60).json()
    assert responses[3].json()["loss"] == single["loss"]  # bit for bit, alone or beside 15 others


class _FakeEncoder:
    """Text features from the prompts alone: enough for the batcher, no model needed."""

    device = torch.device("cpu")

    def encode(self, prompts: torch.Tensor, suffixes: ClassSuffixes) -> torch.Tensor:
        features = prompts.mean(1, keepdim=True).expand(-1, len(suffixes.names), -1)
        return torch.nn.functional.normalize(features, dim=-1)


def _suffixes() -> ClassSuffixes:
    return ClassSuffixes(("cat", "dog"), 2, torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, dtype=torch.long), ())


def _job(seed: int) -> LogitsJob:
    prompts = torch.randn(2, 2, 8, generator=torch.Generator().manual_seed(seed))
    return LogitsJob(prompts, _suffixes(), torch.nn.functional.normalize(torch.randn(3, 8), dim=-1), None, True)


def _batches(window_s: float, scenario, merge: bool = True, encoder: _FakeEncoder | None = None) -> list[BatchStats]:
    """Runs ``scenario(batcher)`` against a batcher whose window is far longer than any test would wait."""
    stats: list[BatchStats] = []

    async def run() -> None:
        batcher = MicroBatcher(encoder or _FakeEncoder(), 10.0, ThreadPoolExecutor(1), window_s, 4,
                               on_batch=stats.append, merge=merge)
        batcher.start()
        try:
            await asyncio.wait_for(scenario(batcher), 60)
        finally:
            await batcher.stop()

    asyncio.run(run())
    return stats


def test_an_idle_batcher_does_not_open_the_window() -> None:
    async def sequential(batcher: MicroBatcher) -> None:
        for seed in range(3):  # one request at a time, as a ZO-SGD client sends them
            await batcher.submit(_job(seed))

    stats = _batches(3600.0, sequential)
    assert [(s.jobs, s.window_opened) for s in stats] == [(1, False)] * 3


async def _until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until ``condition`` holds (bounded)."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


def test_the_window_opens_for_a_request_on_its_way() -> None:
    async def two_clients(batcher: MicroBatcher) -> None:
        with batcher.arriving():  # the second request is still being validated when the first is queued
            first = asyncio.ensure_future(batcher.submit(_job(0)))
            await _until(lambda: not batcher._queue.empty())  # submitted
            await _until(batcher._queue.empty)  # taken: the batcher decides on the window in the same step
        await asyncio.gather(first, batcher.submit(_job(1)))

    # the two jobs fill batch_max_candidates = 4, so the batch runs without waiting the window out
    stats = _batches(3600.0, two_clients)
    assert [(s.jobs, s.window_opened) for s in stats] == [(2, True)]


class _WatchingEncoder(_FakeEncoder):
    """Notes, at each pass, which of the watched requests were already answered."""

    def __init__(self) -> None:
        self.watched: list[asyncio.Future] = []
        self.answered_at_pass: list[list[bool]] = []

    def encode(self, prompts: torch.Tensor, suffixes: ClassSuffixes) -> torch.Tensor:
        self.answered_at_pass.append([future.done() for future in self.watched])
        return super().encode(prompts, suffixes)


def test_without_merging_each_request_is_answered_before_the_next_runs() -> None:
    encoder = _WatchingEncoder()

    async def in_flight_together(batcher: MicroBatcher) -> None:
        jobs = [_job(seed) for seed in range(3)]
        encoder.watched = [job.future for job in jobs]
        with batcher.arriving():  # all three queued before the batcher looks: merging would take them together
            waiting = [asyncio.ensure_future(batcher.submit(job)) for job in jobs]
            await _until(lambda: batcher._queue.qsize() == 3)
        await asyncio.gather(*waiting)

    stats = _batches(3600.0, in_flight_together, merge=False, encoder=encoder)
    assert [(s.jobs, s.window_opened) for s in stats] == [(1, False)] * 3
    assert encoder.answered_at_pass == [[False, False, False], [True, False, False], [True, True, False]]


def test_a_request_scores_the_same_bits_alone_or_beside_others_unless_merging() -> None:
    from sharpzo.server.model import load_model
    from sharpzo.server.settings import ServerSettings
    from sharpzo.server.text import PromptedTextEncoder

    loaded = load_model(ServerSettings())  # the stand-in: its text tower's last bits move with the batch's size
    encoder = PromptedTextEncoder(loaded, 4096, 8)
    names = [f"class {k}" for k in range(6)]
    generator = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(5, loaded.embed_dim, generator=generator), dim=-1)

    suffixes, labels = encoder.suffixes(names, 4), torch.tensor([0, 1, 2, 3, 4])
    lone, *neighbours = (torch.randn(count, 4, loaded.width, generator=generator) * 0.02 for count in (2, 30, 7))

    async def scored(merge: bool) -> tuple[torch.Tensor, torch.Tensor]:
        def job(prompts: torch.Tensor) -> LogitsJob:  # a job's future belongs to the running loop
            return LogitsJob(prompts, suffixes, images, labels, keep_logits=True)

        with ThreadPoolExecutor(max_workers=1) as executor:
            batcher = MicroBatcher(encoder, loaded.logit_scale, executor, 0.05, 4096, merge=merge)
            batcher.start()
            alone = await batcher.submit(job(lone))
            together = await asyncio.gather(*(batcher.submit(job(p)) for p in (neighbours[0], lone, neighbours[1])))
            await batcher.stop()
        return alone.logits, together[1].logits

    alone, beside = asyncio.run(scored(merge=False))
    assert torch.equal(alone, beside)
    alone, beside = asyncio.run(scored(merge=True))
    assert not torch.equal(alone, beside)  # what the default avoids: a merged pass moves the last bits
