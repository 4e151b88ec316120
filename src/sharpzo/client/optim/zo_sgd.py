"""Dense ZO-SGD (MeZO style): q random Gaussian directions, 2q queries a step."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Ask, Evaluation, Info, Optimizer, Request
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
from .descent import RandomDirectionDescent
from .estimators import require_resolvable_step


@dataclass(frozen=True)
class ZOSGDConfig(OptimizerConfig):
    sequential = SEQUENTIAL

    lr: float = option(
        100.0, "constant learning rate η of w ← w − η ĝ, in spreads²/loss (best groceries validation on v2, checked "
        "on 3 selection seeds: BENCHMARKS.md)",
    )
    mu: float = option(
        1e-2, "length μ in spreads of the probes w ± μ u, the smoothing radius (chosen with lr; floor: "
        "estimators.py)",
    )
    directions: int = option(1, "q: random directions averaged per step, sent in one request (2q queries a step)")
    lr_scaling: LrScaling = option("sqrt", "the step with q directions is lr·√q (sqrt), lr·q (linear) or lr (none)")
    pipeline: int = pipeline_option()
    clip: float | None = clip_option()

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.lr > 0, f"lr must be positive, got {self.lr}")
        require_resolvable_step("mu", self.mu)
        require(self.directions >= 1, f"directions must be at least 1, got {self.directions}")
        require_stepping(self.pipeline, self.clip)


class ZOSGD(Optimizer[ZOSGDConfig]):
    """w starts at 0; ``solution`` is the current iterate."""

    name = "zo-sgd"
    config_type = ZOSGDConfig

    def __init__(self, dim: int, seed: int = 0, config: ZOSGDConfig | None = None) -> None:
        super().__init__(dim, seed, config)
        c = self.config
        lr = scaled_rate(c.lr, c.directions, 1, c.lr_scaling)
        self._descent = RandomDirectionDescent(np.zeros(dim), lr, c.mu, c.directions, self.rng, clip=c.clip)

    @property
    def solution(self) -> np.ndarray:
        return self._descent.w.copy()

    @property
    def stage(self) -> str:
        return "sgd"

    @property
    def depth(self) -> int:
        return self.config.pipeline

    def _request(self) -> Request:
        points, probe = self._descent.probes()
        return Request(Ask(points), "rge", probe)

    def _ahead_size(self) -> int:
        return 2 * self.config.directions

    def _absorb(self, request: Request, result: Evaluation) -> None:
        self._descent.step(result.loss, request.probed())
        self.iteration += 1

    def _details(self) -> Info:
        return {"grad_norm": float(np.linalg.norm(self._descent.gradient)), **self._descent.clip_details()}
