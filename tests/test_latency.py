"""The automatic choice of q (client/latency.py): the least q whose round trip is a quarter of a step's server time."""

from __future__ import annotations

import math

import pytest

from sharpzo.client.latency import AUTO_MAX, TOLERANCE, Exchange, choose_directions, server_seconds


def exchanges(rtt: float, per_image_eval: float, image_evals: int = 300, n: int = 3) -> list[Exchange]:
    server = per_image_eval * image_evals
    return [Exchange(rtt + server, server, image_evals) for _ in range(n)]


def test_the_server_timing_app_duration_is_read_in_seconds() -> None:
    assert server_seconds("accept;dur=0.9, model;dur=11.2, app;dur=12.500") == pytest.approx(0.0125)
    assert server_seconds("app;dur=3") == pytest.approx(0.003)
    assert server_seconds("model;dur=4") is None and server_seconds(None) is None


@pytest.mark.parametrize(("rtt", "expected"), [(0.0005, 1), (0.010, 4), (0.200, AUTO_MAX)])
def test_q_grows_with_the_round_trip_until_the_validated_cap(rtt: float, expected: int) -> None:
    # 0.5 ms per query on 100 training images (5 µs an image-eval): q = ceil(rtt / (0.25 * 2 * 5 ms))
    choice = choose_directions(exchanges(rtt, 5e-5), train_images=100, least=1)
    assert choice.q == expected
    assert choice.q == max(1, min(AUTO_MAX, math.ceil(rtt / (TOLERANCE * 2 * 0.005) - 1e-9)))
    assert choice.rtt_ms == pytest.approx(1000 * rtt) and choice.ms_per_query == pytest.approx(5.0)


def test_steps_in_flight_hide_the_round_trip_with_fewer_directions() -> None:
    one = choose_directions(exchanges(0.05, 5e-5), train_images=100, least=1).q
    eight = choose_directions(exchanges(0.05, 5e-5), train_images=100, least=1, pipeline=8).q
    assert (one, eight) == (AUTO_MAX, 3)  # ceil(50 / (0.25 * 2 * 5)) = 20 -> 16; ceil(50 / (0.25 * 8 * 2 * 5)) = 3


def test_a_slower_server_needs_fewer_directions_to_hide_the_same_round_trip() -> None:
    fast = choose_directions(exchanges(0.05, 1e-5), train_images=100, least=1).q
    slow = choose_directions(exchanges(0.05, 1e-4), train_images=100, least=1).q
    assert slow < fast


def test_the_method_default_is_the_floor_and_no_timing_keeps_it() -> None:
    assert choose_directions(exchanges(0.0, 5e-5), 100, least=5).q == 5
    untimed = choose_directions([Exchange(0.1, None, 300)], 100, least=5)
    assert (untimed.q, untimed.requests) == (5, 0)


def test_the_round_trip_is_the_median_and_the_speed_the_best_request() -> None:
    seen = [Exchange(0.060, 0.010, 200), Exchange(0.090, 0.040, 200), Exchange(5.0, 0.010, 200)]  # one retry
    choice = choose_directions(seen, train_images=100, least=1)
    assert choice.rtt_ms == pytest.approx(50.0) and choice.ms_per_query == pytest.approx(5.0)
