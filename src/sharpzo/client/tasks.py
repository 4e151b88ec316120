"""Turning what a user passes as data into a FewShotTask.

Data is a built-in dataset name, a ready task, or the user's own images: a folder of class
sub-folders or a ``path,label`` CSV file (a str or Path), an InMemoryData, or a tuple
``(images, labels, class_names)``. A str that names a built-in dataset means the dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeAlias

from sharpzo.data.base import FewShotTask
from sharpzo.data.catalog import DATASETS
from sharpzo.data.fewshot import few_shot_task
from sharpzo.data.user_data import InMemoryData, UserImages, load_user_data
from sharpzo.data.user_split import user_task

OwnData: TypeAlias = str | Path | InMemoryData | tuple[Sequence[Any], Sequence[int], Sequence[str]]
Data: TypeAlias = FewShotTask | OwnData


def _own_images(data: OwnData) -> UserImages:
    if isinstance(data, tuple):
        return load_user_data(InMemoryData(*data))
    if isinstance(data, InMemoryData):
        return load_user_data(data)
    path = Path(data).expanduser()
    if not path.exists():
        known = f"not a built-in dataset ({', '.join(DATASETS)}) and " if isinstance(data, str) else ""
        raise ValueError(f"{data!r} is {known}no such folder or CSV file")
    return load_user_data(path)


def resolve_task(
    data: Data, shots: int, seed: int, test_data: OwnData | None = None, allow_fewer: bool = False
) -> FewShotTask:
    builtin = isinstance(data, FewShotTask) or (isinstance(data, str) and data in DATASETS)
    if builtin and (test_data is not None or allow_fewer):
        raise ValueError("test data and allow-fewer apply to your own images, not to a built-in dataset or task")
    if isinstance(data, FewShotTask):
        return data
    if isinstance(data, str) and data in DATASETS:
        return few_shot_task(data, shots, seed)
    images = _own_images(data)
    test = None if test_data is None else _own_images(test_data)
    return user_task(images, test, shots, seed, allow_fewer)
