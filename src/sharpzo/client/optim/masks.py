"""Sparse-coordinate masks for SharpZO's stage 2 ("Z-pruning")."""

from __future__ import annotations

from typing import Literal

import numpy as np

MaskScore = Literal["zscore", "zscore-abs", "magnitude"]
MaskKeep = Literal["lowest", "highest"]


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
    """0/1 mask over fraction·d coordinates (rounded half up, at least one) with the lowest or highest scores.

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
