"""client/sharpness.py: the antithetic loss increase at a fixed embedding-space radius."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from sharpzo.client.optim import Evaluation
from sharpzo.client.prompt import embedding_length
from sharpzo.client.sharpness import SharpnessProbe

from .test_optim_support import Quadratic


def test_sharpness_on_a_quadratic_is_half_r_squared_times_the_curvature_along_the_probes() -> None:
    d = 32
    q = Quadratic(d, seed=4)
    w = np.random.default_rng(0).standard_normal(d)
    probe = SharpnessProbe(radius=0.2, pairs=6)
    delta = probe.directions(d)
    assert all(embedding_length(row) == pytest.approx(0.2) for row in delta)

    async def evaluate(points: np.ndarray) -> Evaluation:
        return Evaluation(q(points), np.zeros(len(points)))

    measured = asyncio.run(probe.measure(w, evaluate))
    # the gradient term cancels in each ± pair; what is left is ½ δᵀHδ, exactly, on a quadratic
    np.testing.assert_allclose(measured["sharpness"], np.mean(0.5 * (delta**2 * q.scales).sum(axis=1)), rtol=1e-9)
    assert measured["queries"] == 1 + 2 * 6 and measured["loss"] == pytest.approx(q(w[None])[0])
    # and 2·sharpness/r² estimates tr(H): unbiased over random directions
    assert measured["hessian_trace"] == pytest.approx(q.scales.sum(), rel=0.5)


def test_probe_directions_are_fixed_by_the_seed() -> None:
    assert np.array_equal(SharpnessProbe().directions(16), SharpnessProbe().directions(16))
    assert not np.array_equal(SharpnessProbe(seed=1).directions(16), SharpnessProbe().directions(16))
