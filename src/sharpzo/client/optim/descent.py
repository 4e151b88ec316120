"""Random-direction ZO-SGD steps, shared by ZO-SGD and SharpZO's stage 2."""

from __future__ import annotations

import numpy as np

from .estimators import gaussian_directions, rge_gradient, rge_probes


class RandomDirectionDescent:
    """w ← w − η ĝ with the q-direction RGE ĝ, optionally restricted to a coordinate mask."""

    def __init__(self, w: np.ndarray, lr: float, mu: float, directions: int, rng: np.random.Generator) -> None:
        self.w = np.array(w, dtype=float)
        self.lr = lr
        self.mu = mu
        self.count = directions
        self.rng = rng
        self.gradient = np.zeros_like(self.w)  # the last step's estimate
        self._directions: np.ndarray | None = None

    def probes(self, mask: np.ndarray | None = None) -> np.ndarray:
        """The 2q probes of the next step, drawing fresh directions."""
        self._directions = gaussian_directions(self.rng, self.count, len(self.w), mask)
        return rge_probes(self.w, self.mu, self._directions)

    def step(self, losses: np.ndarray) -> None:
        if self._directions is None:
            raise RuntimeError("step() before probes()")
        self.gradient = rge_gradient(losses, self.mu, self._directions)
        self.w = self.w - self.lr * self.gradient
        self._directions = None
