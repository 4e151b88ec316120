"""Server-side references for the estimator checks: the served loss in-process, its autograd gradient, and noise.

``InProcessScorer`` runs the server's own scoring path (the prefix-cached text encoder, then
``server.scoring.score``) on one few-shot training set, so a 2d-candidate CGE is one batched
call instead of 2d HTTP queries. ``forward_noise`` measures what the black-box client sees:
the same candidates evaluated twice over HTTP, once alone and once inside a batch of others.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from sharpzo.client.api import ApiClient
from sharpzo.client.image_sets import upload_split
from sharpzo.client.prompt import PromptSpace
from sharpzo.data.base import LabeledImages
from sharpzo.data.fewshot import few_shot_task
from sharpzo.server.images import encode_images
from sharpzo.server.model import LoadedModel, load_model
from sharpzo.server.scoring import score
from sharpzo.server.settings import ServerSettings
from sharpzo.server.text import PromptedTextEncoder
from sharpzo.tools.whitebox import PromptLoss


@dataclass
class InProcessScorer:
    loaded: LoadedModel
    loss_fn: PromptLoss
    images: LabeledImages

    @classmethod
    def load(cls, model: str, dataset: str = "groceries", shots: int = 16, seed: int = 0) -> "InProcessScorer":
        loaded = load_model(ServerSettings(model=model))
        encoder = PromptedTextEncoder(loaded, chunk_tokens=4096)
        task = few_shot_task(dataset, shots, seed)
        features = encode_images(loaded, [Image.open(io.BytesIO(b)).convert("RGB") for b in task.train.images])
        loss_fn = PromptLoss(encoder, loaded.logit_scale, task.class_names, features, torch.as_tensor(task.train.labels))
        return cls(loaded, loss_fn, task.train)

    @property
    def class_names(self) -> list[str]:
        return self.loss_fn.class_names

    def p0(self, init_text: str = "a photo of a") -> np.ndarray:
        return self.loss_fn.encoder.token_embeddings(init_text)[1].numpy()

    def losses(self, ctx: np.ndarray) -> np.ndarray:
        """Mean cross-entropy of each [m, width] context in ``ctx`` [n, m, width], as the server computes it."""
        encoder = self.loss_fn.encoder
        prompts = torch.as_tensor(ctx, dtype=torch.float32)
        with torch.no_grad():  # not inference_mode: its cached suffix tensors would refuse autograd later
            text = encoder.encode(prompts, encoder.suffixes(self.class_names, prompts.shape[1]))
            scored = score(text, self.loss_fn.features, self.loaded.logit_scale, self.loss_fn.labels, keep_logits=False)
        assert scored.loss is not None
        return scored.loss.double().numpy()

    def gradient(self, space: PromptSpace, w: np.ndarray) -> tuple[float, np.ndarray]:
        """L(w) and dL/dw by autograd through the text tower (fp32), in the client's w coordinates."""
        w_t = torch.tensor(w, dtype=torch.float32, requires_grad=True)
        p0 = torch.as_tensor(space.p0)
        ctx = p0 + (torch.as_tensor(space.projection) @ w_t).view_as(p0)
        value = self.loss_fn(ctx)
        value.backward()
        assert w_t.grad is not None
        return float(value.item()), w_t.grad.double().numpy()


async def _served_twice(url: str, images: LabeledImages, ctx: np.ndarray, filler: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    async with ApiClient(url) as api:
        remote = await upload_split(api, images)
        alone = await api.score(remote.set_id, images.class_names, ctx, labels=remote.labels)
        mixed = np.concatenate([filler, ctx, filler])
        batched = await api.score(remote.set_id, images.class_names, mixed, labels=remote.labels)
    n = len(filler)
    return np.asarray(alone.loss, dtype=float), np.asarray(batched.loss, dtype=float)[n : n + len(ctx)]


def forward_noise(url: str, images: LabeledImages, ctx: np.ndarray, filler: np.ndarray) -> np.ndarray:
    """|L_alone − L_in_batch| for each context of ``ctx``, through the server at ``url``.

    ``filler`` contexts surround the candidates in the second request, so they are encoded in
    another batch shape and position (and, on the CPU, other chunks of the text pass).
    """
    alone, batched = asyncio.run(_served_twice(url, images, ctx, filler))
    return np.abs(alone - batched)
