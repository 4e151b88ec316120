"""The prompted image encoder (VPT-shallow): visual prompt tokens in, normalised image features per candidate out.

An image's patch stem is open_clip's own ``VisionTransformer._embeds``: conv1, the class token, the positional
embedding and the pre-block norm. It does not depend on the prompt, so an image set keeps it and a query runs only
the blocks and the head. Candidate p's sequence for an image is ``[CLS] visual_prompts[p] patches``; the prompt
tokens enter the first block as they are (no positional embedding, no norm), as in VPT.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import nn


def visual_refusal(model: nn.Module, max_tokens: int) -> str | None:
    """Why this server takes no visual prompts (its image tower, or ``max_tokens`` = 0), or None when it does."""
    if max_tokens == 0:
        return "visual prompts are off on this server (max_visual_tokens = 0)"
    visual = getattr(model, "visual", None)
    if not isinstance(visual, VisionTransformer):
        return f"visual prompts need a ViT image tower; this model's is {type(visual).__name__}"
    if visual.attn_pool is not None or visual.pool_type != "tok":
        return "visual prompts need an image tower that pools its class token (no attentional or average pooling)"
    return None


class PromptedImageEncoder:
    """Runs on the model thread. ``chunk_tokens`` bounds one pass: forwards x sequence length."""

    def __init__(self, model: nn.Module, chunk_tokens: int) -> None:
        visual = model.visual
        assert isinstance(visual, VisionTransformer)  # visual_refusal said so
        self.visual = visual
        self.chunk_tokens = chunk_tokens
        self.dtype: torch.dtype = visual.conv1.weight.dtype

    @property
    def width(self) -> int:
        return int(self.visual.class_embedding.shape[0])

    def stems(self, pixels: torch.Tensor) -> torch.Tensor:
        """[N, 1 + grid^2, width] in the model's dtype: the tokens the first block sees without a prompt."""
        return self.visual._embeds(pixels.to(self.dtype))

    def encode(
        self, prompts: torch.Tensor, stems: torch.Tensor, prompt: torch.Tensor, image: torch.Tensor
    ) -> torch.Tensor:
        """Normalised features [R, embed_dim] of image ``image[r]`` (of stems [N, L, W]) under prompt ``prompt[r]``
        (of prompts [P, m_v, W]), for each row r."""
        prompts = prompts.to(self.dtype)
        step = max(1, self.chunk_tokens // (stems.shape[1] + prompts.shape[1]))
        features = []
        for p, n in zip(prompt.split(step), image.split(step)):
            x = torch.cat([stems[n, :1], prompts[p], stems[n, 1:]], dim=1)
            pooled, _ = self.visual._pool(self.visual.transformer(x))
            features.append(F.normalize((pooled @ self.visual.proj).float(), dim=-1))
        return torch.cat(features)


def all_pairs(n_prompts: int, n_images: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows (prompt, image) of every image under every prompt, prompt-major: row p * n_images + n."""
    prompt = torch.arange(n_prompts, device=device).repeat_interleave(n_images)
    return prompt, torch.arange(n_images, device=device).repeat(n_prompts)
