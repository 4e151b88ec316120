"""The few-shot task on the user's own images.

The k-shot training set is drawn per class by the run seed (a seed's smaller-k set lies inside
its larger-k set). Without separate test data, what the draw leaves is split, again per class
and by seed, into a validation subset and the held-out test set; with test data, the validation
set comes from what the draw leaves and the test data is the test set.
"""

from __future__ import annotations

import logging

import numpy as np

from .base import FewShotTask, LabeledImages
from .user_data import UserImages

log = logging.getLogger(__name__)

MIN_CLASSES = 2
VAL_FRACTION = 0.25  # of what the k-shot draw leaves, when the rest becomes the test set
MAX_VAL = 500  # validation images in all; SharpZO scores the whole set at every check


def _relabelled(test: UserImages, class_names: list[str], data_origin: str) -> LabeledImages:
    """The test images with labels into the training data's class list, matched by class name."""
    index = {name: i for i, name in enumerate(class_names)}
    unknown = [name for name in test.images.class_names if name not in index]
    if unknown:
        raise ValueError(f"{test.origin} has classes that {data_origin} lacks: {', '.join(map(repr, unknown))}")
    mapping = np.array([index[name] for name in test.images.class_names], dtype=np.int64)
    return LabeledImages(test.images.images, mapping[test.images.labels], class_names)


def _without_test_images(data: UserImages, test: LabeledImages) -> tuple[LabeledImages, list[str]]:
    """``data``'s images minus those also in the test set, and the files left out."""
    test_hashes = set(test.hashes())
    overlap = [i for i, digest in enumerate(data.images.hashes()) if digest in test_hashes]
    if overlap:
        log.warning("leaving out %d image(s) of %s that are also in the test data", len(overlap), data.origin)
    keep = sorted(set(range(len(data.images))) - set(overlap))
    return data.images.subset(keep), [data.sources[i] for i in overlap]


def _check_counts(pool: LabeledImages, shots: int, allow_fewer: bool, origin: str) -> list[str]:
    """Raise for classes that cannot give ``shots`` images; return those ``allow_fewer`` lets through."""
    counts = np.bincount(pool.labels, minlength=len(pool.class_names))
    empty = [name for name, n in zip(pool.class_names, counts) if n == 0]
    if empty:
        raise ValueError(f"{origin}: no usable images in class(es) {', '.join(map(repr, empty))}")
    small = [f"{name!r} has {n}" for name, n in zip(pool.class_names, counts) if n < shots]
    if small and not allow_fewer:
        raise ValueError(
            f"{origin}: too few images for {shots} shots: {', '.join(small)}; "
            "add images, use fewer shots, or allow fewer (--allow-fewer, allow_fewer=True)"
        )
    return small


def _split_rest(rest: list[np.ndarray], fraction: float, hold_out: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the first part of ``rest`` for validation and the remainder; at most MAX_VAL validation images."""
    fraction = min(fraction, MAX_VAL / max(sum(map(len, rest)), 1))
    val: list[np.ndarray] = []
    held: list[np.ndarray] = []
    for members in rest:
        n_val = int(len(members) * fraction)
        if hold_out and n_val == 0 and len(members) >= 2:
            n_val = 1  # a class with room for both gets a validation image too
        val.append(members[:n_val])
        held.append(members[n_val:])
    return np.sort(np.concatenate(val)), np.sort(np.concatenate(held))


def user_task(
    data: UserImages, test: UserImages | None, shots: int, seed: int, allow_fewer: bool = False
) -> FewShotTask:
    if shots < 1:
        raise ValueError(f"shots must be at least 1, got {shots}")
    class_names = data.images.class_names
    if len(class_names) < MIN_CLASSES:
        raise ValueError(
            f"{data.origin} has {len(class_names)} class(es) ({', '.join(map(repr, class_names))}); "
            f"CLIP prompt tuning needs at least {MIN_CLASSES} classes to choose between"
        )
    notes = [f"data: {shots}-shot training set drawn with seed {seed} from {data.origin}", *data.report("data")]
    pool = data.images
    given_test: LabeledImages | None = None
    if test is not None:
        given_test = _relabelled(test, class_names, data.origin)
        if len(given_test) == 0:
            raise ValueError(f"{test.origin} has no usable images")
        notes += [f"test: {len(given_test)} images of {test.origin}", *test.report("test data")]
        pool, overlap = _without_test_images(data, given_test)
        if overlap:
            notes.append(f"data: left out {len(overlap)} image(s) also in the test data: {'; '.join(overlap)}")
    small = _check_counts(pool, shots, allow_fewer, data.origin)
    if small:
        notes.append(f"data: classes with fewer than {shots} images train on all they have: {', '.join(small)}")

    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    rest: list[np.ndarray] = []
    for label in range(len(class_names)):
        members = rng.permutation(np.flatnonzero(pool.labels == label))
        train.append(members[:shots])
        rest.append(members[shots:])
    val_index, held_index = _split_rest(rest, VAL_FRACTION if given_test is None else 1.0, hold_out=given_test is None)
    if len(val_index) == 0:
        raise ValueError(
            f"{data.origin}: the {shots}-shot draw leaves no images for a validation set; add images or use fewer shots"
        )
    notes.append(f"validation: {len(val_index)} images drawn with seed {seed} from what the {shots}-shot draw left")
    if given_test is None:
        test_set = pool.subset(held_index)
        notes.append(f"test: {len(test_set)} images held out by seed {seed} from what the {shots}-shot draw left")
        if len(test_set) == 0:
            raise ValueError(
                f"{data.origin}: the {shots}-shot draw leaves no images for a test set; "
                "add images, use fewer shots, or give separate test data"
            )
    else:
        test_set = given_test
    train_set = pool.subset(np.sort(np.concatenate(train)))
    return FewShotTask(data.name, class_names, train_set, pool.subset(val_index), test_set, shots, seed, notes)
