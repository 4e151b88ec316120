"""White-box references that need the model's gradients: CoOp and autograd of the tuning loss.

These run server side only (benchmarks and tests); the black-box client never sees them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sharpzo.server.text import PromptedTextEncoder


@dataclass
class PromptLoss:
    """Cross-entropy of one context [m, width] over fixed image features, differentiable in the context."""

    encoder: PromptedTextEncoder
    logit_scale: float
    class_names: list[str]
    features: torch.Tensor  # [N, E], normalised
    labels: torch.Tensor  # [N]

    def logits(self, ctx: torch.Tensor) -> torch.Tensor:
        text = self.encoder.encode(ctx[None], self.encoder.suffixes(self.class_names, ctx.shape[0]))[0]
        return self.logit_scale * self.features @ text.T

    def __call__(self, ctx: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(ctx), self.labels)

    def accuracy(self, ctx: torch.Tensor) -> float:
        with torch.no_grad():
            return float((self.logits(ctx).argmax(-1) == self.labels).float().mean())


def train_coop(
    loss: PromptLoss, init_ctx: torch.Tensor, steps: int = 200, lr: float = 2e-3
) -> tuple[torch.Tensor, list[float]]:
    """CoOp: Adam on the context vectors, full batch, by backprop through the frozen text tower."""
    ctx = init_ctx.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([ctx], lr=lr)
    history = []
    for _ in range(steps):
        value = loss(ctx)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        history.append(value.item())
    return ctx.detach(), history
