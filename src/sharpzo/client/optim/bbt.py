"""BBT: plain CMA-ES on w (popsize 40, bounds ±5)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Ask, Evaluation, Info, Optimizer, Request
from .cma_search import CMAConfig, CMASearch


@dataclass(frozen=True)
class BBTConfig(CMAConfig):
    """Plain CMA-ES: only the shared CMA options."""


class BBT(Optimizer[BBTConfig]):
    """Each ask is one CMA generation; ``solution`` is the CMA mean."""

    name = "bbt"
    config_type = BBTConfig

    def __init__(self, dim: int, seed: int = 0, config: BBTConfig | None = None) -> None:
        super().__init__(dim, seed, config)
        self._cma = CMASearch(dim, self.config, self.rng)

    @property
    def solution(self) -> np.ndarray:
        return self._cma.mean

    @property
    def stage(self) -> str:
        return "cma"

    def _request(self) -> Request:
        return Request(Ask(self._cma.sample()), "population")

    def _absorb(self, request: Request, result: Evaluation) -> None:
        self._cma.update(result.loss)
        self.iteration += 1

    def _details(self) -> Info:
        return {"sigma": self._cma.sigma}
