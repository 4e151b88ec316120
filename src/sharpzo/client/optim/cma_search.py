"""pycma behind a small sample/update interface, drawing from the optimiser's own Generator.

Generations may be sampled ahead: ``sample()`` twice before ``update()`` draws the second generation
from the distribution as it stands, before the first is ranked (a lag of one generation, as a pipelined
step's probes are stale by the steps before it). Updates take the generations oldest first; one that
was drawn before the last update is told with pycma's point checks on (``check_points``), which clip
any candidate whose Mahalanobis length under the updated distribution a fresh sample would not reach.
Such a search adapts σ by cumulative step-size adaptation (CSA): pycma's default here, two-point
adaptation (TPA), puts a mirrored pair along the last mean shift into each generation and reads σ off
their ranks, which a generation drawn before that shift cannot carry (pycma warns of the inconsistency).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

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

    def __init__(self, dim: int, config: CMAConfig, rng: np.random.Generator, ahead: int = 1) -> None:
        """``ahead``: the most generations that will be sampled before the first of them is updated."""
        bounds = [None, None] if config.bound is None else [-config.bound, config.bound]
        options: dict[str, Any] = {
            "popsize": config.popsize,
            "bounds": bounds,
            "randn": GeneratorNormal(rng),
            "seed": np.nan,  # a seed would only reseed the global np.random, which is not used
            "verbose": -9,
            "verb_disp": 0,
            "verb_log": 0,
        }
        if ahead > 1:
            options["AdaptSigma"] = cma.sigma_adaptation.CMAAdaptSigmaCSA
        self._es = cma.CMAEvolutionStrategy(np.zeros(dim), config.sigma0, options)
        self._pending: deque[tuple[list[np.ndarray], int]] = deque()  # sampled, not yet ranked; with countiter then
        self._asked = False  # an ask since the last tell: pycma takes one tell per ask

    def sample(self) -> np.ndarray:
        """(S, d) candidates of the next generation, kept until their ``update``."""
        candidates = self._es.ask()
        self._asked = True
        self._pending.append((candidates, self._es.countiter))
        return np.array(candidates)

    def update(self, losses: np.ndarray) -> None:
        """Rank the oldest generation not yet ranked."""
        if not self._pending:
            raise RuntimeError("update() before sample()")
        candidates, drawn_at = self._pending.popleft()
        if not self._asked:  # a generation drawn ahead, told with nothing drawn since the last tell (the budget's end)
            self._es.ask()
        stale = drawn_at != self._es.countiter
        self._es.tell(candidates, np.asarray(losses, dtype=float), check_points=True if stale else None)
        self._asked = False

    @property
    def mean(self) -> np.ndarray:
        """The distribution mean in w space, repaired into the bounds."""
        return np.array(self._es.to_phenotype(self._es.mean, into_bounds=self._es.boundary_handler.repair))

    @property
    def sigma(self) -> float:
        return float(self._es.sigma)
