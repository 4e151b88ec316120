"""A run's ``checkpoint.pkl``: the loop state, written atomically, read back with its settings checked.

The state keeps what the server charged as one ``Usage``. Older formats are refused with
the reason: 1 kept a ``Budget`` class of its own (mapped here only so that its format can be
read), and 1 and 2 hold optimiser state in the old w units. A checkpoint that this version
cannot read is an error that says so, never a traceback from inside pickle.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sharpzo.shared.protocol import Usage

from .optim import Optimizer

CHECKPOINT_FORMAT = 3  # 3: optimiser constants in spreads (client/prompt.py)


@dataclass
class LoopState:
    optimizer: Optimizer
    charged: Usage  # everything the server charged for this run's scoring, method and monitor
    next_eval: int
    best_val: float
    elapsed: float
    zero_shot: dict[str, float]
    tells: int = 0
    sharpness: dict[str, dict[str, float]] = field(default_factory=dict)  # client/sharpness.py, by where measured

    @property
    def monitor_queries(self) -> int:
        """The monitor's queries: the optimiser counts its own, the rest of the charge is the monitor's."""
        return self.charged.queries - self.optimizer.queries


class _FormatOneBudget:
    """What format 1 pickled as ``sharpzo.client.api.Budget``: unpickled only to reach the format and refuse it."""


_RENAMED = {
    ("sharpzo.client.api", "Budget"): _FormatOneBudget,
    ("sharpzo.client.tune", "LoopState"): LoopState,
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return _RENAMED.get((module, name)) or super().find_class(module, name)


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
    if saved.get("format") != CHECKPOINT_FORMAT:
        raise RuntimeError(f"{path}: unknown checkpoint format {saved.get('format')}; start a fresh --out directory")
    if saved["settings"] != run_settings:
        raise RuntimeError(
            f"{path} was written with other settings {saved['settings']}; "
            "resume with the same options, or start a fresh --out directory"
        )
    state: LoopState = saved["state"]
    return state


def trim_log(log: Path, tells: int) -> None:
    """Drop log lines written after the checkpoint of ``tells`` tells, and a finished run's final line.

    The loop writes each line before its checkpoint, so the log never lacks a line the checkpoint
    has; a process killed mid-write leaves a partial last line, which is dropped too.
    """
    if log.exists():
        lines = log.read_text().splitlines()
        entries = [json.loads(line) for line in lines[:-1]]
        try:
            entries += [json.loads(line) for line in lines[-1:]]
        except json.JSONDecodeError:
            pass
        kept = [json.dumps(e) for e in entries if e["tells"] <= tells and e["stage"] != "final"]
        log.write_text("".join(f"{line}\n" for line in kept))
