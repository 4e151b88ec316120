"""The automatic choices of client/latency.py: one step at a time where that hides the round trip to within a quarter
of a step's server time, else the method's pipeline; then the least q that hides it."""

from __future__ import annotations

import math

import pytest

from sharpzo.client.latency import (
    AUTO_MAX,
    Exchange,
    Network,
    needs_timing,
    resolve_options,
    server_seconds,
)
from sharpzo.client.optim.sharpzo import SharpZOConfig


def exchanges(rtt: float, per_image_eval: float, image_evals: int = 300, n: int = 3) -> list[Exchange]:
    server = per_image_eval * image_evals
    return [Exchange(rtt + server, server, image_evals) for _ in range(n)]


def network(rtt: float, per_image_eval: float = 5e-5) -> Network:
    measured = Network.measure(exchanges(rtt, per_image_eval), train_images=100)
    assert measured is not None
    return measured


def test_the_server_timing_app_duration_is_read_in_seconds() -> None:
    assert server_seconds("accept;dur=0.9, model;dur=11.2, app;dur=12.500") == pytest.approx(0.0125)
    assert server_seconds("app;dur=3") == pytest.approx(0.003)
    assert server_seconds("model;dur=4") is None and server_seconds(None) is None


@pytest.mark.parametrize(("rtt", "expected"), [(0.0005, 1), (0.00125, 1), (0.0013, 8), (0.200, 8)])
def test_one_step_at_a_time_near_the_server_else_the_methods_pipeline(rtt: float, expected: int) -> None:
    # each request: 300 image-evals at 5 µs, 15 ms, so a step on 100 training images at least 5 ms: one step at a
    # time where rtt <= 0.25 * 5 ms
    assert network(rtt).least_step == pytest.approx(0.005)
    assert network(rtt).pipeline(far=8) == expected


def test_a_step_is_estimated_low_from_the_fastest_request_scaled_down_to_the_training_set() -> None:
    seen = [Exchange(0.040, 0.030, 337), Exchange(0.030, 0.020, 100)]  # a test set's request, a validation set's
    measured = Network.measure(seen, train_images=224)
    assert measured is not None and measured.least_step == pytest.approx(min(0.030 * 224 / 337, 0.020))
    small = Network.measure(seen, train_images=50)
    assert small is not None and small.least_step == pytest.approx(0.030 * 50 / 337)  # both scaled, the less


@pytest.mark.parametrize(("rtt", "expected"), [(0.0005, 1), (0.010, 4), (0.200, AUTO_MAX)])
def test_q_grows_with_the_round_trip_until_the_validated_cap(rtt: float, expected: int) -> None:
    # one step in flight: rtt <= 0.25 * 2q * 5 ms
    assert network(rtt).least_q(pipeline=1, least=1) == expected
    assert network(rtt).rtt == pytest.approx(rtt) and network(rtt).per_query == pytest.approx(0.005)


def test_steps_in_flight_hide_the_round_trip_with_fewer_directions() -> None:
    far = network(0.05)
    # rtt <= 2q s (1.25 P - 1): 50 ms needs q = 20 -> 16 alone, q = 1 with 8 steps in flight
    assert (far.least_q(pipeline=1, least=1), far.least_q(pipeline=8, least=1)) == (AUTO_MAX, 1)
    assert far.least_q(pipeline=2, least=1) == 4  # 50 <= 10q * (1.25 * 2 - 1) from q = 4 on


def test_a_slower_server_hides_a_longer_round_trip_one_step_at_a_time() -> None:
    assert network(0.002, 1e-4).pipeline(far=8) == 1 and network(0.002, 1e-5).pipeline(far=8) == 8


def test_the_round_trip_is_the_median_and_the_speed_the_best_request() -> None:
    seen = [Exchange(0.060, 0.010, 200), Exchange(0.090, 0.040, 200), Exchange(5.0, 0.010, 200)]  # one retry
    measured = Network.measure(seen, train_images=100)
    assert measured is not None and measured.requests == 3
    assert measured.rtt == pytest.approx(0.050) and measured.per_query == pytest.approx(0.005)
    assert Network.measure([Exchange(0.1, None, 300)], 100) is None


def test_near_the_server_auto_is_the_sequential_method_without_the_clip() -> None:
    options, choice = resolve_options("zo-sgd", "auto", None, {}, exchanges(0.001, 5e-5), 100)
    assert (options["pipeline"], options["clip"], options["directions"]) == (1, None, 1)
    assert choice is not None and (choice.pipeline, choice.q, choice.requests) == (1, None, 3)
    far, _ = resolve_options("zo-sgd", "auto", None, {}, exchanges(0.2, 5e-5), 100)
    assert far["pipeline"] == 8 and "clip" not in far  # the method's pipeline and clip
    kept, _ = resolve_options("zo-sgd", "auto", None, {"clip": 5.0}, exchanges(0.001, 5e-5), 100)
    assert (kept["pipeline"], kept["clip"]) == (1, 5.0)


def test_one_step_at_a_time_is_sharpzos_sequential_method_with_its_longer_step() -> None:
    # stage 2's step was chosen apart for the two: 17.5 with 8 steps in flight, 25 one at a time (BENCHMARKS.md)
    assert SharpZOConfig().lr == 17.5 and SharpZOConfig().pipeline == 8
    near, _ = resolve_options("sharpzo", "auto", None, {}, exchanges(0.001, 5e-5), 100)
    assert (near["pipeline"], near["clip"], near["lr"]) == (1, None, 25.0)
    assert SharpZOConfig.from_options(near).lr == 25.0
    given, _ = resolve_options("sharpzo", "1", None, {"lr": 30.0}, exchanges(0.2, 5e-5), 100)
    assert (given["lr"], given["clip"]) == (30.0, None)
    opted, _ = resolve_options("sharpzo", None, None, {"pipeline": 1, "clip": 5.0}, exchanges(0.2, 5e-5), 100)
    assert (opted["lr"], opted["clip"]) == (25.0, 5.0)
    far, _ = resolve_options("sharpzo", "auto", None, {}, exchanges(0.2, 5e-5), 100)
    assert far["pipeline"] == 8 and "lr" not in far and "clip" not in far
    assert "lr" not in resolve_options("zo-sgd", "1", None, {}, exchanges(0.2, 5e-5), 100)[0]


def test_a_bigger_step_is_no_reason_to_go_one_step_at_a_time() -> None:
    # SPSA-GC's 10 candidates would cost 50 ms at 2q * t_query, which 12 ms would hide; the low estimate, 5 ms,
    # does not, so SPSA-GC keeps its pipeline as ZO-SGD does (on the stand-in, at 50 ms, the first rule went one
    # step at a time and took 1.95x its loopback time: a 10-candidate step cost 47 ms, not the 258 estimated)
    for method in ("spsa-gc", "zo-sgd"):
        options, choice = resolve_options(method, "auto", None, {}, exchanges(0.012, 5e-5), 100)
        assert options["pipeline"] == 8 and "clip" not in options
    near, choice = resolve_options("spsa-gc", "auto", "auto", {}, exchanges(0.001, 5e-5), 100)
    assert (near["pipeline"], near["pairs"], near["clip"]) == (1, 5, None)
    assert choice is not None and (choice.pipeline, choice.q, choice.least_step_ms) == (1, 5, 5.0)


def test_given_values_win_and_bbt_has_nothing_to_choose() -> None:
    far = exchanges(0.2, 5e-5)
    assert resolve_options("zo-sgd", "auto", "auto", {"pipeline": 2, "directions": 3}, far, 100) == (
        {"pipeline": 2, "directions": 3}, None)
    options, choice = resolve_options("zo-sgd", "4", "auto", {}, far, 100)
    assert options["pipeline"] == 4 and choice is not None and choice.pipeline is None and choice.q > 1
    assert resolve_options("zo-sgd", "1", None, {}, far, 100) == ({"pipeline": 1, "directions": 1, "clip": None},
                                                                  None)
    assert resolve_options("bbt", "auto", "auto", {}, far, 100) == ({}, None)
    assert not needs_timing("bbt", "auto", "auto", {}) and not needs_timing("zo-sgd", "3", None, {})
    assert needs_timing("zo-sgd", "auto", None, {}) and not needs_timing("zo-sgd", "auto", None, {"pipeline": 8})


def test_without_timing_the_method_defaults_stand() -> None:
    options, choice = resolve_options("zo-sgd", "auto", "auto", {}, [Exchange(0.1, None, 300)], 100)
    assert (options["pipeline"], options["directions"]) == (8, 1) and "clip" not in options
    assert choice is not None and choice.requests == 0 and math.isnan(choice.rtt_ms)


@pytest.mark.parametrize("bad", ["0", "-2", "many", "1.5"])
def test_a_bad_count_is_a_clear_error(bad: str) -> None:
    with pytest.raises(ValueError, match="pipeline must be 'auto' or a positive integer"):
        resolve_options("zo-sgd", bad, None, {}, [], 100)
