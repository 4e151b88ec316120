"""The project's own open_clip model configs and the stand-in checkpoints that ship with them.

Every ``model_configs/NAME.json`` is an open_clip config registered under ``NAME``; a project model
whose ``weights/NAME.pt`` exists is served with those weights unless told otherwise.
"""

from __future__ import annotations

from pathlib import Path

import open_clip

_HERE = Path(__file__).resolve().parent
MODEL_CONFIGS = _HERE / "model_configs"
WEIGHTS = _HERE / "weights"

DEFAULT_MODEL = "sharpzo-standin-v2"
STANDIN_V1 = "sharpzo-standin-v1"


def weights_for(model: str) -> Path:
    """Where a project model's shipped fp16 checkpoint lives (it may not exist)."""
    return WEIGHTS / f"{model}.pt"


def shipped_weights(model: str) -> Path | None:
    path = weights_for(model)
    return path if path.exists() else None


def manifest_for(checkpoint: Path) -> Path:
    """Where pretraining records a checkpoint's sha256, settings and the sha256 of every image it saw."""
    return checkpoint.with_suffix(".manifest.json.gz")


def register_project_configs() -> None:
    """Make open_clip know the project's model names (each JSON file's stem in model_configs/)."""
    if DEFAULT_MODEL not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIGS)
