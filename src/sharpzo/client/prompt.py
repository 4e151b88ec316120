"""The BBT-style prompt space ctx = p0 + reshape(A @ w, (m, width)), and the unit every step-like constant is in.

p0 holds the token embeddings of the initial words ("a photo of a"), fetched from the
server. A is a fixed random projection, seeded and made here; the server never sees w or A.
Its entries have std alpha * std(p0) / sqrt(d).

Units. Every step-like constant of every optimiser is a length in *spreads*: the RMS, over
the m * width context entries, of the context displacement it causes, divided by std(p0),
the spread of the model's own token embeddings. A displacement dw of w moves the context
by about alpha * std(p0) * ||dw|| / sqrt(d) per entry (A's columns are random and nearly
orthogonal), so with the default alpha = 1

    length in spreads = ||dw|| / sqrt(d)  (``embedding_length``)

and a length r is a w-space vector of norm r * sqrt(d) (``w_norm``). Concretely:
- a w-space spread per coordinate (CMA-ES's sigma0, its box bound) is in spreads as it is;
- the population radius sigma * sqrt(d) is sigma spreads, and the sharpness radius
  rho is either absolute spreads or a fraction kappa of that radius (rho = kappa * sigma);
- a finite-difference step mu is the length of the probe displacement: w +- mu*u with
  u ~ N(0, I) or +-1 entries (RGE, SPSA) has length mu; a coordinate probe w +- s e_i (CGE)
  has length s / sqrt(d), so the CGE uses s = mu * sqrt(d) (``w_norm``). Either
  way the loss difference is about 2 * mu * ||grad|| times a standard normal, so one mu
  means the same signal against the forward pass's rounding for every estimator and d;
- learning rates are in spreads squared per unit of loss (the w update is -lr * grad).

Why this unit: the text tower only sees the context, and std(p0) is the scale of the
inputs it was trained on, so a length relative to it means the same perturbation of the
model whatever the model's width, d or the embedding spread, where a raw w-length means a
different one for each (the paper's w moves a context entry by 0.2 per unit, ours did by
4.4e-4). The loss's own scale (the logit scale) still sets the gradient, so learning rates
and the fp32 floor of mu (estimators.py) remain model-dependent and are measured, not
derived. alpha is kept as an explicit global multiplier of every length (at alpha != 1 a
constant c means c * alpha spreads, and learning rates c * alpha**2): it exists for
compatibility with runs and grids that set it, and 1 is the only value in which the
options' help texts are literal.

The image tower's spread. A visual prompt (client/prompt_map.py) is a set of tokens put beside
the image's own tokens as the first block sees them: the stems (patch embedding, class token,
positional embedding, pre-norm). So its unit is the spread of those patch tokens, which the
client cannot compute: the server reports it per image set (``ImageSetInfo.stem_spread``, the
std of the patch-token entries over the set's images) and the client takes the training set's
for every split. It is measured on the stems rather than read off the weights because the
tokens enter after the pre-norm, whose affine parameters (not the positional or patch
embeddings) set their scale; the stems of real images are the scale the blocks were trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_INIT_TEXT = "a photo of a"
DEFAULT_ALPHA = 1.0
TEXT_STREAM, VISUAL_STREAM = 0xA, 0xB  # the projections' random streams


def embedding_length(delta_w: np.ndarray) -> float:
    """The length in spreads (at alpha = 1) of a w-space displacement: ||dw|| / sqrt(d)."""
    delta = np.asarray(delta_w, dtype=float)
    return float(np.linalg.norm(delta) / np.sqrt(delta.shape[-1]))


def w_norm(length: float, dim: int) -> float:
    """The w-space norm of a displacement that is ``length`` spreads long."""
    return float(length * np.sqrt(dim))


@dataclass(frozen=True)
class PromptSpace:
    p0: np.ndarray  # [m, width] float32
    projection: np.ndarray  # [m * width, d] float32
    alpha: float
    seed: int
    spread: float  # the embedding-space length of one spread: std(p0) unless given

    @classmethod
    def create(
        cls, p0: np.ndarray, dim: int, seed: int, alpha: float = DEFAULT_ALPHA, spread: float | None = None,
        stream: int = TEXT_STREAM,
    ) -> PromptSpace:
        """``stream`` keeps the projections of the two towers independent under one seed."""
        if p0.ndim != 2:
            raise ValueError(f"p0 must be [m, width], got shape {p0.shape}")
        unit = float(np.std(p0)) if spread is None else spread
        if dim < 1 or alpha <= 0 or not unit > 0:
            raise ValueError(f"need dim >= 1, alpha > 0 and a positive spread, got dim={dim}, alpha={alpha}, "
                             f"spread={unit}")
        rng = np.random.default_rng([seed, stream])
        projection = rng.normal(0.0, alpha * unit / np.sqrt(dim), size=(p0.size, dim)).astype(np.float32)
        return cls(p0.astype(np.float32), projection, alpha, seed, unit)

    @property
    def dim(self) -> int:
        return int(self.projection.shape[1])

    @property
    def m(self) -> int:
        return int(self.p0.shape[0])

    def context_length(self, delta_w: np.ndarray) -> float:
        """The exact length in spreads of the context displacement A @ dw (RMS entry / std(p0))."""
        moved = self.projection.astype(float) @ np.asarray(delta_w, dtype=float)
        return float(np.sqrt(np.mean(moved**2)) / self.spread)

    def ctx(self, w: np.ndarray) -> np.ndarray:
        """[n, d] (or [d]) points to [n, m, width] context vectors."""
        points = np.atleast_2d(np.asarray(w, dtype=np.float32))
        if points.shape[1] != self.dim:
            raise ValueError(f"w has {points.shape[1]} coordinates; this prompt space has {self.dim}")
        return self.p0[None] + (points @ self.projection.T).reshape(len(points), *self.p0.shape)
