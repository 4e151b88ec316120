"""Running many tuning runs (configs x seeds) concurrently against one server, resumably."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sharpzo.client.runner import connect, tune_async

# Options of the run itself rather than of its optimiser (see TuneSettings), e.g. prompt="joint".
RUN_SETTINGS = frozenset({"alpha", "visual_alpha", "dim", "prompt", "visual_dim", "visual_tokens", "directions"})


@dataclass(frozen=True)
class RunConfig:
    """A named configuration: ``name=method[:option=value,...]`` on the command line. An option named in
    RUN_SETTINGS sets the run (``settings``); any other is the optimiser's (``options``)."""

    name: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> RunConfig:
        name, _, spec = text.partition("=")
        method, _, rest = (spec or name).partition(":")
        options: dict[str, Any] = {}
        settings: dict[str, Any] = {}
        for item in filter(None, rest.split(",")):
            key, _, raw = item.partition("=")
            value = json.loads(raw) if raw not in ("", "None") else None
            (settings if key in RUN_SETTINGS else options)[key] = value
        return cls(name, method, options, settings)

    @property
    def group(self) -> str:
        """The method, and the prompt kind when not text: what a selection chooses one config for."""
        kind = self.settings.get("prompt", "text")
        return self.method if kind == "text" else f"{self.method} ({kind})"

    def describe(self) -> str:
        settings = "".join(f" {key}={value}" for key, value in self.settings.items())
        return f"`{self.name}` = {self.method} {json.dumps(self.options)}{settings}"


async def run_grid(
    configs: list[RunConfig],
    dataset: str,
    seeds: list[int],
    budget: int,
    out: Path,
    shots: int = 16,
    eval_every: int = 500,
    parallel: int = 3,
    server: str | None = None,
) -> list[Path]:
    """Every (config, seed) run; a run with a result.json is kept, an interrupted one resumes."""
    gate = asyncio.Semaphore(parallel)
    async with connect(server) as api:
        url = api.base_url

        async def one(config: RunConfig, seed: int) -> Path:
            run_dir = out / dataset / config.name / f"seed{seed}"
            if (run_dir / "result.json").exists():
                return run_dir
            async with gate:
                result = await tune_async(
                    dataset, server=url, method=config.method, budget=budget, shots=shots, seed=seed, out=run_dir,
                    resume=True, progress=False, eval_every=eval_every, probe_sharpness=True, options=config.options,
                    **config.settings,
                )
                print(f"{dataset} {config.name} seed {seed}: test {result.test_accuracy:.1%} "
                      f"(zero-shot {result.zero_shot_test_accuracy:.1%}), {result.queries} queries, "
                      f"{result.wall_seconds:.0f} s", flush=True)
            return run_dir

        return await asyncio.gather(*(one(c, s) for c in configs for s in seeds))
