"""The micro-batcher: requests in flight are coalesced into text-tower batches on one model thread."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch

from .scoring import Scores, score
from .text import ClassSuffixes, PromptedTextEncoder


def _pending() -> asyncio.Future:
    return asyncio.get_running_loop().create_future()


@dataclass
class LogitsJob:
    prompts: torch.Tensor  # [P, m, W]
    suffixes: ClassSuffixes  # tokenised and checked by the handler, for these prompts' m
    images: torch.Tensor  # [N, E]
    labels: torch.Tensor | None
    keep_logits: bool
    future: asyncio.Future = field(default_factory=_pending, repr=False)
    enqueued: float = field(default_factory=time.perf_counter)
    queue_wait_s: float = 0.0  # set when its batch starts
    model_s: float = 0.0  # its batch's model time, set when the batch ends

    @property
    def candidates(self) -> int:
        return int(self.prompts.shape[0])

    @property
    def group(self) -> tuple[tuple[str, ...], int]:
        return self.suffixes.names, self.suffixes.m


@dataclass(frozen=True)
class BatchStats:
    candidates: int
    jobs: int
    queue_wait_s: list[float]
    seconds: float
    window_opened: bool  # whether the batcher waited for more requests before it ran


class MicroBatcher:
    """Merges the jobs that are queued together into one text-tower run per (class list, m).

    The batch window only opens when another request is queued or on its way (``arriving``): a
    sequential client, one request at a time, never waits it out.
    """

    def __init__(
        self,
        encoder: PromptedTextEncoder,
        logit_scale: float,
        executor: Executor,
        window_s: float,
        max_candidates: int,
        on_batch: Callable[[BatchStats], None] = lambda stats: None,
    ) -> None:
        self.encoder = encoder
        self.logit_scale = logit_scale
        self.executor = executor
        self.window_s = window_s
        self.max_candidates = max_candidates
        self.on_batch = on_batch
        self._queue: asyncio.Queue[LogitsJob] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._arriving = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    @contextmanager
    def arriving(self) -> Iterator[None]:
        """Around a request's decoding and validation: while one is under way, a batch waits the window for it."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1

    async def submit(self, job: LogitsJob) -> Scores:
        self._queue.put_nowait(job)
        return await job.future

    async def _collect(self) -> tuple[list[LogitsJob], bool]:
        """The next batch, and whether the window was opened for it."""
        jobs = [await self._queue.get()]
        if self._queue.empty() and not self._arriving:
            return jobs, False
        total = jobs[0].prompts.shape[0]
        deadline = time.perf_counter() + self.window_s
        while total < self.max_candidates:
            remaining = deadline - time.perf_counter()
            try:
                job = self._queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(self._queue.get(), remaining)
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
            jobs.append(job)
            total += job.prompts.shape[0]
        return jobs, True

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs, window_opened = await self._collect()
            started = time.perf_counter()
            outcomes = await loop.run_in_executor(self.executor, self._compute, jobs)
            seconds = time.perf_counter() - started
            for job in jobs:
                job.queue_wait_s, job.model_s = started - job.enqueued, seconds
            self.on_batch(
                BatchStats(
                    candidates=sum(j.prompts.shape[0] for j in jobs),
                    jobs=len(jobs),
                    queue_wait_s=[j.queue_wait_s for j in jobs],
                    seconds=seconds,
                    window_opened=window_opened,
                )
            )
            for job, outcome in zip(jobs, outcomes):
                if job.future.done():  # the client went away
                    continue
                if isinstance(outcome, BaseException):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(outcome)

    def _compute(self, jobs: list[LogitsJob]) -> list[Scores | BaseException]:
        groups: dict[tuple[tuple[str, ...], int], list[int]] = defaultdict(list)
        for i, job in enumerate(jobs):
            groups[job.group].append(i)
        outcomes: list[Scores | BaseException] = [RuntimeError("not computed")] * len(jobs)
        with torch.inference_mode():
            for members in groups.values():
                try:
                    prompts = torch.cat([jobs[i].prompts for i in members]).to(self.encoder.device)
                    features = self.encoder.encode(prompts, jobs[members[0]].suffixes)
                except Exception as exc:  # one bad group must not fail the others
                    for i in members:
                        outcomes[i] = exc
                    continue
                start = 0
                for i in members:
                    job = jobs[i]
                    count = job.prompts.shape[0]
                    try:
                        outcomes[i] = score(
                            features[start : start + count], job.images, self.logit_scale, job.labels, job.keep_logits
                        )
                    except Exception as exc:
                        outcomes[i] = exc
                    start += count
        if self.encoder.device.type == "cuda":  # so that the batch's time is its kernels' time, not their launch
            torch.cuda.synchronize(self.encoder.device)
        return outcomes
