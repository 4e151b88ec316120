"""The project's own open_clip model config and the stand-in checkpoint that ships with it."""

from __future__ import annotations

from pathlib import Path

import open_clip

_HERE = Path(__file__).resolve().parent
MODEL_CONFIGS = _HERE / "model_configs"

STANDIN_MODEL = "sharpzo-standin"
STANDIN_WEIGHTS = _HERE / "weights" / f"{STANDIN_MODEL}.pt"


def manifest_for(checkpoint: Path) -> Path:
    """Where pretraining records a checkpoint's sha256, settings and the sha256 of every image it saw."""
    return checkpoint.with_suffix(".manifest.json.gz")


def register_project_configs() -> None:
    """Make open_clip know the project's model names (each JSON file's stem in model_configs/)."""
    if STANDIN_MODEL not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIGS)
