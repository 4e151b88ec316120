"""The BBT-style prompt space: ctx = p0 + reshape(A @ w, (m, width)).

p0 holds the token embeddings of the initial words ("a photo of a"), fetched from the
server. A is a fixed random projection, seeded and made here; the server never sees w or A.
Its entries have std alpha * std(p0) / (sqrt(d) * sigma0), BBT's scaling: a w drawn with
per-coordinate spread sigma0 moves each context entry by about alpha token-embedding
spreads, so the same w-space step sizes suit any CLIP width.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_INIT_TEXT = "a photo of a"
DEFAULT_ALPHA = 0.5
SIGMA0 = 1.0


@dataclass(frozen=True)
class PromptSpace:
    p0: np.ndarray  # [m, width] float32
    projection: np.ndarray  # [m * width, d] float32
    alpha: float
    seed: int

    @classmethod
    def create(cls, p0: np.ndarray, dim: int, seed: int, alpha: float = DEFAULT_ALPHA) -> "PromptSpace":
        if p0.ndim != 2:
            raise ValueError(f"p0 must be [m, width], got shape {p0.shape}")
        if dim < 1 or alpha <= 0:
            raise ValueError(f"need dim >= 1 and alpha > 0, got dim={dim}, alpha={alpha}")
        std = alpha * float(np.std(p0)) / (np.sqrt(dim) * SIGMA0)
        rng = np.random.default_rng([seed, 0xA])
        projection = rng.normal(0.0, std, size=(p0.size, dim)).astype(np.float32)
        return cls(p0.astype(np.float32), projection, alpha, seed)

    @property
    def dim(self) -> int:
        return int(self.projection.shape[1])

    @property
    def m(self) -> int:
        return int(self.p0.shape[0])

    def ctx(self, w: np.ndarray) -> np.ndarray:
        """[n, d] (or [d]) points to [n, m, width] context vectors."""
        points = np.atleast_2d(np.asarray(w, dtype=np.float32))
        if points.shape[1] != self.dim:
            raise ValueError(f"w has {points.shape[1]} coordinates; this prompt space has {self.dim}")
        return self.p0[None] + (points @ self.projection.T).reshape(len(points), *self.p0.shape)
