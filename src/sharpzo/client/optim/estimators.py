"""Zeroth-order gradient estimators, split into probe construction and gradient recovery.

Each estimator's probes form one batch (one ``Ask``), and the evaluated losses come
back in the same order: all ``+`` probes first, then all ``-`` probes.
"""

from __future__ import annotations

import numpy as np

from .config import require


def gaussian_directions(rng: np.random.Generator, count: int, dim: int, mask: np.ndarray | None = None) -> np.ndarray:
    """(count, dim) directions u ~ N(0, I), multiplied by a 0/1 mask when given (ũ = u ⊙ Ω)."""
    u = rng.standard_normal((count, dim))
    return u if mask is None else u * mask


def rademacher_directions(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    """(count, dim) directions with independent ±1 entries."""
    return rng.integers(0, 2, size=(count, dim)).astype(float) * 2.0 - 1.0


def rge_probes(w: np.ndarray, mu: float, directions: np.ndarray) -> np.ndarray:
    """(2q, d) probes: w + μ u_j for every direction u_j, then w − μ u_j."""
    step = mu * directions
    return np.concatenate([w + step, w - step])


def directional_derivatives(losses: np.ndarray, mu: float) -> np.ndarray:
    """δ_j = [L(w + μ u_j) − L(w − μ u_j)] / (2μ) from the losses of ``rge_probes``."""
    plus, minus = np.split(np.asarray(losses, dtype=float), 2)
    return (plus - minus) / (2.0 * mu)


def rge_gradient(
    losses: np.ndarray, mu: float, directions: np.ndarray, clip: DerivativeClip | None = None
) -> np.ndarray:
    """ĝ = (1/q) Σ_j δ_j u_j. Unbiased for Gaussian u; with a k-coordinate mask, for Ω ⊙ ∇L. ``clip`` bounds
    the δ_j first."""
    deltas = directional_derivatives(losses, mu)
    return (deltas if clip is None else clip(deltas)) @ directions / len(directions)


class DerivativeClip:
    """Bounds each directional derivative δ to ±``kappa`` times the median |δ| of the last ``window`` seen.

    A probe pair that straddles a cliff of the loss reads a δ tens to hundreds of times the usual one, and the
    step it makes (η·δ·u, with ‖u‖ ≈ √d) throws w far out, to where the prompt saturates and the loss is flat, so
    the run never comes back. Pipelined steps make that likelier: the steps in flight were taken before the
    climb was seen, so they keep climbing (BENCHMARKS.md, "Pipelined steps"). The median is of the raw |δ|, so
    an outlier does not raise the bound it is held to; nothing is clipped before ``warmup`` values are seen.
    """

    def __init__(self, kappa: float, window: int = 64, warmup: int = 8) -> None:
        self.kappa, self.window, self.warmup = kappa, window, warmup
        self.seen: list[float] = []
        self.clipped = 0  # δ values clipped so far

    def __call__(self, deltas: np.ndarray) -> np.ndarray:
        out = deltas
        if len(self.seen) >= self.warmup:
            bound = self.kappa * float(np.median(self.seen))
            out = np.clip(deltas, -bound, bound)
            self.clipped += int(np.count_nonzero(out != deltas))
        self.seen = [*self.seen, *np.abs(deltas).tolist()][-self.window:]
        return out


def cge_probes(w: np.ndarray, mu: float) -> np.ndarray:
    """Coordinate-wise probes w ± μ e_i: 2d queries."""
    return rge_probes(w, mu, np.eye(len(w)))


def cge_gradient(losses: np.ndarray, mu: float) -> np.ndarray:
    """ĝ_i = [L(w + μ e_i) − L(w − μ e_i)] / (2μ): the directional derivatives along e_i."""
    return directional_derivatives(losses, mu)


def es_gradient(points: np.ndarray, losses: np.ndarray, center: np.ndarray, sigma: float) -> np.ndarray:
    """ES estimate (1/(S σ²)) Σ_i (F_i − F̄)(w_i − θ) from a population sampled around θ.

    No metric correction is applied for CMA-ES: with samples from N(θ, σ²C) this
    estimates C·∇L (for locally linear L), the steepest-ascent direction in the search
    distribution's own metric. Inverting C would cost O(d³) and amplify the noise in
    directions CMA has shrunk; for an isotropic distribution it is exactly ∇L.
    """
    centred = np.asarray(losses, dtype=float)
    centred = centred - centred.mean()
    return centred @ (np.asarray(points) - center) / (len(centred) * sigma**2)


def sharpness_shift(gradient: np.ndarray, radius: float) -> np.ndarray:
    """ε* = radius · ĝ / ‖ĝ‖, the first-order worst-case perturbation (zero for ĝ = 0)."""
    norm = float(np.linalg.norm(gradient))
    return np.zeros_like(gradient) if norm == 0.0 else radius * gradient / norm


# Measured with bench/estimator_agreement.py (BENCHMARKS.md, "SharpZO units and estimators"). On stand-in v1
# (logit scale 14.6) the served fp32 loss was bit-identical across batches and jittered by 0.83 ulp (std) along a
# line; on v2 (logit scale 100) the same candidates served inside other batches differ by up to 2 ulps, and the
# line jitter is 1.3 ulp. So the noise of one loss is taken as 2 ulps, the larger model's maximum. With the
# largest gradient seen (zero-shot on v2, ‖g‖ = 4.3e-3 per spread), a probe of length μ spreads changes the loss
# by about 2μ‖g‖: at MIN_STEP that is about 4 noise units for the median direction (31% median relative error of
# a directional derivative), so shorter probes read mostly noise. The defaults of the estimators that must be
# accurate (CGE, SharpZO's RGE) are 1e-2: about 390 noise units, 0.5%.
FORWARD_NOISE_ULPS = 2.0
MIN_STEP = 1e-4


def require_resolvable_step(name: str, mu: float) -> None:
    require(
        mu >= MIN_STEP,
        f"{name}={mu:g} spreads is below the fp32 floor of {MIN_STEP:g}: its loss differences would be "
        "rounding noise (see estimators.MIN_STEP)",
    )


def resolution(losses: np.ndarray) -> float:
    """Median over the probe pairs of |L(w + μu) − L(w − μu)| in units of the forward pass's noise."""
    plus, minus = np.split(np.asarray(losses, dtype=float), 2)
    noise = FORWARD_NOISE_ULPS * np.spacing(np.abs(plus).astype(np.float32)).astype(float)
    return float(np.median(np.abs(plus - minus) / noise))
