"""Turning what a user passes as data (a built-in dataset name or a ready task) into a FewShotTask."""

from __future__ import annotations

from .datasets.base import FewShotTask
from .datasets.protocol import few_shot_task
from .datasets.registry import DATASETS


def resolve_task(data: str | FewShotTask, shots: int, seed: int) -> FewShotTask:
    if isinstance(data, FewShotTask):
        return data
    if data in DATASETS:
        return few_shot_task(data, shots, seed)
    raise ValueError(f"unknown dataset {data!r}; built-in datasets are {', '.join(DATASETS)}")
