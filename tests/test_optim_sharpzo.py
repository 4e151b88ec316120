"""SharpZO: query accounting per stage, the shifted-fitness rule, masks and the switch rules."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sharpzo.client.optim import Ask, Evaluation, SharpZO, build_optimizer

from .test_optim_support import Quadratic, evaluate, run, run_rounds

D, S = 6, 8


def sharpzo(**options: Any) -> SharpZO:
    """The paper's version (CGE sharpness and masks) unless a test asks for another."""
    optimizer = build_optimizer("sharpzo", D, seed=0, **{"popsize": S, "sharpness": "cge", **options})
    assert isinstance(optimizer, SharpZO)
    return optimizer


def ask_sizes(optimizer: SharpZO, rounds: int) -> list[int]:
    return [len(a.points) for a in run_rounds(optimizer, Quadratic(D, seed=1), rounds)]


def test_cge_variant_spends_2d_plus_s_per_iteration_2_per_step_and_2d_per_mask() -> None:
    opt = sharpzo(switch_iterations=3, mask_interval=4)
    sizes = ask_sizes(opt, 3 * 2 + 1 + 4 + 1 + 4)
    assert sizes == [2 * D, S] * 3 + [2 * D] + [2] * 4 + [2 * D] + [2] * 4
    assert opt.spent == {"sharpness": 3 * 2 * D, "population": 3 * S, "mask": 2 * 2 * D, "step": 8 * 2}
    assert (opt.stage1_iterations, opt.stage2_steps, opt.iteration) == (3, 8, 11)
    assert opt.queries == sum(sizes)


def test_es_variant_spends_s_per_iteration_and_nothing_on_masks() -> None:
    opt = sharpzo(switch_iterations=3, mask_interval=4, sharpness="es")
    sizes = ask_sizes(opt, 3 + 10)
    assert sizes == [S] * 3 + [2] * 10
    assert opt.spent == {"population": 3 * S, "step": 20}
    assert opt.info()["mask_fraction"] == 0.5


def test_rge_variant_spends_2_probes_per_iteration() -> None:
    opt = sharpzo(switch_iterations=2, sharpness="rge", sharpness_probes=3, mask_fraction=1.0)
    assert ask_sizes(opt, 2 * 2 + 3) == [6, S, 6, S, 2, 2, 2]


def test_rho_zero_is_plain_cma_and_dense_stage_2_asks_no_mask() -> None:
    opt = sharpzo(switch_iterations=2, rho=0.0, mask_fraction=1.0)
    assert ask_sizes(opt, 2 + 3) == [S, S, 2, 2, 2]
    assert "mask" not in opt.spent and "sharpness" not in opt.spent


def test_default_switch_is_a_third_of_the_run_budget() -> None:
    """Both stages run at the defaults: stage 1 ends at the first iteration end past budget / 3."""
    budget = 3 * 4 * S + 20  # a third of it is passed after the 5th generation of S
    opt = sharpzo(sharpness="es", mask_fraction=1.0, budget=budget)
    sizes = [len(a.points) for a in run(opt, Quadratic(D, seed=1))]
    assert sizes[:5] == [S] * 5 and sizes[5:] == [2] * ((budget - 5 * S) // 2)
    assert 5 * S >= budget / 3 > 4 * S


def test_switch_by_queries_happens_at_the_first_iteration_end_past_the_threshold() -> None:
    opt = sharpzo(switch_iterations=None, switch_queries=3 * (2 * D + S) - 1, mask_fraction=1.0)
    sizes = ask_sizes(opt, 3 * 2 + 2)
    assert sizes == [2 * D, S] * 3 + [2, 2]


def test_switch_at_zero_starts_in_stage_2_from_the_origin() -> None:
    opt = sharpzo(switch_iterations=0, mask_fraction=1.0)
    assert opt.stage == "zo" and np.array_equal(opt.solution, np.zeros(D))
    assert len(opt.ask().points) == 2


def linear(points: np.ndarray) -> np.ndarray:
    return points @ np.arange(1.0, D + 1)


def test_population_is_shifted_by_eps_star_and_cma_is_told_the_unshifted_candidates() -> None:
    """On a linear loss the shift does not change the ranking, so CMA-ES must follow the same path."""
    g = np.arange(1.0, D + 1)
    eps = 0.1 * np.sqrt(D) * g / np.linalg.norm(g)  # 0.1 spreads: a w-norm of 0.1·√d
    shifted = [a.points for a in run_rounds(sharpzo(rho=0.1, rho_scale="absolute"), linear, 6) if len(a.points) == S]
    plain = [a.points for a in run_rounds(sharpzo(rho=0.0), linear, 3)]
    for with_shift, without in zip(shifted, plain, strict=True):
        np.testing.assert_allclose(with_shift - without, np.broadcast_to(eps, without.shape), atol=1e-9)


def test_population_radius_is_a_fraction_of_sigma_sqrt_d() -> None:
    opt = sharpzo(rho=0.05, rho_scale="population", sigma0=2.0)
    run_rounds(opt, linear, 1)
    assert opt.info()["shift_norm"] == pytest.approx(0.05 * 2.0 * np.sqrt(D))


def test_the_old_sigma_scale_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="not by the population radius"):
        sharpzo(rho_scale="sigma")


def test_es_variant_shifts_by_the_previous_generations_gradient() -> None:
    shifted = run_rounds(sharpzo(sharpness="es", rho=0.1, rho_scale="absolute"), linear, 3)
    plain = run_rounds(sharpzo(rho=0.0), linear, 3)
    assert np.array_equal(shifted[0].points, plain[0].points)  # no ES gradient before the first generation
    shift = shifted[1].points - plain[1].points
    assert np.allclose(shift, shift[0])
    assert np.linalg.norm(shift[0]) == pytest.approx(0.1 * np.sqrt(D))
    g = np.arange(1.0, D + 1)
    assert shift[0] @ g / np.linalg.norm(shift[0] * np.linalg.norm(g)) > 0.5  # an ascent direction


def test_stage_2_probes_and_steps_move_only_the_masked_coordinates() -> None:
    quadratic = Quadratic(D, seed=1)
    opt = sharpzo(switch_iterations=1, mask_fraction=0.5, mask_interval=100)
    run_rounds(opt, quadratic, 4)  # CGE, population, mask, one step
    probes = opt.ask().points
    moved = np.flatnonzero(probes[0] != probes[1])
    assert len(moved) == D // 2
    np.testing.assert_allclose(probes.mean(axis=0), opt.solution, atol=1e-12)
    before = opt.solution
    opt.tell(evaluate(quadratic, opt.ask()))
    assert set(np.flatnonzero(opt.solution != before)) <= set(moved)


def test_stage_2_starts_from_the_cma_mean() -> None:
    opt = sharpzo(switch_iterations=2, mask_fraction=1.0)
    run_rounds(opt, Quadratic(D, seed=1), 4)
    mean = opt.solution
    probes = opt.ask().points
    assert opt.stage == "zo"
    np.testing.assert_allclose(probes.mean(axis=0), mean, atol=1e-12)


class ScriptedValidation:
    """Train loss from a quadratic; validation accuracy read from a script, one entry per val ask."""

    def __init__(self, accuracies: list[float]) -> None:
        self.accuracies = list(accuracies)
        self.quadratic = Quadratic(D, seed=1)

    def __call__(self, ask: Ask) -> Evaluation:
        if ask.split == "val":
            return Evaluation(np.zeros(1), np.array([self.accuracies.pop(0)]))
        return evaluate(self.quadratic, ask)


def test_auto_switch_after_patience_iterations_without_a_real_improvement() -> None:
    # best 0.5 → 0.6 → (0.605, 0.609 stall) → 0.65 → (0.655, 0.659, 0.6599 stall: 3 in a row)
    script = ScriptedValidation([0.5, 0.6, 0.605, 0.609, 0.65, 0.655, 0.659, 0.6599])
    opt = sharpzo(switch_iterations=None, auto_switch=True, patience=3, rho=0.0, mask_fraction=1.0)
    val_asks = 0
    while opt.stage == "cma":
        ask = opt.ask()
        if ask.split == "val":
            val_asks += 1
            assert ask.points.shape == (1, D)
            np.testing.assert_array_equal(ask.points[0], opt.solution)
        opt.tell(script(ask))
    assert val_asks == 8 and opt.stage1_iterations == 8 and not script.accuracies
    assert opt.spent == {"population": 8 * S, "val": 8}
    assert opt.ask().split == "train" and len(opt.ask().points) == 2


def test_auto_switch_with_cge_asks_val_after_each_population() -> None:
    script = ScriptedValidation([0.5] * 3)
    opt = sharpzo(switch_iterations=None, auto_switch=True, patience=2, mask_fraction=1.0)
    splits = []
    while opt.stage == "cma":
        ask = opt.ask()
        splits.append((len(ask.points), ask.split))
        opt.tell(script(ask))
    assert splits == [(2 * D, "train"), (S, "train"), (1, "val")] * 3


def test_a_mask_refresh_that_does_not_fit_gives_way_to_steps() -> None:
    opt = build_optimizer(
        "sharpzo", 6, seed=0, popsize=4, switch_iterations=0, switch_queries=None, mask_interval=3, sharpness="cge"
    )
    assert len(opt.ask().points) == 12  # the first mask: 2d coordinate probes
    assert opt.decline()  # too expensive: steps instead, dense since there is no mask yet
    for _ in range(3):
        assert len(opt.ask().points) == 2
        opt.tell(Evaluation(np.ones(2), np.zeros(2)))
    assert len(opt.ask().points) == 12 and opt.decline()  # every K = 3 steps a refresh is due again
    assert len(opt.ask().points) == 2 and opt.stage2_steps == 3
    assert not build_optimizer("zo-sgd", 6).decline()


def test_es_mask_at_the_switch_carries_the_gradient() -> None:
    """The ES variant's mask, from 10 generations' ES gradients, keeps the coordinates with the larger true gradient."""
    d = 40
    q = Quadratic(d, seed=11)
    q.scales = np.random.default_rng(12).permutation(np.geomspace(0.1, 3.0, d))
    ratios = []
    for seed in range(8):
        opt = build_optimizer("sharpzo", d, seed=seed, popsize=20, sigma0=0.3, sharpness="es", switch_iterations=10)
        run_rounds(opt, q, 10)
        assert isinstance(opt, SharpZO) and opt.stage == "zo" and opt.mask is not None
        g = q.gradient(opt.solution)
        ratios.append((g[opt.mask > 0] ** 2).mean() / (g**2).mean())
    assert np.mean(ratios) > 1.2, ratios  # a random half: 1 on average (measured: 1.34; keeping the lowest: 0.66)


def test_es_shift_averages_the_last_generations() -> None:
    es = {"sharpness": "es", "rho": 0.1, "rho_scale": "absolute"}
    one = run_rounds(sharpzo(**es, shift_generations=1), Quadratic(D, seed=1), 4)
    three = run_rounds(sharpzo(**es, shift_generations=3), Quadratic(D, seed=1), 4)
    plain = run_rounds(sharpzo(rho=0.0), Quadratic(D, seed=1), 2)
    np.testing.assert_array_equal(one[1].points, three[1].points)  # one generation so far: the same shift
    assert np.allclose(three[1].points - plain[1].points, (three[1].points - plain[1].points)[0])
    assert not np.allclose(one[3].points, three[3].points)


def test_rescaled_mask_lr_is_the_second_moment_ratio() -> None:
    same = sharpzo(switch_iterations=0, mask_interval=100)
    rescaled = sharpzo(switch_iterations=0, mask_interval=100, mask_lr="rescaled")
    k = D // 2
    assert rescaled._descent.lr == pytest.approx(same._descent.lr * (D + 2) / (k + 2))


def test_zo_sam_evaluates_each_pair_at_an_ascent_along_the_running_average() -> None:
    rho, beta = 0.2, 0.5
    # one step at a time, so the next ask is made after the last tell (pipelined, it was made before it)
    opt = sharpzo(switch_iterations=0, mask_fraction=1.0, sam_rho=rho, sam_beta=beta, pipeline=1)
    quadratic = Quadratic(D, seed=1)
    first = opt.ask().points
    np.testing.assert_allclose(first.mean(axis=0), opt.solution, atol=1e-12)  # m = 0: the plain pair
    momentum = np.zeros(D)
    for _ in range(3):
        opt.tell(evaluate(quadratic, opt.ask()))
        momentum = beta * momentum + (1 - beta) * opt._descent.gradient
        centre = opt.ask().points.mean(axis=0)
        ascent = centre - opt.solution
        assert np.linalg.norm(ascent) == pytest.approx(rho * np.sqrt(D))
        np.testing.assert_allclose(ascent / np.linalg.norm(ascent), momentum / np.linalg.norm(momentum), atol=1e-9)


def test_zo_sam_off_is_plain_stage_2() -> None:
    plain = run_rounds(sharpzo(switch_iterations=1, mask_fraction=1.0), Quadratic(D, seed=1), 8)
    no_sam = sharpzo(switch_iterations=1, mask_fraction=1.0, sam_rho=0.0, sam_beta=0.5)
    off = run_rounds(no_sam, Quadratic(D, seed=1), 8)
    for a, b in zip(plain, off):
        np.testing.assert_array_equal(a.points, b.points)
