"""White-box references that need the model's gradients: CoOp, VPT-shallow, both, and autograd of the tuning loss.

- CoOp (``text``): the context vectors of the text prompt, trained through the frozen text tower.
- VPT-shallow (``visual``): prompt tokens put after the image tower's class token, trained through the frozen
  image tower (the served path, server/visual.py), with the text prompt held at p0.
- ``joint``: both at once.

These run server side only (benchmarks and tests); the black-box client never sees them, and no route serves them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from sharpzo.server.text import PromptedTextEncoder
from sharpzo.server.visual import PromptedImageEncoder, all_pairs

Tuned = Literal["text", "visual", "joint"]


@dataclass(frozen=True)
class WhiteBoxPrompt:
    """A text context [m, width] and, for the visual kinds, visual prompt tokens [m_v, visual width]."""

    ctx: torch.Tensor
    visual: torch.Tensor | None = None


@dataclass
class PromptLoss:
    """Cross-entropy of a prompt over one image set, differentiable in the prompt.

    ``features`` are the set's normalised image features without a visual prompt; ``stems`` (with
    ``image_encoder``) let a visual prompt re-run the image tower's blocks, as the server does."""

    encoder: PromptedTextEncoder
    logit_scale: float
    class_names: list[str]
    features: torch.Tensor  # [N, E], normalised
    labels: torch.Tensor  # [N]
    image_encoder: PromptedImageEncoder | None = None
    stems: torch.Tensor | None = None  # [N, 1 + grid^2, visual width]

    def image_features(self, visual: torch.Tensor | None) -> torch.Tensor:
        if visual is None:
            return self.features
        if self.image_encoder is None or self.stems is None:
            raise ValueError("a visual prompt needs the image encoder and the set's stems")
        prompt, image = all_pairs(1, self.stems.shape[0], self.stems.device)
        return self.image_encoder.encode(visual[None], self.stems, prompt, image)

    def logits(self, prompt: WhiteBoxPrompt) -> torch.Tensor:
        ctx = prompt.ctx
        text = self.encoder.encode(ctx[None], self.encoder.suffixes(self.class_names, ctx.shape[0]))[0]
        return self.logit_scale * self.image_features(prompt.visual) @ text.T

    def __call__(self, prompt: WhiteBoxPrompt) -> torch.Tensor:
        return F.cross_entropy(self.logits(prompt), self.labels)

    def accuracy(self, prompt: WhiteBoxPrompt) -> float:
        with torch.no_grad():
            return float((self.logits(prompt).argmax(-1) == self.labels).float().mean())


def visual_start(tokens: int, width: int, spread: float, seed: int) -> torch.Tensor:
    """VPT's random start, at a tenth of the stems' spread: trained by backprop, identical (zero) tokens would get
    identical gradients and never part; this small a start keeps the first pass close to the unprompted one."""
    generator = torch.Generator().manual_seed(seed)
    return 0.1 * spread * torch.randn(tokens, width, generator=generator)


def train_prompt(
    loss: PromptLoss, start: WhiteBoxPrompt, tuned: Tuned = "text", steps: int = 200, lr: float = 2e-3,
    visual_lr: float | None = None,
) -> tuple[WhiteBoxPrompt, list[float]]:
    """Adam, full batch, on the ``tuned`` parts of ``start`` by backprop through the frozen towers. Adam's step is
    about ``lr`` per entry whatever the gradient's scale, so the visual tokens, whose entries live on the stems'
    scale rather than the token embeddings', take their own ``visual_lr`` (default ``lr``)."""
    if tuned != "text" and start.visual is None:
        raise ValueError(f"tuning {tuned} needs a visual start")
    ctx = start.ctx.detach().clone().requires_grad_(tuned != "visual")
    visual = None if start.visual is None else start.visual.detach().clone().requires_grad_(tuned != "text")
    groups = [{"params": [ctx], "lr": lr}] if ctx.requires_grad else []
    if visual is not None and visual.requires_grad:
        groups.append({"params": [visual], "lr": lr if visual_lr is None else visual_lr})
    optimizer = torch.optim.Adam(groups)
    history = []
    for _ in range(steps):
        value = loss(WhiteBoxPrompt(ctx, visual))
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        history.append(value.item())
    return WhiteBoxPrompt(ctx.detach(), None if visual is None else visual.detach()), history
