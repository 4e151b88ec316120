"""Random-direction ZO-SGD steps, shared by ZO-SGD and SharpZO's stage 2."""

from __future__ import annotations

import numpy as np

from .base import Probe
from .estimators import DerivativeClip, gaussian_directions, rge_gradient, rge_probes, sharpness_shift


class RandomDirectionDescent:
    """w ← w − η ĝ with the q-direction RGE ĝ, optionally restricted to a coordinate mask.

    With ``sam_radius`` > 0 (ZO-SAM) the probes are centred at w + r·m/‖m‖ instead of w, where m is
    a running average of the estimates (weight ``sam_beta`` on the past): the step follows the
    gradient at the estimated worst nearby point, as SAM does, at no extra queries. One step's
    estimate is too noisy a direction for the ascent (cos ≈ 1/√d with the true gradient), hence m.
    """

    # class-level defaults, so that descents pickled before ZO-SAM existed resume as plain ones
    sam_radius: float = 0.0
    sam_beta: float = 0.9
    momentum: np.ndarray | None = None
    clip: DerivativeClip | None = None

    def __init__(self, w: np.ndarray, lr: float, mu: float, directions: int, rng: np.random.Generator,
                 sam_radius: float = 0.0, sam_beta: float = 0.9, clip: float | None = None) -> None:
        self.w = np.array(w, dtype=float)
        self.lr = lr
        self.mu = mu
        self.count = directions
        self.rng = rng
        self.gradient = np.zeros_like(self.w)  # the last step's estimate
        self.sam_radius = sam_radius
        self.sam_beta = sam_beta
        self.momentum = np.zeros_like(self.w) if sam_radius > 0 else None
        self.clip = None if clip is None else DerivativeClip(clip)

    def clip_details(self) -> dict[str, float | str]:
        """How many directional derivatives the clip bounded so far (nothing without a clip)."""
        return {} if self.clip is None else {"clipped": self.clip.clipped}

    def centre(self) -> np.ndarray:
        """Where the next step's probes are centred: w, or w + ε with ZO-SAM."""
        if self.momentum is None:
            return self.w
        return self.w + sharpness_shift(self.momentum, self.sam_radius)

    def probes(self, mask: np.ndarray | None = None) -> tuple[np.ndarray, Probe]:
        """The 2q probes of a step around the current centre, drawing fresh directions, and what ``step`` needs."""
        probe = Probe(gaussian_directions(self.rng, self.count, len(self.w), mask), self.mu)
        return rge_probes(self.centre(), probe.mu, probe.directions), probe

    def step(self, losses: np.ndarray, probe: Probe) -> None:
        """w ← w − η ĝ with the estimate from ``probe``'s losses (probes taken at an earlier w when pipelined)."""
        self.gradient = rge_gradient(losses, probe.mu, probe.directions, self.clip)
        self.w = self.w - self.lr * self.gradient
        if self.momentum is not None:
            self.momentum = self.sam_beta * self.momentum + (1.0 - self.sam_beta) * self.gradient
