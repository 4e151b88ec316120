"""Accuracy of a saved prompt (or zero-shot) on a task's validation and held-out test sets; a prompt.npz with
``visual_ctx`` (a visual or joint run's) is scored with its visual prompt tokens."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from sharpzo.data.base import FewShotTask

from .image_sets import UploadIndex, upload_split
from .prompt import DEFAULT_INIT_TEXT
from .runner import connect
from .tasks import resolve_task
from .tune import labelled


async def evaluate_prompt(
    data: str | FewShotTask, prompt: Path | None, server: str | None, api_key: str | None, shots: int = 16,
    seed: int = 0, ca_bundle: str | None = None,
) -> dict[str, float]:
    task = resolve_task(data, shots, seed)
    async with connect(server, api_key, ca_bundle=ca_bundle) as api:
        visual = None
        if prompt is None:
            ctx = await api.token_embeddings(DEFAULT_INIT_TEXT)
        else:
            saved = np.load(prompt)
            ctx = saved["ctx"]
            visual = saved["visual_ctx"][None] if "visual_ctx" in saved else None
            if list(saved["class_names"]) != task.class_names:
                raise ValueError(f"{prompt} was tuned for other classes: {list(saved['class_names'])}")
        index = UploadIndex()

        async def scores(split: str) -> dict[str, float]:
            remote = await upload_split(api, getattr(task, split), index=index, visual=visual is not None)
            scored = labelled(await api.score(remote.set_id, task.class_names, ctx[None], labels=remote.labels,
                                              visual_prompts=visual))
            return {f"{split}_accuracy": float(scored.accuracy[0]), f"{split}_loss": float(scored.loss[0])}

        val, test = await asyncio.gather(scores("val"), scores("test"))  # independent: sent together
        return {**val, **test}
