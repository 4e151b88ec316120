"""One tuning run: the optimiser's loop against the API, with logs, checkpoints and resume.

Run directory:
  config.json    the run's settings, task (classes, image hashes per split, seed) and the server's model
  log.jsonl      one line per optimiser iteration (queries, loss, accuracies, stage, wall time)
  checkpoint.pkl the optimiser (with its RNG and CMA state), what the server charged and the loop state
  prompt.npz     the tuned context vectors, w, p0 and the projection's seed and alpha
  result.json    zero-shot and tuned accuracies, what was spent, wall time
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sharpzo.data.base import FewShotTask
from sharpzo.shared.protocol import Usage

from .api import ApiClient, ApiRequestError
from .checkpoint import LoopState, load_checkpoint, save_checkpoint, trim_log
from .image_sets import ImageSetCache, RemoteSplit, upload_split
from .optim import Ask, Evaluation, build_optimizer
from .progress import TuneProgress
from .sharpness import SharpnessProbe
from .prompt import PromptSpace
from .settings import TuneSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuneResult:
    run_dir: Path
    method: str
    zero_shot_test_accuracy: float
    test_accuracy: float
    val_accuracy: float
    queries: int
    budget: dict[str, Any]
    wall_seconds: float
    w: np.ndarray = field(repr=False)
    ctx: np.ndarray = field(repr=False)
    sharpness: dict[str, dict[str, float]] = field(default_factory=dict)  # at the stage switch and the end

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(run_dir=str(self.run_dir))
        out.pop("w")
        out.pop("ctx")
        return out


@dataclass(frozen=True)
class RemoteTask:
    class_names: list[str]
    train: RemoteSplit
    val: RemoteSplit
    test: RemoteSplit


class Tuner:
    def __init__(
        self, api: ApiClient, task: FewShotTask, settings: TuneSettings, run_dir: Path, show_progress: bool = True
    ) -> None:
        self.api = api
        self.task = task
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.show_progress = show_progress
        self.space: PromptSpace | None = None
        self.remote: RemoteTask | None = None
        self.state: LoopState | None = None

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pkl"

    async def _prepare(self) -> None:
        p0 = await self.api.token_embeddings(self.settings.init_text)
        self.space = PromptSpace.create(p0, self.settings.dim, self.settings.seed, self.settings.alpha)
        await self._upload()

    async def _upload(self) -> None:
        cache = ImageSetCache()
        splits = {}
        for name in ("train", "val", "test"):
            splits[name] = await upload_split(
                self.api, getattr(self.task, name), augment=self.settings.augment and name == "train",
                seed=self.settings.seed, cache=cache, label=name, progress=self.show_progress,
            )
        self.remote = RemoteTask(self.task.class_names, **splits)

    def _charge(self, usage: Usage) -> None:
        assert self.state is not None
        self.state.charged = self.state.charged + usage

    async def evaluate(self, points: np.ndarray, split: str) -> Evaluation:
        assert self.space is not None and self.remote is not None
        ctx = self.space.ctx(points)
        try:
            remote: RemoteSplit = getattr(self.remote, split)
            scored = await self.api.score(
                remote.set_id, self.remote.class_names, ctx, labels=remote.labels, on_charge=self._charge
            )
        except ApiRequestError as exc:
            if exc.status != 404:
                raise
            # a restarted server that kept no image sets: upload again, once
            await self._upload()
            remote = getattr(self.remote, split)
            scored = await self.api.score(
                remote.set_id, self.remote.class_names, ctx, labels=remote.labels, on_charge=self._charge
            )
        return Evaluation(scored.loss, scored.accuracy)

    async def _objective(self, ask: Ask) -> Evaluation:
        return await self.evaluate(ask.points, ask.split)

    async def _sharpness(self, w: np.ndarray) -> dict[str, float]:
        """client/sharpness.py on the training set; not told to the optimiser, so charged as monitor queries."""
        return await SharpnessProbe().measure(w, lambda points: self.evaluate(points, "train"))

    async def _monitor(self, w: np.ndarray) -> dict[str, float]:
        point = w[None]
        val, test = await self.evaluate(point, "val"), await self.evaluate(point, "test")
        return {"val_accuracy": float(val.accuracy[0]), "test_accuracy": float(test.accuracy[0]), "val_loss": float(val.loss[0])}

    def _write_config(self, model: dict[str, Any]) -> None:
        config = {
            "settings": self.settings.run_settings(),
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

    def _fresh_state(self) -> LoopState:
        optimizer = build_optimizer(self.settings.method, self.settings.dim, self.settings.seed, **self.settings.options)
        return LoopState(optimizer, Usage(), self.settings.eval_every, float("-inf"), 0.0, {})

    def _save(self) -> None:
        assert self.state is not None
        save_checkpoint(self.checkpoint_path, self.settings.run_settings(), self.state)

    async def run(self, resume: bool = False) -> TuneResult:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resuming = resume and self.checkpoint_path.exists()
        if resuming:  # read before any upload, so that an unreadable checkpoint costs nothing
            self.state = load_checkpoint(self.checkpoint_path, self.settings.run_settings())
            trim_log(self.run_dir / "log.jsonl", self.state.tells)
        else:
            self.state = self._fresh_state()
        state = self.state
        await self._prepare()
        if not resuming:
            self._write_config((await self.api.model_info()).model_dump())
            (self.run_dir / "log.jsonl").write_text("")
            state.zero_shot = await self._monitor(np.zeros(self.settings.dim))
            self._log({"stage": "zero-shot", **state.zero_shot}, 0.0)
            state.best_val = state.zero_shot["val_accuracy"]
            self._save()
        started = time.perf_counter() - state.elapsed
        opt = state.optimizer
        with TuneProgress(self.settings, self.show_progress) as progress:
            progress.update(opt.queries, opt.stage, None, None, state.best_val)
            stage = opt.stage

            async def after_tell(ask: Ask, result: Evaluation) -> None:
                nonlocal stage
                if opt.stage != stage:  # SharpZO's switch: the sharpness where stage 2 starts
                    state.sharpness["switch"] = await self._sharpness(opt.solution)
                    stage = opt.stage
                state.tells += 1
                entry: dict[str, Any] = {"stage": opt.stage, "split": ask.split, "n": len(ask.points)}
                best = int(np.argmin(result.loss))
                entry.update(loss=float(result.loss[best]), accuracy=float(result.accuracy[best]),
                             loss_mean=float(np.mean(result.loss)))
                if self.settings.eval_every > 0 and opt.queries >= state.next_eval:
                    entry.update(await self._monitor(opt.solution))
                    state.best_val = max(state.best_val, entry["val_accuracy"])
                    state.next_eval += self.settings.eval_every
                state.elapsed = time.perf_counter() - started
                self._log(entry, state.elapsed)  # before the checkpoint: a resume trims what the checkpoint lacks
                self._save()
                progress.update(opt.queries, opt.stage, entry["loss"], entry["accuracy"], state.best_val)

            await opt.optimize_async(self._objective, self.settings.budget, callback=after_tell)
        if state.tells == 0 and self.settings.budget > 0:  # 0 asks for the zero-shot evaluation alone
            log.warning(
                "%s's first batch needs %d queries, more than the budget of %d: nothing was tuned; raise "
                "--budget (or, for sharpzo, use --opt sharpness=es, which needs no 2d-query gradient)",
                self.settings.method, len(opt.ask().points), self.settings.budget,
            )
        final = await self._monitor(opt.solution)
        state.sharpness["final"] = await self._sharpness(opt.solution)
        state.elapsed = time.perf_counter() - started
        self._log({"stage": "final", **final}, state.elapsed)
        self._save()
        return self._finish(final)

    def _log(self, entry: dict[str, Any], elapsed: float) -> None:
        assert self.state is not None
        line = {
            "tells": self.state.tells,
            "iteration": self.state.optimizer.iteration,
            "queries": self.state.optimizer.queries,
            "total_queries": self.state.charged.queries,
            "wall_s": round(elapsed, 3),
            **entry,
        }
        with open(self.run_dir / "log.jsonl", "a") as handle:
            handle.write(json.dumps(line) + "\n")

    def _spent(self) -> dict[str, Any]:
        """What result.json reports as ``budget``: the method's queries against the cap, and the server's charge."""
        assert self.state is not None
        charged = self.state.charged
        return {
            "max_queries": self.settings.budget, "queries": self.state.optimizer.queries,
            "monitor_queries": self.state.monitor_queries, "image_evals": charged.image_evals,
            "requests": charged.requests, "total_queries": charged.queries,
        }

    def _finish(self, final: dict[str, float]) -> TuneResult:
        assert self.space is not None and self.state is not None
        state = self.state
        w = state.optimizer.solution
        ctx = self.space.ctx(w)[0]
        np.savez(
            self.run_dir / "prompt.npz", ctx=ctx, w=w, p0=self.space.p0, alpha=self.space.alpha, seed=self.space.seed,
            class_names=np.array(self.task.class_names),
        )
        result = TuneResult(
            run_dir=self.run_dir,
            method=self.settings.method,
            zero_shot_test_accuracy=state.zero_shot["test_accuracy"],
            test_accuracy=final["test_accuracy"],
            val_accuracy=final["val_accuracy"],
            queries=state.optimizer.queries,
            budget=self._spent(),
            wall_seconds=state.elapsed,
            w=w,
            ctx=ctx,
            sharpness=state.sharpness,
        )
        (self.run_dir / "result.json").write_text(json.dumps(result.summary(), indent=1))
        return result
