"""Spec fact 3 at the production setting: the estimators against autograd, above the forward pass's noise.

Setting: the default served model (``SHARPZO_AGREEMENT_MODEL`` overrides it; while the default's
weights are not shipped, sharpzo-standin-v1), 16-shot groceries (seed 0), d = 512, the default
prompt space and SharpZO's default finite-difference lengths. The real server scores the same
candidates alone and inside a batch of others (the noise the client sees); the 2d-candidate CGE
runs in-process through the server's own scoring code, as one batch, and is first checked to be
the same function as the served loss. Autograd runs through the same text tower.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from sharpzo.client.embedded import EmbeddedServer
from sharpzo.client.optim import SharpZOConfig
from sharpzo.client.optim.estimators import (
    FORWARD_NOISE_ULPS,
    cge_gradient,
    cge_probes,
    directional_derivatives,
    resolution,
    rge_probes,
)
from sharpzo.client.prompt import PromptSpace, w_norm
from sharpzo.server.project_models import DEFAULT_MODEL, STANDIN_V1, shipped_weights
from sharpzo.tools.agreement import InProcessScorer, forward_noise

DIM = 512
MODEL = os.environ.get("SHARPZO_AGREEMENT_MODEL") or (DEFAULT_MODEL if shipped_weights(DEFAULT_MODEL) else STANDIN_V1)


def ulp(loss: np.ndarray) -> np.ndarray:
    return np.spacing(np.abs(np.asarray(loss)).astype(np.float32)).astype(float)


@pytest.fixture(scope="module")
def scorer() -> InProcessScorer:
    torch.set_num_threads(2)
    return InProcessScorer.load(MODEL)


@pytest.mark.parametrize("model", [MODEL])
def test_estimators_agree_with_autograd_at_the_production_setting(model: str, scorer: InProcessScorer) -> None:
    space = PromptSpace.create(scorer.p0(), DIM, seed=0)
    rng = np.random.default_rng(0)
    w = rng.normal(0.0, 0.5, DIM)  # a CMA mean's distance from the origin, a third of sigma0
    config = SharpZOConfig()

    candidates = w + rng.normal(0.0, 0.01, (4, DIM))
    with EmbeddedServer(model=model, env={"SHARPZO_THREADS": "2"}) as server:
        filler = space.ctx(rng.normal(0.0, 1.5, (16, DIM)))
        noise = forward_noise(server.url, scorer.images, space.ctx(candidates), filler)
        alone = forward_noise(server.url, scorer.images, space.ctx(candidates), space.ctx(candidates[:0]))
    served_in_process = scorer.losses(space.ctx(candidates))
    assert np.all(noise <= FORWARD_NOISE_ULPS * ulp(served_in_process))  # batch composition: within the noise
    assert np.all(alone == 0)

    # the rounding jitter the floor is derived from: residual of a line through L(w + t u), |t| <= 1e-6 spreads
    u = rng.standard_normal(DIM)
    t = np.linspace(-1e-6, 1e-6, 33)
    line = scorer.losses(space.ctx(w + t[:, None] * u))
    jitter = (line - np.polyval(np.polyfit(t, line, 1), t)).std()
    assert jitter <= FORWARD_NOISE_ULPS * ulp(line).max()

    loss, gradient = scorer.gradient(space, w)
    step = w_norm(config.mask_mu, DIM)
    losses = scorer.losses(space.ctx(cge_probes(w, step)))
    cge = cge_gradient(losses, step)
    cosine = cge @ gradient / (np.linalg.norm(cge) * np.linalg.norm(gradient))
    assert cosine >= 0.9, f"CGE cosine {cosine:.4f} at mu={config.mask_mu} spreads"
    assert resolution(losses) >= 10

    directions = rng.standard_normal((16, DIM))
    exact = directions @ gradient
    for mu in (config.rge_mu, config.sharpness_mu):
        estimate = directional_derivatives(scorer.losses(space.ctx(rge_probes(w, mu, directions))), mu)
        relative = np.abs(estimate - exact) / np.abs(exact)
        # a direction almost orthogonal to the gradient has a derivative near 0 that no step resolves relatively
        resolvable = np.abs(exact) >= 0.1 * np.linalg.norm(gradient)
        assert resolvable.sum() >= 12
        assert relative[resolvable].max() <= 0.05, f"mu={mu}: relative errors {np.round(relative, 3)}"
