"""The sharpness SharpZO claims to reduce, measured: the mean loss increase over random perturbations of a fixed length.

For ``pairs`` fixed random directions u_j (seeded, so every run and every point sees the
same ones) scaled to ``radius`` spreads (client/prompt.py), sharpness(w) is the mean of
[L(w + δ_j) + L(w − δ_j)]/2 − L(w). The antithetic pair cancels the gradient term, so it
is about ½ δᵀHδ averaged, r²·tr(H)/2 for the w-space Hessian H: ``hessian_trace`` reports
2·sharpness/r². Each measurement costs 1 + 2·pairs queries, charged as monitor queries; a tuning
run takes them (at SharpZO's stage switch and at the end) only with ``--probe-sharpness``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from .optim.base import Evaluation
from .prompt import w_norm

Evaluate = Callable[[np.ndarray], Awaitable[Evaluation]]


@dataclass(frozen=True)
class SharpnessProbe:
    radius: float = 0.1  # spreads; a tenth of a token-embedding spread per context entry
    pairs: int = 8
    seed: int = 0

    def directions(self, dim: int) -> np.ndarray:
        """(pairs, dim) perturbations of w-norm radius·√d, the same for every point and run."""
        u = np.random.default_rng([self.seed, 0x5A]).standard_normal((self.pairs, dim))
        return u * (w_norm(self.radius, dim) / np.linalg.norm(u, axis=1, keepdims=True))

    def points(self, w: np.ndarray) -> np.ndarray:
        """w, then w + δ_j for every j, then w − δ_j."""
        delta = self.directions(len(w))
        return np.concatenate([w[None], w + delta, w - delta])

    def summarise(self, losses: np.ndarray) -> dict[str, float]:
        losses = np.asarray(losses, dtype=float)
        plus, minus = np.split(losses[1:], 2)
        increase = (plus + minus) / 2.0 - losses[0]
        mean = float(increase.mean())
        return {
            "sharpness": mean,
            "sharpness_se": float(increase.std(ddof=1) / np.sqrt(self.pairs)) if self.pairs > 1 else float("nan"),
            "hessian_trace": 2.0 * mean / self.radius**2,
            "radius": self.radius,
            "loss": float(losses[0]),
            "queries": len(losses),
        }

    async def measure(self, w: np.ndarray, evaluate: Evaluate) -> dict[str, float]:
        result = await evaluate(self.points(np.asarray(w, dtype=float)))
        return self.summarise(result.loss)
