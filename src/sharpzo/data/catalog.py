"""Every dataset by name: ``load_split(name, split)``."""

from __future__ import annotations

from collections.abc import Callable

from . import animals, fashion_mnist, groceries, mnist
from .base import LabeledImages, Split

_LOADERS: dict[str, Callable[[Split], LabeledImages]] = {
    "groceries": groceries.load,
    "mnist": mnist.load,
    "fashion-mnist": fashion_mnist.load,
    "animals": animals.load,
}
DATASETS: tuple[str, ...] = tuple(_LOADERS)


def load_split(name: str, split: Split) -> LabeledImages:
    """The named dataset's official ``train`` or ``test`` split (cached after the first call)."""
    if name not in _LOADERS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return _LOADERS[name](split)
