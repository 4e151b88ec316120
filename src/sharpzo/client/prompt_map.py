"""What w tunes: the text prompt, a visual prompt, or both (``--prompt text|visual|joint``), each tower in its own
prompt space (client/prompt.py) and its own spreads.

- text: ctx = p0 + A w, as always; no visual prompt is sent.
- visual: VPT-shallow tokens of a ViT image tower, v = p0_v + A_v w (m_v tokens of the tower's width, put after
  the class token, before the first block); the text prompt stays p0, sent once for every candidate.
- joint: one w = [w_t, w_v] of d = d_t + d_v coordinates, the first d_t driving the text prompt and the last d_v
  the visual one. By default d_v = d // 2: a joint run has the d (and so the optimisers' query costs) of a text run,
  shared about equally. Each part's projection is scaled for its own dimension, so a w step of r spreads moves the
  text tower by alpha * r of its spreads and the image tower by visual_alpha * r of its own; the text part is the
  text space of a text run with d_t coordinates, bit for bit.

visual_alpha is the image tower's alpha: its own scale, because the spreads put the two towers' token sizes on one
scale but not their gradients. Measured on groceries (BENCHMARKS "Do visual and joint prompts help"), a visual
step wants an lr about 1000x smaller than a text step; an optimiser's lr moves a tower by lr * alpha**2 and its
probes by mu * alpha, so visual_alpha is how one w (and one lr, sigma and mu per optimiser) serves both towers
of a joint prompt, with no optimiser knowing which coordinates drive which.

The optimisers see w alone: none knows which kind it tunes.

The initial visual prompt p0_v is zero. VPT starts its tokens at random because, trained by backprop, identical
tokens get identical gradients and never part; here the random projection A_v moves every token its own way from
the first step, so no random start is needed. A zero token carries no content (the block's pre-norm makes it its
bias alone), where a random one at VPT's scale would start the run about one spread away, far beyond the
optimisers' steps. Zero-shot is not w = 0 of a visual or joint space: tokens put in always take some attention, so
w = 0 there (m_v zero tokens) scores close to zero-shot but not the same (bench/visual_cost.py measures the
difference). The run's zero-shot evaluation is therefore the text prompt p0 with no visual prompt (``zero_shot``),
the exact zero-shot of a text run, and a visual or joint run that returns it returns no visual prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .prompt import VISUAL_STREAM, PromptSpace

PromptKind = Literal["text", "visual", "joint"]
PROMPT_KINDS: tuple[PromptKind, ...] = ("text", "visual", "joint")
# Chosen on groceries 4-shot validation (BENCHMARKS.md, "Do visual and joint prompts help"): over ZO-SGD and
# SharpZO with visual and joint prompts, the mean validation accuracy was 59.25% at 0.003, 58.75% at 0.01 and
# 57% or less at 0.03-1; 0.01, within half a point of the grid's end, is taken rather than the end itself.
DEFAULT_VISUAL_ALPHA = 0.01


def needs_stems(kind: PromptKind) -> bool:
    """Whether the kind sends visual prompts, so its image sets must keep their patch stems."""
    return kind != "text"


def dims(kind: PromptKind, dim: int, visual_dim: int | None) -> tuple[int, int]:
    """(d_t, d_v): how the ``dim`` coordinates of w split between the text and the visual prompt."""
    if kind == "text":
        return dim, 0
    if kind == "visual":
        return 0, dim
    d_v = dim // 2 if visual_dim is None else visual_dim
    if not 1 <= d_v < dim:
        raise ValueError(f"--prompt joint needs 1 <= visual_dim < dim (both towers tuned), got {d_v} of {dim}")
    return dim - d_v, d_v


@dataclass(frozen=True)
class Prompts:
    """What one request scores: P candidates, each a text prompt with its visual prompt (if any)."""

    text: np.ndarray  # [P, m, width], or [1, m, width]: one text prompt for every visual candidate
    visual: np.ndarray | None  # [P, m_v, visual width]; None: text prompts alone


@dataclass(frozen=True)
class PromptMap:
    """w [n, d] to the prompts of n candidates; ``text`` and ``visual`` are the spaces of the parts w drives."""

    kind: PromptKind
    p0: np.ndarray  # [m, width]: the initial (and zero-shot) text prompt
    text: PromptSpace | None
    visual: PromptSpace | None

    @classmethod
    def create(
        cls, kind: PromptKind, p0: np.ndarray, dim: int, seed: int, alpha: float, *, visual_dim: int | None = None,
        visual_tokens: int = 0, visual_width: int | None = None, visual_spread: float | None = None,
        visual_alpha: float = DEFAULT_VISUAL_ALPHA,
    ) -> PromptMap:
        """``visual_width`` (/v1/model) and ``visual_spread`` (the training set's stem_spread) only for visual kinds."""
        d_t, d_v = dims(kind, dim, visual_dim)
        text = PromptSpace.create(p0, d_t, seed, alpha) if d_t else None
        visual = None
        if d_v:
            if visual_width is None or visual_spread is None or visual_tokens < 1:
                raise ValueError(f"--prompt {kind} needs visual tokens, the image tower's width and its stems' spread")
            p0_v = np.zeros((visual_tokens, visual_width), dtype=np.float32)
            visual = PromptSpace.create(p0_v, d_v, seed, visual_alpha, spread=visual_spread, stream=VISUAL_STREAM)
        return cls(kind, p0.astype(np.float32), text, visual)

    @property
    def dim(self) -> int:
        return sum(space.dim for space in (self.text, self.visual) if space is not None)

    def prompts(self, w: np.ndarray) -> Prompts:
        """[n, d] (or [d]) points to n candidates."""
        points = np.atleast_2d(np.asarray(w, dtype=np.float32))
        if points.shape[1] != self.dim:
            raise ValueError(f"w has {points.shape[1]} coordinates; this prompt space has {self.dim}")
        d_t = 0 if self.text is None else self.text.dim
        text = self.p0[None] if self.text is None else self.text.ctx(points[:, :d_t])
        visual = None if self.visual is None else self.visual.ctx(points[:, d_t:])
        return Prompts(text, visual)

    def zero_shot(self) -> Prompts:
        """The zero-shot prompt: p0, no visual prompt (for the text kind, exactly ``prompts(0)``)."""
        return Prompts(self.p0[None], None)

    def record(self) -> dict[str, Any]:
        """What config.json keeps of the prompt space: the kind, the split of d, and the towers' spreads."""
        out: dict[str, Any] = {"kind": self.kind, "text_dim": 0, "visual_dim": 0}
        if self.text is not None:
            out.update(text_dim=self.text.dim, text_spread=self.text.spread)
        if self.visual is not None:
            out.update(visual_dim=self.visual.dim, visual_tokens=self.visual.m, visual_width=self.visual.p0.shape[1],
                       visual_spread=self.visual.spread, visual_alpha=self.visual.alpha)
        return out
