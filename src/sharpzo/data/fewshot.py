"""The leak-free downstream protocol.

The stand-in CLIP is pretrained on official train splits only. Each dataset's official test split
is partitioned once, by a fixed seed that no run seed touches, into a few-shot pool, a validation
set and a held-out evaluation set; k-shot training sets are then drawn from the pool by run seed.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cache

import numpy as np

from .base import FewShotTask, LabeledImages
from .catalog import DATASETS, load_split

PROTOCOL_SEED = 20241124


@dataclass(frozen=True)
class ProtocolSpec:
    pool_per_class: int
    val_size: int
    eval_size: int | None  # None: every test image not in the pool or validation set


# Groceries has only 661 unique test images: a 16-image pool per class keeps evaluation at 337.
# The 10-class sets cap validation and evaluation so that scoring stays cheap.
SPECS: dict[str, ProtocolSpec] = {
    "groceries": ProtocolSpec(pool_per_class=16, val_size=100, eval_size=None),
    "mnist": ProtocolSpec(pool_per_class=64, val_size=300, eval_size=1000),
    "fashion-mnist": ProtocolSpec(pool_per_class=64, val_size=300, eval_size=1000),
    "animals": ProtocolSpec(pool_per_class=64, val_size=300, eval_size=1000),
}


@dataclass(frozen=True)
class DownstreamSplit:
    """The fixed partition of one dataset's official test split; the three parts share no image."""

    pool: LabeledImages
    val: LabeledImages
    eval: LabeledImages


@cache
def downstream_split(name: str) -> DownstreamSplit:
    """Partition ``name``'s official test split; the result depends only on the data and PROTOCOL_SEED."""
    if name not in SPECS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    spec = SPECS[name]
    test = load_split(name, "test")
    rng = np.random.default_rng([PROTOCOL_SEED, zlib.crc32(name.encode())])
    pool: list[np.ndarray] = []
    rest: list[np.ndarray] = []
    rest_keys: list[np.ndarray] = []
    for label in range(len(test.class_names)):
        members = rng.permutation(np.flatnonzero(test.labels == label))
        n_pool = min(spec.pool_per_class, 2 * len(members) // 3)  # leave every class some evaluation images
        pool.append(members[:n_pool])
        remaining = members[n_pool:]
        rest.append(remaining)
        # Jittered within-class ranks: sorting by them interleaves the classes in proportion,
        # so any prefix of the order (validation, then evaluation) is stratified.
        rest_keys.append((np.arange(len(remaining)) + rng.random(len(remaining))) / max(len(remaining), 1))
    ordered = np.concatenate(rest)[np.argsort(np.concatenate(rest_keys), kind="stable")]
    val = ordered[: spec.val_size]
    end = None if spec.eval_size is None else spec.val_size + spec.eval_size
    evaluation = ordered[spec.val_size : end]
    return DownstreamSplit(
        pool=test.subset(np.sort(np.concatenate(pool))),
        val=test.subset(np.sort(val)),
        eval=test.subset(np.sort(evaluation)),
    )


def few_shot_task(name: str, shots: int, seed: int) -> FewShotTask:
    """A k-shot task: ``shots`` pool images per class drawn by ``seed``, with the fixed val and eval sets.

    The same seed gives the same images, and a seed's smaller-k set is contained in its larger-k set.
    """
    if shots < 1:
        raise ValueError(f"shots must be at least 1, got {shots}")
    split = downstream_split(name)
    pool = split.pool
    rng = np.random.default_rng(seed)
    chosen: list[np.ndarray] = []
    for label, class_name in enumerate(pool.class_names):
        members = rng.permutation(np.flatnonzero(pool.labels == label))
        if len(members) < shots:
            raise ValueError(
                f"{name}: class {class_name!r} has only {len(members)} images in the few-shot pool, "
                f"fewer than shots={shots}"
            )
        chosen.append(members[:shots])
    train = pool.subset(np.sort(np.concatenate(chosen)))
    notes = [
        f"{name}: {shots}-shot set drawn with seed {seed} from a pool of {len(pool)} official test images;"
        f" validation {len(split.val)} and evaluation {len(split.eval)} images fixed by protocol seed {PROTOCOL_SEED}"
    ]
    return FewShotTask(name, pool.class_names, train, split.val, split.eval, shots, seed, notes)
