"""The Python API: ``tune`` (sync) and ``tune_async`` against a remote or an embedded server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from .api import ApiClient
from .embedded import EmbeddedServer
from .prompt import DEFAULT_ALPHA
from .tasks import Data, OwnData, resolve_task
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
    data: Data,
    *,
    test_data: OwnData | None = None,
    allow_fewer: bool = False,
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

    ``data`` is a built-in dataset name, a FewShotTask, or your own images: a folder with one
    sub-folder per class or a ``path,label`` CSV file (str or Path; a str naming a built-in
    dataset means the dataset), an InMemoryData or a tuple ``(images, labels, class_names)``.
    ``test_data`` (same forms) replaces the test set held out from ``data``; ``allow_fewer``
    lets classes with fewer than ``shots`` images train on what they have. Without ``server``,
    an embedded server with the stand-in model starts on loopback for the duration of the run.
    """
    task = resolve_task(data, shots, seed, test_data, allow_fewer)
    settings = TuneSettings(method, budget, seed, dim, alpha, eval_every=eval_every, augment=augment, options=dict(options or {}))
    run_dir = Path(out) if out is not None else Path("runs") / f"{task.name}-{method}-s{seed}"
    async with connect(server, api_key, concurrency) as api:
        return await Tuner(api, task, settings, run_dir, show_progress=progress).run(resume=resume)


def tune(data: Data, **kwargs: Any) -> TuneResult:
    """Synchronous ``tune_async``; same arguments."""
    return asyncio.run(tune_async(data, **kwargs))
