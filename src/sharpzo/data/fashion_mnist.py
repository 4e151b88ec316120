"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (official 60k train / 10k test)."""

from __future__ import annotations

import gzip
from functools import cache
from pathlib import Path

import numpy as np

from .base import LabeledImages, Split
from .encoding import gray_pngs
from .locate import DatasetNotInstalledError

ROOT = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = (
    "the fashion-mnist dataset is not installed (a Debian package): "
    "sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist"
)

CLASS_NAMES: list[str] = [
    "T-shirt", "pair of trousers", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
]

_FILE_PREFIX = {"train": "train", "test": "t10k"}


def _idx(path: Path, header_bytes: int) -> np.ndarray:
    if not path.is_file():
        raise DatasetNotInstalledError(f"{path} is missing; {INSTALL_HINT}")
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=header_bytes)


@cache
def load(split: Split) -> LabeledImages:
    """The official split as 28x28 grayscale PNGs."""
    if split not in _FILE_PREFIX:
        raise ValueError(f"fashion-mnist has no split {split!r}")
    prefix = _FILE_PREFIX[split]
    images = _idx(ROOT / f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = _idx(ROOT / f"{prefix}-labels-idx1-ubyte.gz", 8).astype(np.int64)
    return LabeledImages(gray_pngs(images), labels, CLASS_NAMES)
