"""Spec facts 1 and 2: the estimators' exactness, bias and variance, and the sharpness shift."""

from __future__ import annotations

import numpy as np
import pytest

from sharpzo.client.optim.estimators import (
    cge_gradient,
    cge_probes,
    directional_derivatives,
    es_gradient,
    gaussian_directions,
    rademacher_directions,
    rge_gradient,
    rge_probes,
    sharpness_shift,
)
from sharpzo.client.optim.masks import kept_gradient_ratio, mask_scores, select_mask, standardise

from .test_optim_support import Quadratic


def per_sample_rge(objective: Quadratic, w: np.ndarray, mu: float, directions: np.ndarray) -> np.ndarray:
    """One q = 1 RGE estimate per direction, all from a single batch of probes."""
    losses = objective(rge_probes(w, mu, directions))
    return directional_derivatives(losses, mu)[:, None] * directions


@pytest.mark.parametrize("mu", [1e-3, 1e-5])
def test_cge_equals_true_gradient_on_quadratic(mu: float) -> None:
    q = Quadratic(12, seed=3)
    w = np.random.default_rng(0).standard_normal(12)
    probes = cge_probes(w, mu)
    assert probes.shape == (24, 12)
    estimate = cge_gradient(q(probes), mu)
    # central differences are exact on a quadratic: only rounding (~eps·L/μ) remains
    np.testing.assert_allclose(estimate, q.gradient(w), rtol=0, atol=1e-9 / mu)


def test_rge_single_batch_is_the_mean_of_its_directions() -> None:
    q = Quadratic(5, seed=1)
    w = np.ones(5)
    u = gaussian_directions(np.random.default_rng(2), 3, 5)
    combined = rge_gradient(q(rge_probes(w, 1e-3, u)), 1e-3, u)
    np.testing.assert_allclose(combined, per_sample_rge(q, w, 1e-3, u).mean(axis=0), rtol=1e-12)


def test_rge_is_unbiased_with_second_moment_d_plus_2() -> None:
    d, n = 10, 200_000
    q = Quadratic(d, seed=5)
    w = np.zeros(d)
    g = q.gradient(w)
    samples = per_sample_rge(q, w, 1e-3, gaussian_directions(np.random.default_rng(7), n, d))
    # ‖mean − g‖ has expectation about sqrt((d + 1)/n)·‖g‖
    assert np.linalg.norm(samples.mean(axis=0) - g) < 3 * np.sqrt((d + 1) / n) * np.linalg.norm(g)
    second = (samples**2).sum(axis=1).mean()
    # (d + 2) is within 3%; d or d + 1 would be 17% / 8% off
    assert second == pytest.approx((d + 2) * g @ g, rel=0.03)


def test_masked_rge_second_moment_k_plus_2() -> None:
    d, k, n = 12, 4, 200_000
    q = Quadratic(d, seed=6)
    w = np.zeros(d)
    mask = np.zeros(d)
    mask[[1, 4, 7, 10]] = 1.0
    masked_g = mask * q.gradient(w)
    samples = per_sample_rge(q, w, 1e-3, gaussian_directions(np.random.default_rng(8), n, d, mask))
    assert np.all(samples[:, mask == 0] == 0)
    assert np.linalg.norm(samples.mean(axis=0) - masked_g) < 3 * np.sqrt((k + 1) / n) * np.linalg.norm(masked_g)
    second = (samples**2).sum(axis=1).mean()
    assert second == pytest.approx((k + 2) * masked_g @ masked_g, rel=0.03)
    assert abs(second - (d + 2) * masked_g @ masked_g) > 0.5 * second


def test_rademacher_directions_are_signs() -> None:
    u = rademacher_directions(np.random.default_rng(0), 50, 8)
    assert set(np.unique(u)) == {-1.0, 1.0}


def test_sharpness_shift_is_first_order_ascent_on_quadratic() -> None:
    """L(θ + ε*) − L(θ) − ρ‖∇L(θ)‖ = ½ ε*ᵀ H ε*, at most ½ λmax ρ²."""
    q = Quadratic(8, seed=2)
    theta = np.zeros(8)
    g = cge_gradient(q(cge_probes(theta, 1e-3)), 1e-3)
    base = q(theta[None])[0]
    for rho in (0.2, 0.1, 0.05, 0.01):
        eps = sharpness_shift(g, rho)
        assert np.linalg.norm(eps) == pytest.approx(rho)
        error = q((theta + eps)[None])[0] - base - rho * np.linalg.norm(q.gradient(theta))
        assert 0 <= error <= 0.5 * q.scales.max() * rho**2 + 1e-12
        assert error == pytest.approx(0.5 * eps @ (q.scales * eps), rel=1e-6, abs=1e-12)


PROJECTION = np.array([1.0, -2.0, 0.5])


def smooth_loss(points: np.ndarray) -> np.ndarray:
    """A non-quadratic smooth loss: softplus of a projection plus a sum of sines."""
    return np.log1p(np.exp(points @ PROJECTION)) + np.sin(points).sum(axis=1)


def smooth_loss_hessian(w: np.ndarray) -> np.ndarray:
    s = 1.0 / (1.0 + np.exp(-w @ PROJECTION))
    return s * (1.0 - s) * np.outer(PROJECTION, PROJECTION) - np.diag(np.sin(w))


def test_sharpness_shift_error_is_order_rho_squared_off_quadratics() -> None:
    theta = np.array([0.2, -0.1, 0.4])
    g = cge_gradient(smooth_loss(cge_probes(theta, 1e-5)), 1e-5)
    base = smooth_loss(theta[None])[0]
    direction = g / np.linalg.norm(g)
    limit = 0.5 * direction @ smooth_loss_hessian(theta) @ direction
    ratios = []
    for rho in (0.08, 0.04, 0.02, 0.01):
        error = smooth_loss((theta + sharpness_shift(g, rho))[None])[0] - base - rho * np.linalg.norm(g)
        ratios.append(error / rho**2)
    # error/ρ² tends to ½ ĝᵀHĝ/‖ĝ‖², with an O(ρ) deviation
    deviations = [abs(r - limit) for r in ratios]
    assert deviations[-1] < 0.05 * abs(limit)
    assert deviations == sorted(deviations, reverse=True)


def test_sharpness_shift_of_zero_gradient_is_zero() -> None:
    assert np.array_equal(sharpness_shift(np.zeros(4), 0.1), np.zeros(4))


def test_es_gradient_recovers_linear_gradient() -> None:
    d, n, sigma = 6, 100_000, 0.5
    g = np.arange(1.0, d + 1)
    theta = np.full(d, 0.3)
    points = theta + sigma * np.random.default_rng(4).standard_normal((n, d))
    estimate = es_gradient(points, points @ g, theta, sigma)
    np.testing.assert_allclose(estimate, g, rtol=0, atol=4 * np.linalg.norm(g) / np.sqrt(n) + 1e-9)


def test_standardise_and_mask_scores() -> None:
    x = np.array([1.0, 2.0, 3.0, 6.0])
    z = standardise(x)
    assert z.mean() == pytest.approx(0) and z.std() == pytest.approx(1)
    assert np.array_equal(standardise(np.full(3, 2.0)), np.zeros(3))
    w = np.array([1.0, -2.0, 0.5, 3.0])
    g = np.array([0.5, -1.0, 2.0, 0.1])
    np.testing.assert_allclose(mask_scores(w, g, "zscore"), w**2 * standardise(g**2))
    np.testing.assert_allclose(mask_scores(w, g, "zscore-abs"), w**2 * standardise(np.abs(g)))
    np.testing.assert_allclose(mask_scores(w, g, "magnitude"), w**2 * g**2)


def test_select_mask_keeps_lowest_or_highest() -> None:
    scores = np.array([5.0, -1.0, 3.0, 0.0, 9.0, 2.0])
    rng = np.random.default_rng(0)
    assert np.flatnonzero(select_mask(scores, 0.5, "lowest", rng)).tolist() == [1, 3, 5]
    assert np.flatnonzero(select_mask(scores, 0.5, "highest", rng)).tolist() == [0, 2, 4]
    assert select_mask(scores, 0.01, "lowest", rng).sum() == 1


def test_select_mask_breaks_ties_at_random() -> None:
    rng = np.random.default_rng(0)
    kept = np.array([select_mask(np.zeros(10), 0.5, "lowest", rng) for _ in range(200)])
    assert np.all(kept.sum(axis=1) == 5)
    assert 0.3 < kept[:, :5].mean() < 0.7  # not always the first half


def heterogeneous_quadratic(d: int) -> tuple[Quadratic, np.ndarray]:
    """A quadratic whose gradient magnitudes differ across coordinates by a factor of 30, and a w of spread 1."""
    q = Quadratic(d, seed=11)
    q.scales = np.random.default_rng(12).permutation(np.geomspace(0.1, 3.0, d))
    return q, np.random.default_rng(13).standard_normal(d)


def test_z_pruning_keeps_the_large_gradient_coordinates_and_a_random_mask_does_not() -> None:
    d = 200
    q, w = heterogeneous_quadratic(d)
    g = q.gradient(w)
    mu = 1e-2 * np.sqrt(d)  # a 0.01-spread CGE probe
    estimate = cge_gradient(q(cge_probes(w, mu)), mu)
    rng = np.random.default_rng(0)
    ratio = {keep: kept_gradient_ratio(select_mask(mask_scores(w, estimate, "zscore"), 0.5, keep, rng), g)
             for keep in ("highest", "lowest")}
    random = [kept_gradient_ratio(select_mask(rng.random(d), 0.5, "highest", rng), g) for _ in range(500)]
    # a random half keeps the average g² (ratio 0.98, 1%-99% range 0.49-1.44 here); pruning the least salient
    # keeps 1.84, and keeping the lowest scores 0.16
    assert np.quantile(random, 0.99) < ratio["highest"]
    assert ratio["lowest"] < np.quantile(random, 0.01)


def test_a_step_below_the_fp32_floor_is_refused() -> None:
    from sharpzo.client.optim import build_optimizer

    with pytest.raises(ValueError, match="below the fp32 floor"):
        build_optimizer("sharpzo", 4, mask_mu=1e-5)
    with pytest.raises(ValueError, match="below the fp32 floor"):
        build_optimizer("zo-sgd", 4, mu=1e-5)
