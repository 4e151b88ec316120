"""Server-side references for the estimator checks: the served loss in-process, its autograd gradient, and noise.

``InProcessScorer`` runs the server's own scoring path (the prefix-cached text encoder, then
``server.scoring.score``) on one few-shot training set, so a 2d-candidate CGE is one batched
call instead of 2d HTTP queries. ``forward_noise`` measures what the black-box client sees:
the same candidates evaluated twice over HTTP, once alone and once inside a batch of others.
It speaks the wire protocol (``sharpzo.shared``) with httpx itself: tools never import the client.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Protocol

import httpx
import numpy as np
import torch
from pydantic import BaseModel

from sharpzo.data.base import LabeledImages
from sharpzo.data.fewshot import few_shot_task
from sharpzo.data.image_io import decode_rgb
from sharpzo.server.images import encode_images
from sharpzo.server.model import LoadedModel, load_model
from sharpzo.server.scoring import score
from sharpzo.server.settings import ServerSettings
from sharpzo.server.text import PromptedTextEncoder
from sharpzo.shared.protocol import API_PREFIX, ImageSetInfo, ImageSetRequest, LogitsRequest, LogitsResponse
from sharpzo.shared.tensors import Tensor
from sharpzo.tools.whitebox import PromptLoss, WhiteBoxPrompt

# an upload and a scoring pass of a few hundred candidates on a CPU server
HTTP_TIMEOUT = httpx.Timeout(600.0, connect=15.0)
JSON_HEADERS = {"Content-Type": "application/json"}


class PromptCoordinates(Protocol):
    """The client's prompt space (``client.prompt.PromptSpace``) as far as the gradient needs it."""

    @property
    def p0(self) -> np.ndarray: ...  # [m, width]: the context at w = 0

    @property
    def projection(self) -> np.ndarray: ...  # [m * width, d]: ctx = p0 + projection @ w


@dataclass
class InProcessScorer:
    loaded: LoadedModel
    loss_fn: PromptLoss
    images: LabeledImages

    @classmethod
    def load(cls, model: str, dataset: str = "groceries", shots: int = 16, seed: int = 0) -> InProcessScorer:
        loaded = load_model(ServerSettings(model=model))
        encoder = PromptedTextEncoder(loaded, chunk_tokens=4096)
        task = few_shot_task(dataset, shots, seed)
        features = encode_images(loaded, [decode_rgb(b) for b in task.train.images])
        labels = torch.as_tensor(task.train.labels)
        loss_fn = PromptLoss(encoder, loaded.logit_scale, task.class_names, features, labels)
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

    def gradient(self, space: PromptCoordinates, w: np.ndarray) -> tuple[float, np.ndarray]:
        """L(w) and dL/dw by autograd through the text tower (fp32), in the client's w coordinates."""
        w_t = torch.tensor(w, dtype=torch.float32, requires_grad=True)
        p0 = torch.as_tensor(space.p0)
        ctx = p0 + (torch.as_tensor(space.projection) @ w_t).view_as(p0)
        value = self.loss_fn(WhiteBoxPrompt(ctx))
        value.backward()
        assert w_t.grad is not None
        return float(value.item()), w_t.grad.double().numpy()


def _post(http: httpx.Client, path: str, body: BaseModel) -> bytes:
    response = http.post(f"{API_PREFIX}{path}", content=body.model_dump_json(), headers=JSON_HEADERS)
    response.raise_for_status()
    return response.content


def _served_losses(http: httpx.Client, set_id: str, images: LabeledImages, ctx: np.ndarray) -> np.ndarray:
    body = LogitsRequest(image_set=set_id, class_names=images.class_names, prompts=Tensor.from_numpy(ctx),
                         labels=[int(y) for y in images.labels], return_logits=False)
    scored = LogitsResponse.model_validate_json(_post(http, "/logits", body))
    assert scored.loss is not None  # sent with labels
    return np.asarray(scored.loss, dtype=float)


def forward_noise(url: str, images: LabeledImages, ctx: np.ndarray, filler: np.ndarray) -> np.ndarray:
    """|L_alone − L_in_batch| for each context of ``ctx``, through the server at ``url``.

    ``filler`` contexts surround the candidates in the second request, so they are encoded in
    another batch shape and position (and, on the CPU, other chunks of the text pass).
    """
    with httpx.Client(base_url=url.rstrip("/"), timeout=HTTP_TIMEOUT) as http:
        upload = ImageSetRequest(images=[base64.b64encode(b).decode("ascii") for b in images.images])
        stored = ImageSetInfo.model_validate_json(_post(http, "/image-sets", upload))
        if stored.count != len(images):
            raise RuntimeError(f"the server stored {stored.count} images of {len(images)}")
        alone = _served_losses(http, stored.id, images, ctx)
        mixed = _served_losses(http, stored.id, images, np.concatenate([filler, ctx, filler]))
    n = len(filler)
    return np.abs(alone - mixed[n : n + len(ctx)])
