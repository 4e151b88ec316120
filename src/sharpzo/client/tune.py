"""One tuning run: the optimiser's loop against the API, with logs, checkpoints, resume and the no-regret choice.

Run directory:
  config.json    the run's settings, the optimiser's options as it runs them (``optimizer``: every field, the
                 defaults included), its prompt space (``prompt_space``: the kind, the split of d between the
                 towers, their spreads; client/prompt_map.py), task (classes, image hashes per split, seed) and
                 the server's model
  log.jsonl      one line per optimiser iteration (queries, loss, accuracies, stage, wall time), one per
                 evaluation of a prompt on validation and test (stage zero-shot, monitor or final)
  checkpoint.pkl the optimiser (with its RNG and CMA state), what the server charged, the best prompt on
                 validation so far and the loop state
  prompt.npz     the returned context vectors (and ``visual_ctx``, the visual prompt tokens of a visual or joint
                 run that returns a tuned prompt), their w (``final_w``: the optimiser's last iterate), p0, the
                 prompt kind and the projection's seed and alpha
  result.json    the returned prompt's accuracies and which it is (``selected``), zero-shot's and the final
                 iterate's, what was spent (``budget``: ``RunSpend``), wall time

The returned prompt is the best on validation accuracy among the evaluated ones: the zero-shot
prompt (w = 0), every --eval-every point and the final iterate, the earlier on a tie, so a
run never returns a prompt that validates worse than zero-shot. Those evaluations overlap
training: a monitor point's validation and test requests go out together as a task while
the loop goes on, and land in the log when they arrive, marked with the tells and queries at
which the prompt was taken. At most one is in flight: the next point (and the early-stopping
decision) first waits for the previous one, so the trajectory, the stop and the choice are
the same whatever the network. A checkpoint saved while one is in flight records its point,
and a resume evaluates it again.

Training requests are in flight as the optimiser's pending asks are (optim/base.py, "Pipelining"):
every ask it has made is sent at once, and the results are told in the order the asks were made,
so a remote run waits one round trip per ``pipeline`` steps, not per step. A tell's log line and
checkpoint are written once the asks it let the loop make are on their way, not before them. The
checkpoint keeps the pending asks inside the optimiser, and a resume sends them again. An early
stop asks for nothing more but tells the asks already in flight (they are paid for). The first asks go out beside the
zero-shot's requests, so a remote run's start waits one round trip for both, unless an auto
choice must time those first: ``--pipeline auto`` or ``--directions auto`` waits for them and
then picks, once (latency.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sharpzo.data.base import FewShotTask
from sharpzo.shared.protocol import ModelInfo

from .api import ApiClient, ApiRequestError, Scored, raise_first
from .checkpoint import (
    Evaluated,
    Kind,
    LoopState,
    Meter,
    MonitorPoint,
    RunSpend,
    load_checkpoint,
    save_checkpoint,
    trim_log,
)
from .image_sets import RemoteSplit, UploadIndex, find_split, store_split
from .latency import needs_timing, resolve_options
from .optim import Ask, Evaluation, OptimizerConfig, build_optimizer
from .progress import TuneProgress
from .prompt_map import PromptMap, Prompts, needs_stems
from .settings import TuneSettings
from .sharpness import SharpnessProbe

log = logging.getLogger(__name__)

Selected = Literal["zero-shot", "final", "best-validation"]


@dataclass(frozen=True)
class TuneResult:
    run_dir: Path
    method: str
    selected: Selected  # which evaluated prompt is returned: see the module docstring
    zero_shot_test_accuracy: float
    zero_shot_val_accuracy: float
    test_accuracy: float  # of the returned prompt, as val_accuracy
    val_accuracy: float
    final_test_accuracy: float  # of the optimiser's last iterate
    final_val_accuracy: float
    selected_queries: int  # the method's queries when the returned prompt was taken
    queries: int
    budget: RunSpend
    wall_seconds: float
    w: np.ndarray = field(repr=False)
    ctx: np.ndarray = field(repr=False)
    sharpness: dict[str, dict[str, float]] = field(default_factory=dict)  # with --probe-sharpness: switch, final
    visual_ctx: np.ndarray | None = field(default=None, repr=False)  # [m_v, visual width]; None: no visual prompt

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(run_dir=str(self.run_dir))
        for name in ("w", "ctx", "visual_ctx"):
            out.pop(name)
        return out


def labelled(scored: Scored) -> Evaluation:
    """The losses and accuracies of a request that sent its labels."""
    if scored.loss is None or scored.accuracy is None:
        raise RuntimeError("the server sent no losses for a request that gave its labels")
    return Evaluation(scored.loss, scored.accuracy)


@dataclass(frozen=True)
class RemoteTask:
    class_names: list[str]
    train: RemoteSplit
    val: RemoteSplit
    test: RemoteSplit


SPLITS = ("train", "val", "test")


async def find_task(api: ApiClient, task: FewShotTask, settings: TuneSettings) -> list[RemoteSplit | None]:
    """The task's splits the server already holds, looked up together (one round trip rather than three, for a far
    server); None for a split it does not."""
    index, visual = UploadIndex(), needs_stems(settings.prompt)
    return raise_first(await asyncio.gather(
        *(find_split(api, getattr(task, name), _augmented(settings, name), settings.seed, index, visual)
          for name in SPLITS),
        return_exceptions=True,
    ))


async def upload_task(
    api: ApiClient, task: FewShotTask, settings: TuneSettings, progress: bool,
    found: list[RemoteSplit | None] | None = None,
) -> RemoteTask:
    """The task's splits on the server: the ones ``found`` (looked up here when not given), and the rest uploaded one
    at a time, each with its own progress bar."""
    known = await find_task(api, task, settings) if found is None else found
    index, visual = UploadIndex(), needs_stems(settings.prompt)
    splits = {}
    for name, split in zip(SPLITS, known):
        splits[name] = split or await store_split(
            api, getattr(task, name), _augmented(settings, name), settings.seed, index, name, progress, visual
        )
    return RemoteTask(task.class_names, **splits)


def _augmented(settings: TuneSettings, split: str) -> bool:
    return settings.augment and split == "train"


def require_visual(model: ModelInfo, settings: TuneSettings) -> None:
    """A visual or joint run needs a server whose image tower takes its visual tokens: refused before any upload."""
    took = model.limits.max_visual_tokens if model.visual_prompts else 0
    if needs_stems(settings.prompt) and settings.visual_tokens > took:
        raise ValueError(
            f"--prompt {settings.prompt} needs {settings.visual_tokens} visual prompt tokens; the server's model "
            f"{model.name} takes {took or 'none'} (GET /v1/model: visual_prompts, limits.max_visual_tokens)"
        )


def prompt_map(model: ModelInfo, settings: TuneSettings, p0: np.ndarray, remote: RemoteTask) -> PromptMap:
    """The run's prompt space from p0 (the initial text's token embeddings); a visual kind's unit is the training
    set's stem spread (client/prompt.py)."""
    s = settings
    return PromptMap.create(
        s.prompt, p0, s.dim, s.seed, s.alpha, visual_dim=s.visual_dim, visual_tokens=s.visual_tokens,
        visual_alpha=s.visual_alpha, visual_width=model.visual_width, visual_spread=remote.train.stem_spread,
    )


class Scorer:
    """A prepared session: the prompt space and the task's image sets on the server; every charge goes to ``meter``."""

    def __init__(self, api: ApiClient, task: FewShotTask, settings: TuneSettings, prompts: PromptMap,
                 remote: RemoteTask, meter: Meter, progress: bool) -> None:
        self.api, self.task, self.settings, self.progress = api, task, settings, progress
        self.prompts = prompts
        self.remote = remote
        self.meter = meter
        self._uploading = asyncio.Lock()

    @classmethod
    async def prepare(
        cls, api: ApiClient, task: FewShotTask, settings: TuneSettings, meter: Meter, progress: bool
    ) -> Scorer:
        # the model's description, the token embeddings and the known sets' lookups in one round trip
        model, p0, found = await asyncio.gather(
            api.model_info(), api.token_embeddings(settings.init_text), find_task(api, task, settings),
            return_exceptions=True,
        )
        if isinstance(model, BaseException):
            raise model
        require_visual(model, settings)  # before any upload, and before a lookup's own complaint
        if isinstance(p0, BaseException):
            raise p0
        if isinstance(found, BaseException):
            raise found
        remote = await upload_task(api, task, settings, progress, found)
        return cls(api, task, settings, prompt_map(model, settings, p0, remote), remote, meter, progress)

    async def evaluate(
        self, points: np.ndarray, split: str, on_written: Callable[[], None] | None = None
    ) -> Evaluation:
        """``on_written``: called once the request bodies are on their way (ApiClient.score)."""
        return await self.score(self.prompts.prompts(points), split, on_written)

    async def score(self, prompts: Prompts, split: str, on_written: Callable[[], None] | None = None) -> Evaluation:
        remote = self.remote
        try:
            return await self._score(prompts, split, on_written)
        except ApiRequestError as exc:
            if exc.status != 404:
                raise
            await self._upload_again(remote)
            return await self._score(prompts, split)

    async def _upload_again(self, gone: RemoteTask) -> None:
        """A restarted server that kept no image sets: upload them again, once for all the requests in flight that
        found ``gone`` missing; a request that failed on sets already replaced only retries."""
        async with self._uploading:
            if self.remote is gone:
                self.remote = await upload_task(self.api, self.task, self.settings, self.progress)

    async def _score(self, prompts: Prompts, split: str, on_written: Callable[[], None] | None = None) -> Evaluation:
        remote: RemoteSplit = getattr(self.remote, split)
        scored = await self.api.score(
            remote.set_id, self.remote.class_names, prompts.text, labels=remote.labels, on_charge=self.meter.add,
            visual_prompts=prompts.visual, on_written=on_written,
        )
        return labelled(scored)

    def prompt_of(self, point: MonitorPoint, kind: Kind) -> Prompts:
        """The prompt evaluated at ``point``: the zero-shot one for the zero-shot (client/prompt_map.py), else w's."""
        return self.prompts.zero_shot() if kind == "zero-shot" else self.prompts.prompts(point.w)

    async def score_point(self, point: MonitorPoint, kind: Kind) -> Evaluated:
        """Validation and test accuracy of ``point``'s prompt, both requests at once; charged as monitor queries."""
        prompts = self.prompt_of(point, kind)
        val, test = await asyncio.gather(self.score(prompts, "val"), self.score(prompts, "test"))
        return Evaluated(kind, point, float(val.accuracy[0]), float(test.accuracy[0]), float(val.loss[0]))

    async def sharpness(self, w: np.ndarray) -> dict[str, float]:
        """client/sharpness.py on the training set; not told to the optimiser, so charged as monitor queries."""
        return await SharpnessProbe().measure(w, lambda points: self.evaluate(points, "train"))


@dataclass
class Sent:
    """A training request in flight, and whether its body is on its way yet."""

    task: asyncio.Task[Evaluation]
    written: asyncio.Event

    @classmethod
    def of(cls, scorer: Scorer, ask: Ask) -> Sent:
        written = asyncio.Event()
        return cls(asyncio.ensure_future(scorer.evaluate(ask.points, ask.split, written.set)), written)

    async def out(self) -> None:
        """Until the request's body is on its way to the server, or the request has ended."""
        if self.written.is_set() or self.task.done():
            return
        waiter = asyncio.ensure_future(self.written.wait())
        await asyncio.wait([self.task, waiter], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()


class Monitoring:
    """The --eval-every evaluations of the current prompt: one in flight at a time, while training goes on."""

    def __init__(self, scorer: Scorer, state: LoopState, settings: TuneSettings,
                 record: Callable[[Evaluated], None]) -> None:
        self.scorer, self.state, self.settings, self.record = scorer, state, settings, record
        self._task: asyncio.Task[Evaluated] | None = None
        if state.pending is not None:  # in flight when the checkpoint was saved: evaluate it again
            self._start(state.pending)

    def _start(self, point: MonitorPoint) -> None:
        self.state.pending = point
        self._task = asyncio.create_task(self.scorer.score_point(point, "monitor"))

    def poll(self) -> None:
        """Record the evaluation in flight if it has landed."""
        if self._task is not None and self._task.done():
            self._land(self._task.result())

    async def settle(self) -> None:
        """Wait for the evaluation in flight, if any, and record it."""
        if self._task is not None:
            self._land(await self._task)

    def _land(self, evaluated: Evaluated) -> None:
        self._task = None
        self.state.pending = None
        self.state.stall = 0 if self.state.consider(evaluated) else self.state.stall + 1
        self.record(evaluated)

    async def after_tell(self) -> bool:
        """Start the evaluation of the current prompt when one is due; False when early stopping ends the run."""
        state, every = self.state, self.settings.eval_every
        if every == 0 or state.optimizer.queries < state.next_eval:
            return True
        await self.settle()  # the previous point first, so the stop is decided at the same tell on any network
        if self.settings.early_stop and state.stall >= self.settings.early_stop:
            return False
        self._start(state.point())
        state.next_eval += every
        return True

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()


class Tuner:
    def __init__(
        self, api: ApiClient, task: FewShotTask, settings: TuneSettings, run_dir: Path, show_progress: bool = True
    ) -> None:
        self.api = api
        self.task = task
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.show_progress = show_progress
        self._monitored: Evaluated | None = None  # the last monitor evaluation that landed in this process

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pkl"

    async def run(self, resume: bool = False) -> TuneResult:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resumed = self._resumed() if resume and self.checkpoint_path.exists() else None  # before any upload
        meter = resumed.meter if resumed is not None else Meter()
        scorer = await Scorer.prepare(self.api, self.task, self.settings, meter, self.show_progress)
        state, first = (resumed, []) if resumed is not None else await self._start(scorer)
        await self._train(scorer, state, first)
        final = await self._final(scorer, state)
        return self._finish(scorer, state, final)

    def _resumed(self) -> LoopState:
        """The checkpoint's state, with the log trimmed to it: an unreadable checkpoint costs no upload."""
        state = load_checkpoint(self.checkpoint_path, self.settings.run_settings())
        trim_log(self.run_dir / "log.jsonl", state.tells, state.pending)
        return state

    async def _start(self, scorer: Scorer) -> tuple[LoopState, list[Sent]]:
        """The zero-shot evaluation and the optimiser, with its first asks already in flight beside the zero-shot's
        requests (training does not wait a round trip for it), unless an auto choice (--pipeline, --directions)
        must time those first."""
        model = (await self.api.model_info()).model_dump()
        space = scorer.prompts.record()
        (self.run_dir / "log.jsonl").write_text("")
        s = self.settings
        zero = asyncio.ensure_future(scorer.score_point(MonitorPoint(np.zeros(s.dim), 0, 0, 0), "zero-shot"))
        first: list[Sent] = []
        try:
            if needs_timing(s.method, s.pipeline, s.directions, s.options):
                await asyncio.wait([zero])  # an auto choice: made once, from the zero-shot requests' round trips
            options, choice = resolve_options(s.method, s.pipeline, s.directions, s.options,
                                              list(self.api.exchanges), len(self.task.train))
            optimizer = build_optimizer(s.method, s.dim, s.seed, budget=s.budget, **options)
            self._write_config(model, space, optimizer.config, None if choice is None else choice.record())
            sent = time.perf_counter()
            if not optimizer.stop():  # as the loop's first turn would: a first batch over the budget is not sent
                first = [Sent.of(scorer, ask) for ask in optimizer.asks()]
            zero_shot = await zero
            state = LoopState(optimizer, scorer.meter, zero_shot=zero_shot, best=zero_shot, next_eval=s.eval_every)
            self._log(state, {"stage": "zero-shot", **zero_shot.scores()}, zero_shot.point)
            state.elapsed = time.perf_counter() - sent  # training's clock starts when its first asks went out
            self._save(state)  # the first asks are inside the optimiser: a resume sends them again
        except BaseException:
            for task in [zero, *(sent.task for sent in first)]:
                task.cancel()
            raise
        return state, first

    async def _train(self, scorer: Scorer, state: LoopState, first: list[Sent]) -> None:
        """The loop; ``first``: the optimiser's pending asks, already sent (``_start``)."""
        opt = state.optimizer
        started = time.perf_counter() - state.elapsed

        def record(done: Evaluated) -> None:
            self._monitored = done
            self._log(state, {"stage": "monitor", **done.scores()}, done.point)

        monitoring = Monitoring(scorer, state, self.settings, record)
        in_flight: deque[Sent] = deque(first)  # the optimiser's pending asks, oldest first
        stage, go_on = opt.stage, True

        def more() -> bool:
            return bool(in_flight) or (go_on and not opt.stop())

        def send() -> list[Sent]:
            """The asks not yet in flight, sent."""
            sent = [Sent.of(scorer, ask) for ask in (opt.asks() if go_on else [])[len(in_flight):]]
            in_flight.extend(sent)
            return sent

        with TuneProgress(self.settings, self.show_progress) as progress:
            progress.update(opt.queries, opt.stage, None, None, state.best.val_accuracy)
            try:
                while more():
                    send()
                    ask = opt.ask()
                    result = await in_flight.popleft().task
                    opt.tell(result)
                    monitoring.poll()
                    if opt.stage != stage and self.settings.probe_sharpness:  # where SharpZO's stage 2 starts
                        state.sharpness["switch"] = await scorer.sharpness(opt.solution)
                    stage = opt.stage
                    state.tells += 1
                    # an early stop asks nothing more; the asks in flight are paid for, so they are told
                    go_on = go_on and await monitoring.after_tell()
                    if more():  # the next asks go out before this tell's log and checkpoint, which would delay them
                        for sent in send():
                            await sent.out()
                    best = int(np.argmin(result.loss))
                    loss, accuracy = float(result.loss[best]), float(result.accuracy[best])
                    entry = {"stage": opt.stage, "split": ask.split, "n": len(ask.points), "loss": loss,
                             "accuracy": accuracy, "loss_mean": float(np.mean(result.loss))}
                    state.elapsed = time.perf_counter() - started
                    self._log(state, entry, state.point())  # before the checkpoint: a resume trims what it lacks
                    self._save(state)
                    progress.update(opt.queries, opt.stage, loss, accuracy, state.best.val_accuracy)
                await monitoring.settle()
            finally:
                for sent in in_flight:
                    sent.task.cancel()
                monitoring.cancel()
        state.elapsed = time.perf_counter() - started
        self._warn_if_untuned(state)

    def _warn_if_untuned(self, state: LoopState) -> None:
        if state.tells == 0 and self.settings.budget > 0:  # 0 asks for the zero-shot evaluation alone
            log.warning(
                "%s's first batch needs %d queries, more than the budget of %d: nothing was tuned; raise "
                "--budget (or, for sharpzo, use --opt sharpness=es, which needs no 2d-query gradient)",
                self.settings.method, len(state.optimizer.ask().points), self.settings.budget,
            )

    async def _final(self, scorer: Scorer, state: LoopState) -> Evaluated:
        started = time.perf_counter() - state.elapsed
        point = state.point()
        # a monitor evaluation at the last tell scored this very prompt: its scores are the final ones, bit for bit
        again = self._monitored if self._monitored is not None and self._monitored.point.tells == point.tells else None
        final = asyncio.ensure_future(scorer.score_point(point, "final")) if again is None else None
        if self.settings.probe_sharpness:
            state.sharpness["final"] = await scorer.sharpness(point.w)
        if final is not None:
            evaluated = await final
        else:
            assert again is not None
            evaluated = replace(again, kind="final", point=point)
        state.consider(evaluated)
        state.elapsed = time.perf_counter() - started
        self._log(state, {"stage": "final", **evaluated.scores()}, point)
        self._save(state)
        return evaluated

    def _write_config(
        self, model: dict[str, Any], space: dict[str, Any], optimizer: OptimizerConfig, chosen: dict[str, Any] | None
    ) -> None:
        """config.json; ``space``: the prompt kind and the split of d (PromptMap.record); ``optimizer``: every option
        the optimiser runs with, the defaults and what --pipeline 1 implies included; ``chosen``: what
        --pipeline/--directions auto chose and what from (latency.AutoChoice)."""
        config = {
            "settings": self.settings.run_settings(),
            "prompt_space": space,
            "optimizer": asdict(optimizer),
            **({} if chosen is None else {"auto_chosen": chosen}),
            "server": self.api.base_url,
            "model": model,
            "task": {
                "name": self.task.name,
                "shots": self.task.shots,
                "seed": self.task.seed,
                "class_names": self.task.class_names,
                "notes": self.task.notes,
                "image_sha256": {s: getattr(self.task, s).hashes() for s in ("train", "val", "test")},
            },
        }
        (self.run_dir / "config.json").write_text(json.dumps(config, indent=1))

    def _save(self, state: LoopState) -> None:
        save_checkpoint(self.checkpoint_path, self.settings.run_settings(), state)

    def _log(self, state: LoopState, entry: dict[str, Any], at: MonitorPoint) -> None:
        """One log line for the prompt taken ``at`` (tells, iteration, queries); the charge is as of now."""
        line = {
            "tells": at.tells,
            "iteration": at.iteration,
            "queries": at.queries,
            "total_queries": state.spend(self.settings.budget).total_queries,
            "wall_s": round(state.elapsed, 3),
            **entry,
        }
        with open(self.run_dir / "log.jsonl", "a") as handle:
            handle.write(json.dumps(line) + "\n")

    def _finish(self, scorer: Scorer, state: LoopState, final: Evaluated) -> TuneResult:
        best = state.best
        w = best.point.w
        returned = scorer.prompt_of(best.point, best.kind)
        ctx, visual_ctx = returned.text[0], None if returned.visual is None else returned.visual[0]
        s = self.settings
        np.savez(
            self.run_dir / "prompt.npz", ctx=ctx, w=w, final_w=final.point.w, p0=scorer.prompts.p0, alpha=s.alpha,
            seed=s.seed, class_names=np.array(self.task.class_names), prompt=s.prompt,
            **({} if visual_ctx is None else {"visual_ctx": visual_ctx}),
        )
        result = TuneResult(
            run_dir=self.run_dir,
            method=self.settings.method,
            selected=selection(best, final),
            zero_shot_test_accuracy=state.zero_shot.test_accuracy,
            zero_shot_val_accuracy=state.zero_shot.val_accuracy,
            test_accuracy=best.test_accuracy,
            val_accuracy=best.val_accuracy,
            final_test_accuracy=final.test_accuracy,
            final_val_accuracy=final.val_accuracy,
            selected_queries=best.point.queries,
            queries=state.optimizer.queries,
            budget=state.spend(self.settings.budget),
            wall_seconds=state.elapsed,
            w=w,
            ctx=ctx,
            sharpness=state.sharpness,
            visual_ctx=visual_ctx,
        )
        (self.run_dir / "result.json").write_text(json.dumps(result.summary(), indent=1))
        return result


def selection(best: Evaluated, final: Evaluated) -> Selected:
    """What result.json's ``selected`` says of ``best``: a monitored prompt that is the final iterate is ``final``."""
    if best.kind == "zero-shot":
        return "zero-shot"
    if best.kind == "final" or np.array_equal(best.point.w, final.point.w):
        return "final"
    return "best-validation"
