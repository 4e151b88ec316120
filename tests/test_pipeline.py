"""Pipelined steps (optim/base.py): asks made ahead from the iterate as it stands, told in order, within the budget,
and only where the method can make them ahead."""

from __future__ import annotations

import numpy as np
import pytest

from sharpzo.client.optim import build_optimizer
from sharpzo.client.optim.estimators import DerivativeClip

from .test_optim_support import Quadratic, evaluate, run

DIM = 4


def centre(points: np.ndarray) -> np.ndarray:
    """The point a random-direction ask probes around: the mean of its ± pairs."""
    return points.mean(axis=0)


def test_asks_are_made_ahead_from_the_iterate_as_it_stands_and_told_oldest_first() -> None:
    opt = build_optimizer("zo-sgd", DIM, seed=1, pipeline=3, lr=0.1, mu=1e-2)
    first = opt.asks()
    assert len(first) == 3
    assert all(np.allclose(centre(ask.points), 0.0) for ask in first)  # nothing told yet: every ask probes w0
    opt.tell(evaluate(Quadratic(DIM), first[0]))
    after = opt.asks()
    assert after[:2] == first[1:]  # the pending asks are kept, in order
    assert np.allclose(centre(after[2].points), opt.solution)  # the new one probes the iterate after one step
    assert not np.allclose(opt.solution, 0.0)


@pytest.mark.parametrize("budget", [13, 16, 17])
def test_asks_made_ahead_fit_the_budget_together(budget: int) -> None:
    opt = build_optimizer("zo-sgd", DIM, seed=1, budget=budget, pipeline=8, lr=0.1)
    seen = []
    while not opt.stop():
        pending = opt.asks()
        seen.append(opt.queries + sum(len(ask.points) for ask in pending))
        opt.tell(evaluate(Quadratic(DIM), pending[0]))
    assert max(seen) <= budget
    assert opt.queries == budget - budget % 2


def test_a_pipelined_run_is_the_same_one_request_at_a_time_or_all_in_flight() -> None:
    """``optimize`` tells one ask at a time; a caller with every pending ask in flight tells them as they were made."""
    objective = Quadratic(DIM, seed=4)
    one_at_a_time = build_optimizer("spsa-gc", DIM, seed=2, budget=400, pipeline=4)
    run(one_at_a_time, objective)
    in_flight = build_optimizer("spsa-gc", DIM, seed=2, budget=400, pipeline=4)
    sent: list = []
    while not in_flight.stop():
        pending = in_flight.asks()
        sent.extend(pending[len(sent):])
        in_flight.tell(evaluate(objective, sent.pop(0)))
    assert np.array_equal(one_at_a_time.solution, in_flight.solution)


def test_sharpzo_pipelines_stage_two_only() -> None:
    opt = build_optimizer("sharpzo", DIM, seed=0, budget=2000, popsize=6, switch_iterations=3, pipeline=4)
    objective = Quadratic(DIM)
    depths: dict[str, list[int]] = {"cma": [], "zo": []}
    while not opt.stop():
        pending = opt.asks()
        depths[opt.stage].append(len(pending))
        opt.tell(evaluate(objective, pending[0]))
    assert set(depths["cma"]) == {1}
    assert depths["zo"][:-3] == [4] * (len(depths["zo"]) - 3) and depths["zo"][-3:] == [3, 2, 1]  # the budget drains


def test_sharpzo_stage_one_generations_in_flight_never_cross_the_switch() -> None:
    opt = build_optimizer("sharpzo", DIM, seed=0, budget=600, popsize=6, switch_queries=60, stage1_pipeline=2,
                          pipeline=1)
    objective = Quadratic(DIM)
    depths: list[int] = []
    sent: list = []
    while opt.stage == "cma":
        pending = opt.asks()
        depths.append(len(pending))
        sent.extend(pending[len(sent):])
        opt.tell(evaluate(objective, sent.pop(0)))
    assert not sent and opt.queries == 60 and opt.stage1_iterations == 10  # the switch came with nothing in flight
    assert depths == [2] * 9 + [1]
    for between in ({"sharpness": "rge"}, {"auto_switch": True}):
        assert len(build_optimizer("sharpzo", DIM, seed=0, budget=600, popsize=6, stage1_pipeline=2,
                                   **between).asks()) == 1, between


def test_cge_masks_keep_sharpzo_steps_one_at_a_time() -> None:
    """A mask refresh may fall between any two steps (every mask_interval), so no step is made ahead of it."""
    opt = build_optimizer("sharpzo", DIM, seed=0, budget=400, popsize=6, switch_iterations=2, pipeline=4,
                          sharpness="cge", mask_interval=3)
    objective = Quadratic(DIM)
    while not opt.stop():
        pending = opt.asks()
        assert len(pending) == 1
        opt.tell(evaluate(objective, pending[0]))
    assert opt.stage == "zo"


def test_bbt_makes_generations_ahead_only_when_pipelined() -> None:
    assert len(build_optimizer("bbt", DIM, seed=0, budget=120, popsize=6, pipeline=1).asks()) == 1
    opt = build_optimizer("bbt", DIM, seed=0, budget=120, popsize=6, pipeline=2)
    first = opt.asks()
    assert len(first) == 2 and not np.array_equal(first[0].points, first[1].points)
    mean_before = opt.solution
    opt.tell(evaluate(Quadratic(DIM), first[0]))
    assert opt.asks()[0] is first[1]  # the generation drawn ahead is kept, then told against the updated mean
    assert not np.array_equal(opt.solution, mean_before)


def test_pipelined_cma_es_still_converges_on_a_quadratic() -> None:
    """Each generation drawn one generation stale: slower, but CMA-ES still closes in on the minimum."""
    dim, objective = 10, Quadratic(10, seed=3)
    start = float(objective(np.zeros((1, dim)))[0])
    for pipeline in (1, 2):
        opt = build_optimizer("bbt", dim, seed=1, budget=3000, popsize=10, pipeline=pipeline, bound=None)
        sent: list = []
        while not opt.stop():
            pending = opt.asks()
            sent.extend(pending[len(sent):])
            opt.tell(evaluate(objective, sent.pop(0)))
        assert objective(opt.solution[None])[0] < 1e-3 * start, pipeline


def test_the_clip_bounds_an_outlier_by_the_median_of_what_came_before() -> None:
    clip = DerivativeClip(kappa=5.0, window=64, warmup=8)
    assert np.array_equal(clip(np.full(8, 0.01)), np.full(8, 0.01))  # the warm-up: nothing clipped
    out = clip(np.array([0.02, -1.0, 0.6]))
    assert np.allclose(out, [0.02, -0.05, 0.05]) and clip.clipped == 2
    # the raw outliers enter the history, but the median stays at the usual size
    assert np.allclose(clip(np.array([1.0])), [0.05])


def test_without_warm_up_history_nothing_is_clipped() -> None:
    clip = DerivativeClip(kappa=2.0, warmup=4)
    assert np.array_equal(clip(np.array([1.0, 100.0])), np.array([1.0, 100.0]))
    assert clip.clipped == 0


def cliff(points: np.ndarray) -> np.ndarray:
    """A bowl whose rim is a cliff: past |w_0| = 1 the loss jumps by 50 and then is flat."""
    bowl = 0.5 * ((points - 0.5) ** 2).sum(axis=1)
    return np.where(np.abs(points[:, 0]) > 1.0, bowl.clip(max=2.0) + 50.0, bowl)


def test_a_pipelined_run_is_not_thrown_off_a_cliff_with_the_clip() -> None:
    """A probe pair across the rim reads a huge δ: unclipped, the step throws w far out; clipped, it stays."""
    def final(clip: float | None) -> float:
        opt = build_optimizer("zo-sgd", DIM, seed=0, budget=2000, pipeline=8, lr=0.05, mu=0.2, clip=clip)
        run(opt, cliff)
        return float(np.abs(opt.solution).max())

    assert final(None) > 10.0
    assert final(5.0) < 2.0


class _OneKick:
    """Informative losses on the first call (a nonzero gradient estimate), then a flat loss: after one step, only
    momentum moves an SPSA-GC iterate, along a path known in advance."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, points: np.ndarray) -> np.ndarray:
        self.calls += 1
        return points[:, 0].copy() if self.calls == 1 else np.ones(len(points))


def test_momentum_ahead_probes_where_the_sequential_run_does_once_the_kick_is_in() -> None:
    """With ``momentum_ahead`` a pipelined SPSA-GC step probes where momentum will have carried w by the time the step
    is applied: on a path that momentum alone decides, exactly where the sequential run probes. Without it the probes
    lag behind by the steps in flight."""
    def centres(**options: object) -> list[np.ndarray]:
        opt = build_optimizer("spsa-gc", DIM, seed=3, budget=200, pairs=2, **options)
        return [centre(ask.points) for ask in run(opt, _OneKick())]

    sequential = centres(pipeline=1)
    ahead = centres(pipeline=4, momentum_ahead=True)
    behind = centres(pipeline=4)
    assert not np.allclose(sequential[1], 0.0)
    # steps 1-3 were asked before the kick was told; from step 4 on every ask knows all the kick did
    for step in range(4, len(sequential)):
        np.testing.assert_allclose(ahead[step], sequential[step], rtol=1e-9, atol=1e-12)
    assert not np.allclose(behind[4], sequential[4])
    assert all(np.array_equal(a, b) for a, b in zip(centres(pipeline=1, momentum_ahead=True), sequential))
