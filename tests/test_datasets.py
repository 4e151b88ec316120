"""Dataset loaders and the leak-free few-shot protocol."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sharpzo.data import fashion_mnist
from sharpzo.data.base import LabeledImages
from sharpzo.data.catalog import DATASETS, load_split
from sharpzo.data.encoding import gray_png
from sharpzo.data.fewshot import SPECS, downstream_split, few_shot_task
from sharpzo.data.locate import DatasetNotInstalledError, package_file

# (train, test) sizes after removing byte-identical repeats
SIZES = {
    "groceries": (675, 661), "mnist": (50_000, 10_000), "fashion-mnist": (60_000, 10_000), "animals": (7_288, 2_428)
}
# (pool, val, eval) sizes of the protocol
PROTOCOL_SIZES = {
    "groceries": (224, 100, 337), "mnist": (640, 300, 1000), "fashion-mnist": (640, 300, 1000),
    "animals": (640, 300, 1000),
}


def require_split(name: str, split: str) -> LabeledImages:
    try:
        return load_split(name, split)  # type: ignore[arg-type]
    except DatasetNotInstalledError as error:
        pytest.skip(str(error))


@pytest.mark.parametrize("name", DATASETS)
def test_official_splits(name: str) -> None:
    train, test = require_split(name, "train"), require_split(name, "test")
    assert (len(train), len(test)) == SIZES[name]
    assert set(np.unique(test.labels)) == set(range(len(test.class_names)))
    train_hashes = set(train.hashes())
    test_hashes = test.hashes()
    assert len(set(test_hashes)) == len(test_hashes), "test split repeats an image"
    assert train_hashes.isdisjoint(test_hashes), "an official test image is also in the train split"


@pytest.mark.parametrize("name", DATASETS)
def test_protocol_partition(name: str) -> None:
    test = require_split(name, "test")
    split = downstream_split(name)
    assert (len(split.pool), len(split.val), len(split.eval)) == PROTOCOL_SIZES[name]
    pool, val, evaluation = set(split.pool.hashes()), set(split.val.hashes()), set(split.eval.hashes())
    assert pool.isdisjoint(val) and pool.isdisjoint(evaluation) and val.isdisjoint(evaluation)
    assert pool | val | evaluation <= set(test.hashes())
    assert np.bincount(split.pool.labels).min() >= 16
    assert set(np.unique(split.eval.labels)) == set(range(len(test.class_names)))
    assert len(split.pool) <= SPECS[name].pool_per_class * len(test.class_names)


@pytest.mark.parametrize("shots", [1, 4, 16])
def test_k_shot_counts_and_determinism(shots: int) -> None:
    require_split("groceries", "test")
    task = few_shot_task("groceries", shots, seed=3)
    assert np.bincount(task.train.labels).tolist() == [shots] * len(task.class_names)
    again = few_shot_task("groceries", shots, seed=3)
    assert task.train.hashes() == again.train.hashes()
    assert set(task.train.hashes()) <= set(downstream_split("groceries").pool.hashes())


def test_seeds_draw_different_sets_with_fixed_evaluation() -> None:
    require_split("mnist", "test")
    a, b = few_shot_task("mnist", 4, seed=0), few_shot_task("mnist", 4, seed=1)
    assert a.train.hashes() != b.train.hashes()
    assert a.val.hashes() == b.val.hashes() and a.test.hashes() == b.test.hashes()


def test_smaller_shot_sets_nest_in_larger_ones() -> None:
    require_split("animals", "test")
    sets = [set(few_shot_task("animals", k, seed=7).train.hashes()) for k in (1, 4, 16)]
    assert sets[0] < sets[1] < sets[2]


def test_too_many_shots_is_a_clear_error() -> None:
    require_split("groceries", "test")
    with pytest.raises(ValueError, match=r"class 'Golden Delicious apple' has only 16 images .* shots=17"):
        few_shot_task("groceries", 17, seed=0)
    with pytest.raises(ValueError, match="at least 1"):
        few_shot_task("groceries", 0, seed=0)


def test_unknown_dataset() -> None:
    with pytest.raises(KeyError, match="known: groceries, mnist"):
        load_split("cifar", "train")
    with pytest.raises(KeyError, match="unknown dataset"):
        downstream_split("cifar")


def test_missing_data_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(fashion_mnist, "ROOT", tmp_path)
    fashion_mnist.load.cache_clear()
    try:
        with pytest.raises(DatasetNotInstalledError, match="apt-get install -y dataset-fashion-mnist"):
            fashion_mnist.load("test")
    finally:
        fashion_mnist.load.cache_clear()
    with pytest.raises(DatasetNotInstalledError, match="make data"):
        package_file("no_such_package_here", "data.bin", "run `make data`")


def test_png_encoding_round_trips() -> None:
    image = np.random.default_rng(0).integers(0, 256, size=(28, 19), dtype=np.uint8)
    decoded = Image.open(io.BytesIO(gray_png(image)))
    assert decoded.mode == "L"
    assert np.array_equal(np.asarray(decoded), image)
    with pytest.raises(ValueError, match="2-D uint8"):
        gray_png(image.astype(np.float32))


@pytest.mark.parametrize("name", DATASETS)
def test_images_decode_and_labels_are_in_range(name: str) -> None:
    try:
        split = downstream_split(name)
    except DatasetNotInstalledError as error:
        pytest.skip(str(error))  # reported as a skip, never as a pass that checked nothing
    for part in (split.pool, split.val, split.eval):
        n_classes = len(part.class_names)
        assert len(part) > 0 and len(part.labels) == len(part.images)
        assert part.labels.min() >= 0 and part.labels.max() < n_classes
        sample = np.random.default_rng(0).choice(len(part), size=min(len(part), 8), replace=False)
        for i in sample:
            with Image.open(io.BytesIO(part.images[i])) as image:
                image.load()  # decodes every pixel, not only the header
                assert min(image.size) >= 28
