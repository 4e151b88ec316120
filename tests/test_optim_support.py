"""Shared helpers for the optimiser tests: objectives, and runs through ``Optimizer.optimize``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sharpzo.client.optim import Ask, Evaluation, Optimizer

Objective = Callable[[np.ndarray], np.ndarray]  # (n, d) points -> (n,) losses


class Quadratic:
    """L(w) = ½ Σ a_i (w_i − c_i)², plus Gaussian noise per query when ``noise`` > 0."""

    def __init__(self, dim: int, noise: float = 0.0, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.scales = np.linspace(1.0, 4.0, dim)
        self.center = rng.uniform(-1.0, 1.0, dim)
        self.noise = noise
        self._rng = np.random.default_rng(seed + 1)

    def gradient(self, w: np.ndarray) -> np.ndarray:
        return self.scales * (w - self.center)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        loss = 0.5 * ((points - self.center) ** 2 * self.scales).sum(axis=1)
        return loss + self.noise * self._rng.standard_normal(len(points)) if self.noise else loss


def rosenbrock(points: np.ndarray) -> np.ndarray:
    x, y = points[:, :-1], points[:, 1:]
    return (100.0 * (y - x**2) ** 2 + (1.0 - x) ** 2).sum(axis=1)


def evaluate(objective: Objective, ask: Ask) -> Evaluation:
    loss = objective(ask.points)
    return Evaluation(loss=loss, accuracy=1.0 / (1.0 + loss))


def run(optimizer: Optimizer, objective: Objective) -> list[Ask]:
    """``optimize`` within the budget the optimiser was made with; returns the asks told."""
    assert optimizer.budget is not None, "build it with a budget"
    told: list[Ask] = []
    optimizer.optimize(lambda ask: evaluate(objective, ask), callback=lambda ask, _: told.append(ask))
    return told


def run_rounds(optimizer: Optimizer, objective: Objective, rounds: int) -> list[Ask]:
    """``optimize`` for ``rounds`` ask/tell rounds, with no budget; returns the asks told."""
    told: list[Ask] = []
    optimizer.optimize(lambda ask: evaluate(objective, ask), rounds=rounds, callback=lambda ask, _: told.append(ask))
    return told
