"""The micro-batcher: requests in flight are coalesced into text-tower batches on one model thread."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Callable

import torch

from .scoring import Scores, score
from .text import PromptedTextEncoder


@dataclass
class LogitsJob:
    prompts: torch.Tensor  # [P, m, W]
    class_names: tuple[str, ...]
    images: torch.Tensor  # [N, E]
    labels: torch.Tensor | None
    keep_logits: bool
    future: asyncio.Future = field(repr=False)
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def group(self) -> tuple[tuple[str, ...], int]:
        return self.class_names, int(self.prompts.shape[1])


@dataclass(frozen=True)
class BatchStats:
    candidates: int
    jobs: int
    queue_wait_s: list[float]
    seconds: float


class MicroBatcher:
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

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def submit(self, job: LogitsJob) -> Scores:
        await self._queue.put(job)
        return await job.future

    async def _collect(self) -> list[LogitsJob]:
        jobs = [await self._queue.get()]
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
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            started = time.perf_counter()
            outcomes = await loop.run_in_executor(self.executor, self._compute, jobs)
            self.on_batch(
                BatchStats(
                    candidates=sum(j.prompts.shape[0] for j in jobs),
                    jobs=len(jobs),
                    queue_wait_s=[started - j.enqueued for j in jobs],
                    seconds=time.perf_counter() - started,
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
            for (names, m), members in groups.items():
                try:
                    prompts = torch.cat([jobs[i].prompts for i in members]).to(self.encoder.device)
                    features = self.encoder.encode(prompts, self.encoder.suffixes(list(names), m))
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
        return outcomes
