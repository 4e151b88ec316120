"""Sparse-coordinate masks for SharpZO's stage 2 ("Z-pruning").

The score of coordinate i is w_i²·z(ĝ_i²), a saliency in the pruning sense: (w_i g_i)² is
the second-order size of the loss change from zeroing w_i, with the gradient term
standardised across coordinates. To *prune* is to stop updating the coordinates of least
saliency, so the mask keeps the highest scores (``keep="highest"``). That is also the
choice that serves the estimator: a masked two-point RGE over k coordinates descends by
at most about ‖Ω⊙g‖²/(L·(k + 2)) per step at its best learning rate, so for a fixed k it is
the coordinates with the largest gradients that pay for the queries. ``keep="lowest"`` is
the authors' released code (the Sparse-MeZO convention of perturbing small weights).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

MaskScore = Literal["zscore", "zscore-abs", "magnitude"]
MaskKeep = Literal["highest", "lowest"]


def standardise(x: np.ndarray) -> np.ndarray:
    """z(x) = (x − mean) / std, all zeros when x is constant."""
    std = float(x.std())
    return np.zeros_like(x) if std == 0.0 else (x - x.mean()) / std


def mask_scores(w: np.ndarray, gradient: np.ndarray, kind: MaskScore) -> np.ndarray:
    """zscore: w²·z(ĝ²) (paper); zscore-abs: w²·z(|ĝ|) (authors' code); magnitude: w²·ĝ²."""
    if kind == "zscore":
        return w**2 * standardise(gradient**2)
    if kind == "zscore-abs":
        return w**2 * standardise(np.abs(gradient))
    return w**2 * gradient**2


def select_mask(scores: np.ndarray, fraction: float, keep: MaskKeep, rng: np.random.Generator) -> np.ndarray:
    """0/1 mask over fraction·d coordinates (rounded half up, at least one) with the highest or lowest scores.

    Ties are broken at random: at w = 0 every score is 0, and a stable sort would
    otherwise always keep the first coordinates.
    """
    d = len(scores)
    k = max(1, int(fraction * d + 0.5))
    order = np.lexsort((rng.random(d), scores))
    chosen = order[:k] if keep == "lowest" else order[d - k :]
    mask = np.zeros(d)
    mask[chosen] = 1.0
    return mask


def kept_gradient_ratio(mask: np.ndarray, gradient: np.ndarray) -> float:
    """Mean g_i² over the kept coordinates divided by the mean over all: 1 in expectation for a random mask."""
    squared = np.asarray(gradient, dtype=float) ** 2
    return float(squared[mask > 0].mean() / squared.mean())
