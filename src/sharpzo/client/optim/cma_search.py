"""pycma behind a small sample/update interface, drawing from the optimiser's own Generator."""

from __future__ import annotations

from dataclasses import dataclass

import cma
import numpy as np

from .config import OptimizerConfig, option, require


@dataclass(frozen=True)
class CMAConfig(OptimizerConfig):
    sigma0: float = option(
        1.5, "initial CMA-ES step size σ0 in spreads (chosen on groceries validation, bench/selection.py)"
    )
    popsize: int = option(40, "CMA-ES population size S (queries per generation)")
    bound: float | None = option(2.5, "box bound in spreads: w stays in [-bound, bound]; None for unbounded")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.sigma0 > 0, f"sigma0 must be positive, got {self.sigma0}")
        require(self.popsize >= 2, f"popsize must be at least 2, got {self.popsize}")
        require(self.bound is None or self.bound > 0, f"bound must be positive or None, got {self.bound}")


class GeneratorNormal:
    """pycma's ``randn`` option bound to a Generator: a picklable stand-in for ``np.random.randn``."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def __call__(self, *shape: int) -> np.ndarray:
        return self.rng.standard_normal(shape)


class CMASearch:
    """A CMA-ES run started at x0 = 0. ``sample()`` draws one generation, ``update()`` ranks it."""

    def __init__(self, dim: int, config: CMAConfig, rng: np.random.Generator) -> None:
        bounds = [None, None] if config.bound is None else [-config.bound, config.bound]
        options = {
            "popsize": config.popsize,
            "bounds": bounds,
            "randn": GeneratorNormal(rng),
            "seed": np.nan,  # a seed would only reseed the global np.random, which is not used
            "verbose": -9,
            "verb_disp": 0,
            "verb_log": 0,
        }
        self._es = cma.CMAEvolutionStrategy(np.zeros(dim), config.sigma0, options)
        self._candidates: list[np.ndarray] | None = None

    def sample(self) -> np.ndarray:
        """(S, d) candidates of the next generation, kept until ``update``."""
        self._candidates = self._es.ask()
        return np.array(self._candidates)

    def update(self, losses: np.ndarray) -> None:
        if self._candidates is None:
            raise RuntimeError("update() before sample()")
        self._es.tell(self._candidates, np.asarray(losses, dtype=float))
        self._candidates = None

    @property
    def mean(self) -> np.ndarray:
        """The distribution mean in w space, repaired into the bounds."""
        return np.array(self._es.to_phenotype(self._es.mean, into_bounds=self._es.boundary_handler.repair))

    @property
    def sigma(self) -> float:
        return float(self._es.sigma)
