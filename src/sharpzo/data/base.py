"""Types every dataset source returns: labelled encoded images and the few-shot task split."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .identity import image_digest

Split = Literal["train", "test"]


@dataclass(frozen=True)
class LabeledImages:
    """Encoded images (PNG/JPEG/... bytes, ready to upload) with integer labels into ``class_names``."""

    images: list[bytes]
    labels: np.ndarray
    class_names: list[str]

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: np.ndarray | list[int]) -> LabeledImages:
        idx = np.asarray(index, dtype=np.int64)
        return LabeledImages([self.images[i] for i in idx], self.labels[idx], self.class_names)

    def hashes(self) -> list[str]:
        """sha256 of each encoded image: the identity used for audits and leak checks."""
        return [image_digest(b) for b in self.images]

    def unique(self) -> LabeledImages:
        """Only the first copy of each byte-identical image, order kept (some sources repeat images)."""
        first: dict[str, int] = {}
        for i, digest in enumerate(self.hashes()):
            first.setdefault(digest, i)
        return self.subset(sorted(first.values()))


@dataclass(frozen=True)
class FewShotTask:
    """One downstream task: the k-shot training set, a validation set and the held-out test set."""

    name: str
    class_names: list[str]
    train: LabeledImages
    val: LabeledImages
    test: LabeledImages
    shots: int
    seed: int
    notes: list[str] = field(default_factory=list)
