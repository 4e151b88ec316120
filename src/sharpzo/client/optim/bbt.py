"""BBT: plain CMA-ES on w (popsize 40, bounds ±2.5 spreads), two generations in flight by default."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Ask, Evaluation, Info, Optimizer, Request
from .cma_search import CMAConfig, CMASearch
from .config import option, require


@dataclass(frozen=True)
class BBTConfig(CMAConfig):
    """Plain CMA-ES, and how many of its generations may be in flight."""

    pipeline: int = option(
        2, "generations in flight at once: generation g+1 is sampled before g is ranked (from the distribution as "
        "it stands; cma_search.py), so a remote run waits one round trip per `pipeline` generations; 1: one at a "
        "time (2 against 1 and 3 on groceries validation, BENCHMARKS.md)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.pipeline >= 1, f"pipeline must be at least 1, got {self.pipeline}")


class BBT(Optimizer[BBTConfig]):
    """Each ask is one CMA generation; ``solution`` is the CMA mean."""

    name = "bbt"
    config_type = BBTConfig

    def __init__(self, dim: int, seed: int = 0, config: BBTConfig | None = None) -> None:
        super().__init__(dim, seed, config)
        self._cma = CMASearch(dim, self.config, self.rng, ahead=self.config.pipeline)

    @property
    def solution(self) -> np.ndarray:
        return self._cma.mean

    @property
    def stage(self) -> str:
        return "cma"

    @property
    def depth(self) -> int:
        return self.config.pipeline

    def _request(self) -> Request:
        return Request(Ask(self._cma.sample()), "population")

    def _ahead_size(self) -> int:
        return self.config.popsize

    def _absorb(self, request: Request, result: Evaluation) -> None:
        self._cma.update(result.loss)
        self.iteration += 1

    def _details(self) -> Info:
        return {"sigma": self._cma.sigma}
