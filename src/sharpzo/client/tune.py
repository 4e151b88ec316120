"""One tuning run: the ask/tell loop against the API, with a budget, logs, checkpoints and resume.

Run directory:
  config.json    settings, task (classes, image hashes per split, seed) and the server's model
  log.jsonl      one line per optimiser iteration (queries, loss, accuracies, stage, wall time)
  checkpoint.pkl the optimiser (with its RNG and CMA state), the budget and the loop state
  prompt.npz     the tuned context vectors, w, p0 and the projection's seed and alpha
  result.json    zero-shot and tuned accuracies, what was spent, wall time
"""

from __future__ import annotations

import json
import logging
import pickle
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .api import ApiClient, ApiError, Budget, BudgetExhausted
from sharpzo.data.base import FewShotTask
from .image_sets import ImageSetCache, RemoteSplit, upload_split
from .optim import Evaluation, Optimizer, make_optimizer
from .progress import TuneProgress
from .prompt import DEFAULT_ALPHA, DEFAULT_INIT_TEXT, PromptSpace

CHECKPOINT_FORMAT = 1
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuneSettings:
    method: str = "sharpzo"
    budget: int = 8000
    seed: int = 0
    dim: int = 512
    alpha: float = DEFAULT_ALPHA
    init_text: str = DEFAULT_INIT_TEXT
    eval_every: int = 1000
    augment: bool = False
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoopState:
    optimizer: Optimizer
    budget: Budget
    next_eval: int
    best_val: float
    elapsed: float
    zero_shot: dict[str, float]
    tells: int = 0


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

    async def evaluate(self, points: np.ndarray, split: str, charge: str = "budget") -> Evaluation:
        assert self.space is not None and self.remote is not None
        ctx = self.space.ctx(points)
        try:
            remote: RemoteSplit = getattr(self.remote, split)
            scored = await self.api.score(remote.set_id, self.remote.class_names, ctx, labels=remote.labels, charge=charge)
        except ApiError as exc:
            if exc.status != 404:
                raise
            # a restarted server that kept no image sets: upload again, once
            await self._upload()
            remote = getattr(self.remote, split)
            scored = await self.api.score(remote.set_id, self.remote.class_names, ctx, labels=remote.labels, charge=charge)
        return Evaluation(scored.loss, scored.accuracy)

    async def _monitor(self, w: np.ndarray) -> dict[str, float]:
        point = w[None]
        val, test = await self.evaluate(point, "val", "monitor"), await self.evaluate(point, "test", "monitor")
        return {"val_accuracy": float(val.accuracy[0]), "test_accuracy": float(test.accuracy[0]), "val_loss": float(val.loss[0])}

    def _write_config(self, model: dict[str, Any]) -> None:
        config = {
            "settings": asdict(self.settings),
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
        tmp = self.checkpoint_path.with_suffix(".tmp")
        with open(tmp, "wb") as handle:
            pickle.dump({"format": CHECKPOINT_FORMAT, "settings": asdict(self.settings), "state": state}, handle)
        tmp.replace(self.checkpoint_path)

    def _load(self) -> LoopState:
        with open(self.checkpoint_path, "rb") as handle:
            saved = pickle.load(handle)  # the user's own checkpoint file, never data from a server
        if saved.get("format") != CHECKPOINT_FORMAT:
            raise RuntimeError(f"{self.checkpoint_path}: unknown checkpoint format {saved.get('format')}")
        if saved["settings"] != asdict(self.settings):
            raise RuntimeError(
                f"{self.checkpoint_path} was written with other settings {saved['settings']}; "
                "resume with the same options, or start a fresh --out directory"
            )
        state: LoopState = saved["state"]
        log = self.run_dir / "log.jsonl"
        if log.exists():  # drop lines written after the checkpoint, and a finished run's final line
            entries = [json.loads(ln) for ln in log.read_text().splitlines()]
            kept = [json.dumps(e) for e in entries if e["tells"] <= state.tells and e["stage"] != "final"]
            log.write_text("".join(f"{ln}\n" for ln in kept))
        return state

    def _fresh_state(self) -> LoopState:
        optimizer = make_optimizer(self.settings.method, self.settings.dim, self.settings.seed, **self.settings.options)
        return LoopState(optimizer, Budget(self.settings.budget), self.settings.eval_every, float("-inf"), 0.0, {})

    async def run(self, resume: bool = False) -> TuneResult:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        await self._prepare()
        resuming = resume and self.checkpoint_path.exists()
        state = self._load() if resuming else self._fresh_state()
        self.api.budget = state.budget
        if not resuming:
            self._write_config((await self.api.model_info()).model_dump())
            (self.run_dir / "log.jsonl").write_text("")
            state.zero_shot = await self._monitor(np.zeros(self.settings.dim))
            self._log(state, {"stage": "zero-shot", **state.zero_shot}, 0.0)
            state.best_val = state.zero_shot["val_accuracy"]
            self._save(state)
        started = time.perf_counter() - state.elapsed
        opt = state.optimizer
        with TuneProgress(self.settings, self.show_progress) as progress:
            progress.update(state.budget, opt.stage, None, None, state.best_val)
            while True:
                ask = opt.ask()
                try:
                    result = await self.evaluate(ask.points, ask.split)
                except BudgetExhausted:
                    if opt.decline():
                        continue
                    if state.tells == 0:
                        log.warning(
                            "%s's first batch needs %d queries, more than the budget of %d: nothing was tuned; raise "
                            "--budget (or, for sharpzo, use --opt sharpness=es, which needs no 2d-query gradient)",
                            self.settings.method, len(ask.points), self.settings.budget,
                        )
                    break
                opt.tell(result)
                state.tells += 1
                entry: dict[str, Any] = {"stage": opt.stage, "split": ask.split, "n": len(ask.points)}
                best = int(np.argmin(result.loss))
                entry.update(loss=float(result.loss[best]), accuracy=float(result.accuracy[best]),
                             loss_mean=float(np.mean(result.loss)))
                if state.budget.queries >= state.next_eval:
                    entry.update(await self._monitor(opt.solution))
                    state.best_val = max(state.best_val, entry["val_accuracy"])
                    state.next_eval += self.settings.eval_every
                state.elapsed = time.perf_counter() - started
                self._save(state)
                self._log(state, entry, state.elapsed)
                progress.update(state.budget, opt.stage, entry["loss"], entry["accuracy"], state.best_val)
        final = await self._monitor(opt.solution)
        state.elapsed = time.perf_counter() - started
        self._log(state, {"stage": "final", **final}, state.elapsed)
        self._save(state)
        return self._finish(state, final)

    def _log(self, state: LoopState, entry: dict[str, Any], elapsed: float) -> None:
        line = {
            "tells": state.tells,
            "iteration": state.optimizer.iteration,
            "queries": state.budget.queries,
            "total_queries": state.budget.total_queries,
            "wall_s": round(elapsed, 3),
            **entry,
        }
        with open(self.run_dir / "log.jsonl", "a") as handle:
            handle.write(json.dumps(line) + "\n")

    def _finish(self, state: LoopState, final: dict[str, float]) -> TuneResult:
        assert self.space is not None
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
            queries=state.budget.queries,
            budget=state.budget.to_dict(),
            wall_seconds=state.elapsed,
            w=w,
            ctx=ctx,
        )
        (self.run_dir / "result.json").write_text(json.dumps(result.summary(), indent=1))
        return result
