"""The micro-batcher: requests in flight are coalesced into text-tower batches (and image-tower batches for visual
prompts) on one model thread."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import accumulate

import torch

from .scoring import Scores, score
from .text import ClassSuffixes, PromptedTextEncoder
from .visual import PromptedImageEncoder, all_pairs


def _pending() -> asyncio.Future:
    return asyncio.get_running_loop().create_future()


@dataclass(frozen=True)
class VisualPrompts:
    prompts: torch.Tensor  # [P_v, m_v, W_v]; P_v and the text prompts' P are equal, or one of them is 1
    stems: torch.Tensor  # [N, L, W_v] of the job's images, on the model's device


@dataclass
class LogitsJob:
    prompts: torch.Tensor  # [P, m, W]
    suffixes: ClassSuffixes  # tokenised and checked by the handler, for these prompts' m
    images: torch.Tensor  # [N, E]
    labels: torch.Tensor | None
    keep_logits: bool
    visual: VisualPrompts | None = None
    future: asyncio.Future = field(default_factory=_pending, repr=False)
    enqueued: float = field(default_factory=time.perf_counter)
    queue_wait_s: float = 0.0  # set when its batch starts
    model_s: float = 0.0  # its batch's model time, set when the batch ends

    @property
    def candidates(self) -> int:
        return int(max(self.prompts.shape[0], 0 if self.visual is None else self.visual.prompts.shape[0]))

    @property
    def image_forwards(self) -> int:
        return 0 if self.visual is None else int(self.visual.prompts.shape[0] * self.images.shape[0])

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
    """Runs queued jobs on the model thread. With ``merge`` the jobs queued together run in one go: their prompts share
    one text-tower pass per (class list, m), and their visual prompts one image-tower pass per m_v. Without it (the
    default) each job runs alone, in the order it came, and is answered as soon as its own passes are done: its
    scores are bit for bit the same whatever is in flight beside it (a merged pass changes the last bits:
    BENCHMARKS.md, "How much does latency cost: tuning over a WAN"), and a client with several requests in flight
    does not wait for its neighbours' passes before each answer.

    With ``merge``, the batch window only opens when another request is queued or on its way (``arriving``): a
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
        visual: PromptedImageEncoder | None = None,
        merge: bool = False,
    ) -> None:
        self.encoder = encoder
        self.merge = merge  # False: each job runs alone (_collect), so its scores do not depend on its neighbours
        self.visual = visual
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
        if not self.merge or (self._queue.empty() and not self._arriving):
            return jobs, False
        total = jobs[0].candidates
        deadline = time.perf_counter() + self.window_s
        while total < self.max_candidates:
            remaining = deadline - time.perf_counter()
            try:
                if remaining <= 0:
                    job = self._queue.get_nowait()
                else:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
            jobs.append(job)
            total += job.candidates
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
                    candidates=sum(j.candidates for j in jobs),
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
        with torch.inference_mode():
            text = _grouped(jobs, _text_group, self._text_features)
            images = _grouped(jobs, _visual_group, self._image_features)
            outcomes: list[Scores | BaseException] = []
            for job, features, image_features in zip(jobs, text, images):
                if isinstance(features, BaseException):
                    outcomes.append(features)
                    continue
                if isinstance(image_features, BaseException):
                    outcomes.append(image_features)
                    continue
                try:
                    outcomes.append(score(features, image_features, self.logit_scale, job.labels, job.keep_logits))
                except Exception as exc:
                    outcomes.append(exc)
        if self.encoder.device.type == "cuda":  # so that the batch's time is its kernels' time, not their launch
            torch.cuda.synchronize(self.encoder.device)
        return outcomes

    def _text_features(self, jobs: list[LogitsJob]) -> list[torch.Tensor]:
        """[P, C, E] per job, of jobs with one class list and m."""
        prompts = torch.cat([job.prompts for job in jobs]).to(self.encoder.device)
        features = self.encoder.encode(prompts, jobs[0].suffixes)
        return list(features.split([job.prompts.shape[0] for job in jobs]))

    def _image_features(self, jobs: list[LogitsJob]) -> list[torch.Tensor]:
        """[P_v, N, E] per job, of jobs with one m_v; a text-only job's [N, E] as it came."""
        visual = [job.visual for job in jobs if job.visual is not None]
        if len(visual) < len(jobs) or self.visual is None:
            return [job.images for job in jobs]
        device = visual[0].stems.device
        pairs = [all_pairs(v.prompts.shape[0], v.stems.shape[0], device) for v in visual]
        prompts_before = accumulate((v.prompts.shape[0] for v in visual), initial=0)
        images_before = accumulate((v.stems.shape[0] for v in visual), initial=0)
        rows = self.visual.encode(
            torch.cat([v.prompts for v in visual]).to(device),
            torch.cat([v.stems for v in visual]),
            torch.cat([p + before for (p, _), before in zip(pairs, prompts_before)]),
            torch.cat([n + before for (_, n), before in zip(pairs, images_before)]),
        )
        return [
            part.view(v.prompts.shape[0], v.stems.shape[0], -1)
            for v, part in zip(visual, rows.split([job.image_forwards for job in jobs]))
        ]


def _text_group(job: LogitsJob) -> tuple[tuple[str, ...], int]:
    return job.group


def _visual_group(job: LogitsJob) -> int | None:
    return None if job.visual is None else int(job.visual.prompts.shape[1])


def _grouped(
    jobs: list[LogitsJob], key: Callable[[LogitsJob], Hashable], run: Callable[[list[LogitsJob]], list[torch.Tensor]]
) -> list[torch.Tensor | BaseException]:
    """``run`` once per group of jobs with one ``key``, its outputs in job order; a group that raises fails its own
    jobs, not the others."""
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, job in enumerate(jobs):
        groups[key(job)].append(i)
    results: list[torch.Tensor | BaseException] = [RuntimeError("not computed")] * len(jobs)
    for members in groups.values():
        try:
            outputs: list[torch.Tensor | BaseException] = list(run([jobs[i] for i in members]))
        except Exception as exc:
            outputs = [exc] * len(members)
        for i, output in zip(members, outputs):
            results[i] = output
    return results
