"""A run's accounting and ``checkpoint.pkl``: the loop state, written atomically, read back with its settings checked.

The state keeps what the server charged as one ``Usage`` (in its ``Meter``), the evaluated
prompt that is best on validation so far, and the monitor point whose evaluation was in
flight when it was saved: a resume evaluates that point again (its log line, if it landed
after the checkpoint, is dropped by ``trim_log``). Older formats are refused with the
reason: 1 kept a ``Budget`` class of its own (mapped here only so that its format can be
read), 1 and 2 hold optimiser state in the old w units, 3 lacks the best-so-far, and 4 has one pending
ask where the optimisers now keep a queue of them (pipelining, optim/base.py). A
checkpoint that this version cannot read is an error that says so, never a traceback
from inside pickle.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sharpzo.shared.protocol import Usage

from .optim import Optimizer

# 3: optimiser constants in spreads (client/prompt.py); 4: the best so far, the pending monitor; 5: pipelined asks
CHECKPOINT_FORMAT = 5

Kind = Literal["zero-shot", "monitor", "final"]


@dataclass(frozen=True)
class RunSpend:
    """What a run spent: the method's queries against its cap, and everything the server charged."""

    max_queries: int
    queries: int  # the method's (training and validation) queries, counted by the optimiser
    monitor_queries: int  # zero-shot, --eval-every, final and sharpness evaluations: the rest of the charge
    image_evals: int
    requests: int
    total_queries: int  # queries + monitor_queries, as the server charged them
    image_forwards: int  # image-tower forwards of visual prompts, method and monitor: 0 for text prompts

    @classmethod
    def of(cls, max_queries: int, method_queries: int, charged: Usage) -> RunSpend:
        return cls(
            max_queries=max_queries, queries=method_queries, monitor_queries=charged.queries - method_queries,
            image_evals=charged.image_evals, requests=charged.requests, total_queries=charged.queries,
            image_forwards=charged.image_forwards,
        )


@dataclass
class Meter:
    """What the server has charged this run so far, method and monitor alike; every response adds its usage."""

    charged: Usage = field(default_factory=Usage)

    def add(self, usage: Usage) -> None:
        self.charged = self.charged + usage


@dataclass(frozen=True)
class MonitorPoint:
    """A prompt taken for evaluation, and when: after ``tells`` tells, ``queries`` of the method's queries."""

    w: np.ndarray
    tells: int
    iteration: int
    queries: int


@dataclass(frozen=True)
class Evaluated:
    """A prompt's validation and test scores: one of the candidates for the returned prompt."""

    kind: Kind
    point: MonitorPoint
    val_accuracy: float
    test_accuracy: float
    val_loss: float

    def scores(self) -> dict[str, float]:
        return {"val_accuracy": self.val_accuracy, "test_accuracy": self.test_accuracy, "val_loss": self.val_loss}


@dataclass
class LoopState:
    optimizer: Optimizer[Any]
    meter: Meter  # everything the server charged for this run's scoring, method and monitor
    zero_shot: Evaluated
    best: Evaluated  # the best on validation of the prompts evaluated so far; earlier wins ties
    next_eval: int
    elapsed: float = 0.0
    tells: int = 0
    stall: int = 0  # monitor evaluations in a row that did not improve on ``best``
    pending: MonitorPoint | None = None  # a monitor point not yet evaluated when saved: a resume redoes it
    sharpness: dict[str, dict[str, float]] = field(default_factory=dict)  # client/sharpness.py, by where measured

    def point(self) -> MonitorPoint:
        """The optimiser's current prompt, taken now."""
        opt = self.optimizer
        return MonitorPoint(np.array(opt.solution, dtype=float), self.tells, opt.iteration, opt.queries)

    def spend(self, max_queries: int) -> RunSpend:
        return RunSpend.of(max_queries, self.optimizer.queries, self.meter.charged)

    def consider(self, candidate: Evaluated) -> bool:
        """Keep ``candidate`` if it beats the best on validation accuracy (a tie keeps the earlier); True if it did."""
        improved = candidate.val_accuracy > self.best.val_accuracy
        if improved:
            self.best = candidate
        return improved


class _FormatOneBudget:
    """What format 1 pickled as ``sharpzo.client.api.Budget``: unpickled only to reach the format and refuse it."""


_RENAMED = {
    ("sharpzo.client.api", "Budget"): _FormatOneBudget,
    ("sharpzo.client.tune", "LoopState"): LoopState,
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return _RENAMED.get((module, name)) or super().find_class(module, name)


# run settings added since this format, at the value that means what the code did before them
SETTINGS_ADDED: dict[str, Any] = {"pipeline": None}


def save_checkpoint(path: Path, run_settings: dict[str, Any], state: LoopState) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as handle:
        pickle.dump({"format": CHECKPOINT_FORMAT, "settings": run_settings, "state": state}, handle)
    tmp.replace(path)


def load_checkpoint(path: Path, run_settings: dict[str, Any]) -> LoopState:
    """The state saved at ``path``, which must have been written with the same ``run_settings``."""
    try:
        with open(path, "rb") as handle:
            saved = _Unpickler(handle).load()  # the user's own checkpoint file, never data from a server
    except (AttributeError, ImportError, pickle.UnpicklingError, EOFError) as exc:
        raise RuntimeError(
            f"{path} was written by a sharpzo version whose classes this one lacks ({exc}); "
            "it cannot resume: start a fresh --out directory"
        ) from exc
    if saved.get("format") in (1, 2):
        raise RuntimeError(
            f"{path} was written before the optimisers' constants moved to embedding-space units (spreads, "
            "client/prompt.py): its optimiser state and options are in the old w units and would mean other steps; "
            "it cannot resume: start a fresh --out directory"
        )
    if saved.get("format") == 3:
        raise RuntimeError(
            f"{path} was written before runs kept the best prompt on validation: it cannot resume; "
            "start a fresh --out directory"
        )
    if saved.get("format") == 4:
        raise RuntimeError(
            f"{path} was written before the optimisers pipelined their steps (a queue of pending asks where it "
            "holds one): it cannot resume; start a fresh --out directory"
        )
    if saved.get("format") != CHECKPOINT_FORMAT:
        raise RuntimeError(f"{path}: unknown checkpoint format {saved.get('format')}; start a fresh --out directory")
    if {**SETTINGS_ADDED, **saved["settings"]} != run_settings:
        raise RuntimeError(
            f"{path} was written with other settings {saved['settings']}; "
            "resume with the same options, or start a fresh --out directory"
        )
    state: LoopState = saved["state"]
    return state


def trim_log(log: Path, tells: int, redo: MonitorPoint | None = None) -> None:
    """Drop log lines written after the checkpoint of ``tells`` tells, a finished run's final line, and ``redo``'s.

    The loop writes each line before its checkpoint, so the log never lacks a line the checkpoint
    has; a process killed mid-write leaves a partial last line, which is dropped too. A monitor's
    line carries the tells at which its prompt was taken and is written when its evaluation
    lands; if that was after the checkpoint (``redo``, its pending point), the resume evaluates
    it again and writes it again.
    """
    if log.exists():
        lines = log.read_text().splitlines()
        entries = [json.loads(line) for line in lines[:-1]]
        try:
            entries += [json.loads(line) for line in lines[-1:]]
        except json.JSONDecodeError:
            pass
        redone = None if redo is None else redo.tells
        kept = [
            json.dumps(e) for e in entries
            if e["tells"] <= tells and e["stage"] != "final" and not (e["stage"] == "monitor" and e["tells"] == redone)
        ]
        log.write_text("".join(f"{line}\n" for line in kept))
