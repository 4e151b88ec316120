"""Spec fact 3: on the real server in fp32, CGE with mu = 1e-5 over HTTP agrees with autograd.

The autograd side runs here, in-process, on the same tiny model (the server seeds its
random weights) and the same images; the CGE side only talks to the server process.
"""

from __future__ import annotations

import asyncio
import io

import numpy as np
import torch
from PIL import Image

from sharpzo.client.api import ApiClient
from sharpzo.data.base import LabeledImages
from sharpzo.client.image_sets import upload_split
from sharpzo.client.optim.estimators import cge_gradient, cge_probes
from sharpzo.client.prompt import PromptSpace
from sharpzo.server.images import encode_images
from sharpzo.server.model import load_model
from sharpzo.server.settings import ServerSettings
from sharpzo.server.text import PromptedTextEncoder
from sharpzo.tools.whitebox import PromptLoss

from .conftest import encoded_image

CLASSES = ["apple", "pear", "orange"]
DIM = 8


def test_cge_over_http_matches_server_side_autograd(tiny_server) -> None:
    images = LabeledImages([encoded_image(500 + i) for i in range(9)], np.arange(9) % 3, CLASSES)
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1.0, DIM)

    async def black_box() -> tuple[np.ndarray, np.ndarray, float]:
        async with ApiClient(tiny_server.url) as api:
            p0 = await api.token_embeddings("a photo of a")
            space = PromptSpace.create(p0, DIM, seed=0, alpha=20.0)
            remote = await upload_split(api, images)
            estimates = {}
            for mu in (1e-5, 1e-3):
                scored = await api.score(remote.set_id, CLASSES, space.ctx(cge_probes(w, mu)), labels=remote.labels)
                estimates[mu] = cge_gradient(scored.loss, mu)
            at_w = await api.score(remote.set_id, CLASSES, space.ctx(w), labels=remote.labels)
            return estimates, space.projection, float(at_w.loss[0])

    cge, projection, loss_at_w = asyncio.run(black_box())

    loaded = load_model(ServerSettings(model="sharpzo-tiny", pretrained="none"))
    encoder = PromptedTextEncoder(loaded)
    features = encode_images(loaded, [Image.open(io.BytesIO(b)).convert("RGB") for b in images.images])
    loss = PromptLoss(encoder, loaded.logit_scale, CLASSES, features, torch.as_tensor(images.labels))
    _, p0 = encoder.token_embeddings("a photo of a")
    w_t = torch.tensor(w, dtype=torch.float32, requires_grad=True)
    ctx = p0 + (torch.as_tensor(projection) @ w_t).view_as(p0)
    value = loss(ctx)
    value.backward()
    autograd = w_t.grad.double().numpy()

    assert abs(value.item() - loss_at_w) < 1e-5  # the same function on both sides
    for mu, estimate in cge.items():
        # the server's fp32 loss moves in steps of one ulp, so a CGE coordinate moves in steps of ulp / (2 mu)
        rounding = float(np.spacing(np.float32(loss_at_w))) / (2 * mu)
        np.testing.assert_allclose(estimate, autograd, rtol=0, atol=4 * rounding + 1e-4, err_msg=f"mu={mu}")
    assert np.abs(autograd).max() > 40 * float(np.spacing(np.float32(loss_at_w))) / 2e-3  # not vacuous at mu=1e-3
