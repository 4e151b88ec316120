"""The project's own open_clip model configs (JSON files in model_configs/) and the shipped stand-in."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import open_clip

CONFIG_DIR = Path(__file__).parent / "model_configs"
STANDIN_MODEL = "sharpzo-standin"
STANDIN_WEIGHTS = Path(__file__).parent / "weights" / f"{STANDIN_MODEL}.pt"


@cache
def register_project_configs() -> None:
    """Make every config in model_configs/ known to open_clip by its file name."""
    open_clip.add_model_config(CONFIG_DIR)
