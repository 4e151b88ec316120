"""The q-direction random-gradient estimator that ZO-SGD, SharpZO's stage 2 and SPSA-GC send as one request of 2q
candidates: unbiased on a quadratic, with a variance that falls as 1/q, whichever optimiser builds its probes."""

from __future__ import annotations

import numpy as np
import pytest

from sharpzo.client.optim import Evaluation
from sharpzo.client.optim.estimators import gaussian_directions, rge_gradient, rge_probes
from sharpzo.client.optim.zo_sgd import ZOSGD, ZOSGDConfig

DIM = 24
TRIALS = 4000


def quadratic(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """L(w) = ½ wᵀHw + bᵀw with H positive definite, a point w and its gradient there."""
    rng = np.random.default_rng(seed)
    root = rng.standard_normal((DIM, DIM)) / np.sqrt(DIM)
    hessian = root @ root.T + np.eye(DIM)
    b, w = rng.standard_normal(DIM), rng.standard_normal(DIM)
    return hessian, b, w


def loss(hessian: np.ndarray, b: np.ndarray, points: np.ndarray) -> np.ndarray:
    return 0.5 * np.einsum("nd,de,ne->n", points, hessian, points) + points @ b


def estimates(q: int, mu: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """TRIALS independent q-direction estimates at one point, and the true gradient."""
    hessian, b, w = quadratic()
    rng = np.random.default_rng(q)
    out = []
    for _ in range(TRIALS):
        directions = gaussian_directions(rng, q, DIM)
        out.append(rge_gradient(loss(hessian, b, rge_probes(w, mu, directions)), mu, directions))
    return np.array(out), hessian @ w + b


@pytest.mark.parametrize("q", [1, 4, 16])
def test_the_estimate_is_unbiased_on_a_quadratic(q: int) -> None:
    g_hat, g = estimates(q)
    # central differences are exact on a quadratic, so E[ĝ] = E[u uᵀ] g = g; the mean of TRIALS draws is within
    # 4 standard errors of it in every coordinate (per coordinate, Var ĝ_i = (‖g‖² + g_i²)/q for Gaussian u)
    se = np.sqrt((g @ g + g**2) / q / TRIALS)
    assert np.all(np.abs(g_hat.mean(0) - g) < 4 * se)


def test_the_variance_falls_as_one_over_q() -> None:
    # for Gaussian u, E‖ĝ − g‖² = (d + 1)‖g‖² / q
    errors = {}
    for q in (1, 4, 16):
        g_hat, g = estimates(q)
        errors[q] = float(np.mean(np.sum((g_hat - g) ** 2, axis=1)))
        assert errors[q] == pytest.approx((DIM + 1) * (g @ g) / q, rel=0.1)
    assert errors[1] / errors[4] == pytest.approx(4, rel=0.15) and errors[4] / errors[16] == pytest.approx(4, rel=0.15)


def test_zo_sgd_sends_2q_probes_in_one_ask_and_steps_along_their_estimate() -> None:
    hessian, b, _ = quadratic()
    q, lr, mu = 8, 0.05, 1e-3
    opt = ZOSGD(DIM, seed=1, config=ZOSGDConfig(lr=lr, mu=mu, directions=q))
    w = opt.solution
    ask = opt.ask()
    assert ask.points.shape == (2 * q, DIM)
    directions = (ask.points[:q] - w) / mu
    np.testing.assert_allclose(ask.points[q:], w - mu * directions)
    losses = loss(hessian, b, ask.points)
    opt.tell(Evaluation(losses, np.zeros(2 * q)))
    # the step is lr·√q along the average (lr_scaling="sqrt", the default)
    np.testing.assert_allclose(opt.solution, w - lr * np.sqrt(q) * rge_gradient(losses, mu, directions), atol=1e-12)
    assert opt.queries == 2 * q
