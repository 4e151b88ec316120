"""SPSA with gradient correction (ZIP / BlackVIP style), written from the published descriptions.

Each step estimates the gradient at the look-ahead point w + β m with ``pairs``
two-sided perturbations, clips its norm, then takes a Nesterov-style momentum step
m ← β m − a_k ĝ, w ← w + m, with Spall's gains a_k = a/(k+1+A)^α, c_k = c/(k+1)^γ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .base import Ask, Evaluation, Info, Optimizer, Probe, Request
from .config import (
    SEQUENTIAL,
    LrScaling,
    OptimizerConfig,
    clip_option,
    option,
    pipeline_option,
    require,
    require_stepping,
    scaled_rate,
)
from .estimators import (
    DerivativeClip,
    gaussian_directions,
    rademacher_directions,
    require_resolvable_step,
    rge_gradient,
    rge_probes,
)

GAIN_PAIRS = 5  # the pairs at which ``a`` was chosen


@dataclass(frozen=True)
class SPSAGCConfig(OptimizerConfig):
    sequential = SEQUENTIAL

    pairs: int = option(
        5, "two-sided perturbation pairs averaged per step, sent in one request (2·pairs queries a step)",
    )
    gain_scaling: LrScaling = option(
        "sqrt", f"a is the gain at {GAIN_PAIRS} pairs; with P pairs it is a·√(P/{GAIN_PAIRS}) (sqrt), "
        f"a·P/{GAIN_PAIRS} (linear) or a (none)",
    )
    perturbation: Literal["rademacher", "gaussian"] = option("rademacher", "distribution of the perturbation entries")
    a: float = option(
        250.0, "learning-rate gain in spreads²/loss: a_k = a / (k + 1 + A)^alpha (chosen on groceries validation, "
        "bench/selection.py)",
    )
    A: float = option(50.0, "stability constant of the learning-rate schedule")
    alpha: float = option(0.602, "learning-rate decay exponent")
    c: float = option(5e-4, "perturbation length in spreads: c_k = c / (k + 1)^gamma (floor: estimators.py)")
    gamma: float = option(0.101, "perturbation decay exponent")
    momentum: float = option(0.9, "β of the gradient-corrected (look-ahead) momentum; 0 gives plain SPSA")
    momentum_ahead: bool = option(
        False, "with steps in flight, probe where momentum alone carries w by the time this step is applied: "
        "w + (β + … + β^(n+1))·m with n steps in flight, rather than w + β·m, which the n steps leave behind; "
        "the same with pipeline 1. Not chosen on 10 validation seeds (-0.6 +- 0.7 points against the default), "
        "though on 10 test seeds it took back the 3 points the default's 8 steps in flight cost there "
        "(BENCHMARKS.md, \"Pipelined steps\")",
    )
    clip_norm: float | None = option(
        20.0, "clip the gradient estimate to this norm (loss per spread·√d); None disables clipping",
    )
    pipeline: int = pipeline_option()
    clip: float | None = clip_option()

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.pairs >= 1, f"pairs must be at least 1, got {self.pairs}")
        require_stepping(self.pipeline, self.clip)
        require(self.a > 0, f"a must be positive, got {self.a}")
        require_resolvable_step("c", self.c)
        require(0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1), got {self.momentum}")
        require(self.clip_norm is None or self.clip_norm > 0, "clip_norm must be positive or None")


def clip_to_norm(g: np.ndarray, max_norm: float | None) -> np.ndarray:
    norm = float(np.linalg.norm(g))
    return g if max_norm is None or norm <= max_norm else g * (max_norm / norm)


class SPSAGC(Optimizer[SPSAGCConfig]):
    """w starts at 0; ``solution`` is the iterate w (not the look-ahead point)."""

    name = "spsa-gc"
    config_type = SPSAGCConfig

    def __init__(self, dim: int, seed: int = 0, config: SPSAGCConfig | None = None) -> None:
        super().__init__(dim, seed, config)
        self._w = np.zeros(dim)
        self._velocity = np.zeros(dim)
        self._gradient = np.zeros(dim)
        self._asked = 0  # steps asked, told or not: step k's perturbation length is c_k
        self._clip = None if self.config.clip is None else DerivativeClip(self.config.clip)

    @property
    def solution(self) -> np.ndarray:
        return self._w.copy()

    @property
    def stage(self) -> str:
        return "spsa"

    @property
    def depth(self) -> int:
        return self.config.pipeline

    def _learning_rate(self) -> float:
        c = self.config
        return float(scaled_rate(c.a, c.pairs, GAIN_PAIRS, c.gain_scaling) / (self.iteration + 1 + c.A) ** c.alpha)

    def _perturbation_size(self, step: int) -> float:
        c = self.config
        return float(c.c / (step + 1) ** c.gamma)

    def _request(self) -> Request:
        c = self.config
        if c.perturbation == "rademacher":
            perturbations = rademacher_directions(self.rng, c.pairs, self.dim)
        else:
            perturbations = gaussian_directions(self.rng, c.pairs, self.dim)
        probe = Probe(perturbations, self._perturbation_size(self._asked))
        self._asked += 1
        return Request(Ask(rge_probes(self._look_ahead(), probe.mu, probe.directions)), "spsa", probe)

    def _look_ahead(self) -> np.ndarray:
        """Where the next step's gradient is taken: w + β·m, or with ``momentum_ahead`` the point momentum carries
        w to over the steps in flight (their estimates, not in yet, left out) and one more."""
        beta = self.config.momentum
        ahead = len(self._queue) if self.config.momentum_ahead else 0
        return self._w + sum(beta ** (j + 1) for j in range(ahead + 1)) * self._velocity

    def _ahead_size(self) -> int:
        return 2 * self.config.pairs

    def _absorb(self, request: Request, result: Evaluation) -> None:
        probe = request.probed()
        raw = rge_gradient(result.loss, probe.mu, probe.directions, self._clip)
        self._gradient = clip_to_norm(raw, self.config.clip_norm)
        self._velocity = self.config.momentum * self._velocity - self._learning_rate() * self._gradient
        self._w = self._w + self._velocity
        self.iteration += 1

    def _details(self) -> Info:
        return {
            "lr": self._learning_rate(),
            "c": self._perturbation_size(self.iteration),
            "grad_norm": float(np.linalg.norm(self._gradient)),
            "step_norm": float(np.linalg.norm(self._velocity)),
            **({} if self._clip is None else {"clipped": self._clip.clipped}),
        }
