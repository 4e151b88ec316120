"""Logits, cross-entropy and accuracy of candidate text features against image features."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Scores:
    logits: torch.Tensor | None  # [P, N, C]
    loss: torch.Tensor | None  # [P]
    accuracy: torch.Tensor | None  # [P]


def score(
    text: torch.Tensor, images: torch.Tensor, scale: float, labels: torch.Tensor | None, keep_logits: bool
) -> Scores:
    """``text`` [P, C, E] and ``images`` [N, E], or [P, N, E] for visual prompts (either P may be 1), are normalised;
    logits = scale * cosine."""
    if images.ndim == 2:
        logits = scale * torch.einsum("pce,ne->pnc", text.float(), images.float())
    else:
        n_cand = max(text.shape[0], images.shape[0])
        text, images = text.expand(n_cand, -1, -1), images.expand(n_cand, -1, -1)
        logits = scale * torch.einsum("pce,pne->pnc", text.float(), images.float())
    if labels is None:
        return Scores(logits, None, None)
    n_cand, n_img, n_cls = logits.shape
    flat_labels = labels.repeat(n_cand)
    loss = F.cross_entropy(logits.reshape(-1, n_cls), flat_labels, reduction="none").view(n_cand, n_img).mean(1)
    accuracy = (logits.argmax(-1) == labels).float().mean(1)
    return Scores(logits if keep_logits else None, loss, accuracy)
