"""The Python API: ``tune`` (sync) and ``tune_async`` against a remote or an embedded server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from .api import ApiClient
from .datasets.base import FewShotTask
from .embedded import EmbeddedServer
from .prompt import DEFAULT_ALPHA
from .tasks import resolve_task
from .tune import Tuner, TuneResult, TuneSettings


@asynccontextmanager
async def connect(server: str | None, api_key: str | None = None, concurrency: int = 4) -> AsyncIterator[ApiClient]:
    """An ApiClient for ``server``, or for an embedded stand-in server started (and stopped) here."""
    embedded = None if server is not None else await asyncio.to_thread(EmbeddedServer().start)
    try:
        async with ApiClient(server or embedded.url, api_key=api_key, concurrency=concurrency) as api:
            yield api
    finally:
        if embedded is not None:
            embedded.stop()


async def tune_async(
    data: str | FewShotTask,
    *,
    server: str | None = None,
    api_key: str | None = None,
    method: str = "sharpzo",
    budget: int = 8000,
    shots: int = 16,
    seed: int = 0,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    dim: int = 512,
    alpha: float = DEFAULT_ALPHA,
    eval_every: int = 1000,
    augment: bool = False,
    concurrency: int = 4,
    options: dict[str, Any] | None = None,
) -> TuneResult:
    """Tune a prompt for ``data`` with ``method`` within ``budget`` queries.

    ``data`` is a built-in dataset name or a FewShotTask. Without ``server``, an embedded
    server with the stand-in model starts on loopback for the duration of the run.
    """
    task = resolve_task(data, shots, seed)
    settings = TuneSettings(method, budget, seed, dim, alpha, eval_every=eval_every, augment=augment, options=dict(options or {}))
    run_dir = Path(out) if out is not None else Path("runs") / f"{task.name}-{method}-s{seed}"
    async with connect(server, api_key, concurrency) as api:
        return await Tuner(api, task, settings, run_dir, show_progress=progress).run(resume=resume)


def tune(data: str | FewShotTask, **kwargs: Any) -> TuneResult:
    """Synchronous ``tune_async``; same arguments."""
    return asyncio.run(tune_async(data, **kwargs))
