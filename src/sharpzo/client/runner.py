"""The Python API: ``tune`` (sync) and ``tune_async`` against a remote or an embedded server.

Their keyword arguments are the fields of ``TuneSettings`` (declared there once) plus
``preset``; the signatures and the docstring's list are generated from those fields.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

from .api import ApiClient
from .embedded import EmbeddedServer
from .install_check import require_server
from .settings import TuneSettings
from .tasks import Data, resolve_task
from .tune import Tuner, TuneResult


@asynccontextmanager
async def connect(
    server: str | None, api_key: str | None = None, concurrency: int = 4, ca_bundle: str | None = None,
    timeout: float = 120.0, compress: bool = True,
) -> AsyncIterator[ApiClient]:
    """An ApiClient for ``server``, or for an embedded stand-in server started (and stopped) here."""
    embedded: EmbeddedServer | None = None
    if server is None:
        require_server("without --server, the embedded server")
        embedded = await asyncio.to_thread(EmbeddedServer().start)
        server = embedded.url
    try:
        async with ApiClient(
            server, api_key=api_key, concurrency=concurrency, ca_bundle=ca_bundle, timeout=timeout,
            compress=compress,
        ) as api:
            yield api
    finally:
        if embedded is not None:
            embedded.stop()


async def tune_async(data: Data, *, preset: str | None = None, **options: Any) -> TuneResult:
    return await run_tune(data, TuneSettings.build(preset, **options))


async def run_tune(data: Data, settings: TuneSettings) -> TuneResult:
    """One tuning run of ``data`` with ready ``settings``."""
    task = resolve_task(data, settings.shots, settings.seed, settings.test_data, settings.allow_fewer)
    default_dir = Path("runs") / f"{task.name}-{settings.method}-s{settings.seed}"
    run_dir = settings.out if settings.out is not None else default_dir
    # The client's linear algebra is small (a step projects 2q points of d through an [m * width, d] matrix), so
    # OpenBLAS's thread pool costs far more than it saves, most of all beside a busy server on the same cores:
    # about 15 ms a projection at v2's widths with the pool against 0.5 ms on one thread (BENCHMARKS "The client's
    # own time"). threadpoolctl sets it for the whole process while the run lasts and then restores the count.
    with threadpool_limits(limits=1, user_api="blas"):
        async with connect(settings.server, settings.api_key, settings.requests_in_flight(), settings.ca_bundle,
                           settings.timeout, settings.compress) as api:
            tuner = Tuner(api, task, settings, Path(run_dir), show_progress=settings.progress)
            return await tuner.run(resume=settings.resume)


def tune(data: Data, *, preset: str | None = None, **options: Any) -> TuneResult:
    return asyncio.run(tune_async(data, preset=preset, **options))


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _signature(returns: Any) -> inspect.Signature:
    keyword = inspect.Parameter.KEYWORD_ONLY
    fields = [
        inspect.Parameter(f.name, keyword, default=_default(f), annotation=f.type)
        for f in dataclasses.fields(TuneSettings)
    ]
    return inspect.Signature(
        [inspect.Parameter("data", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="Data"),
         inspect.Parameter("preset", keyword, default=None, annotation="str | None"), *fields],
        return_annotation=returns,
    )


def _docstring(summary: str) -> str:
    options = "\n".join(f"    {f.name}: {f.metadata['help']}" for f in dataclasses.fields(TuneSettings))
    return f"""{summary}

``data`` is a built-in dataset name, a FewShotTask, or your own images: a folder with one
sub-folder per class or a ``path,label`` CSV file (str or Path; a str naming a built-in
dataset means the dataset), an InMemoryData or a tuple ``(images, labels, class_names)``.
``preset`` names a set of options in ``presets.json``; the options given here override it.

Options (``TuneSettings``; unknown names raise ValueError):
{options}
"""


tune_async.__signature__ = _signature("TuneResult")  # type: ignore[attr-defined]
tune.__signature__ = _signature("TuneResult")  # type: ignore[attr-defined]
tune_async.__doc__ = _docstring("Tune a prompt for ``data`` within ``budget`` queries, in a running event loop.")
tune.__doc__ = _docstring("Tune a prompt for ``data`` within ``budget`` queries (``tune_async`` for asyncio code).")
