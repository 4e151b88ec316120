"""How far away the server is, and the q that hides it: the automatic choice of directions per step.

A random-direction method (ZO-SGD, SharpZO's stage 2, SPSA-GC) keeps ``pipeline`` steps in flight
(optim/base.py) and so waits one round trip per ``pipeline`` steps. With q directions a step is one
request of 2q candidates, so the round trip is paid once per 2q·pipeline queries. ``--directions auto``
picks, once, at the start, the least q for which the network's share is at most ``TOLERANCE`` of the
server's time::

    rtt <= TOLERANCE * pipeline * 2q * t_query   =>   q = ceil(rtt / (TOLERANCE * pipeline * 2 * t_query))

clipped to [the method's default, ``AUTO_MAX``]; ``AUTO_MAX`` is the largest q validated against
q = 1 (BENCHMARKS.md, "Tuning over a WAN"). ``rtt`` is the median over the scoring requests so far
(the zero-shot evaluation's) of the client's round trip less the server's own time (its
Server-Timing ``app``); ``t_query`` is the server's best time per image-eval over those requests
times the training set's size, an overestimate of a batched query's cost (so q errs low). The
choice, and what it was made from, go into config.json; a resume keeps the checkpointed optimiser
and so its q, and the recorded q given as ``--directions N`` repeats the run bit for bit anywhere.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import asdict, dataclass
from typing import Any

TOLERANCE = 0.25
AUTO_MAX = 16
# the optimiser option that is q, per method; methods without one (bbt) have nothing to choose
Q_OPTION = {"zo-sgd": "directions", "sharpzo": "directions", "spsa-gc": "pairs"}
_APP = re.compile(r"(?:^|,)\s*app;dur=([0-9.]+)")


@dataclass(frozen=True)
class Exchange:
    """One scoring request as the client saw it."""

    seconds: float  # the client's round trip
    server_seconds: float | None  # the server's own time (Server-Timing app), None when it sent none
    image_evals: int


def server_seconds(header: str | None) -> float | None:
    """The ``app`` duration of a Server-Timing header, in seconds."""
    match = _APP.search(header or "")
    return None if match is None else float(match.group(1)) / 1000.0


@dataclass(frozen=True)
class DirectionsChoice:
    q: int
    rtt_ms: float
    ms_per_query: float
    requests: int  # exchanges the estimate is made from

    def record(self) -> dict[str, Any]:
        return asdict(self)


def choose_directions(
    exchanges: list[Exchange], train_images: int, least: int, pipeline: int = 1
) -> DirectionsChoice:
    """q for the round trip and server speed seen in ``exchanges`` with ``pipeline`` steps in flight; ``least`` (the
    method's default) without data."""
    timed = [(e.seconds, e.server_seconds, e.image_evals) for e in exchanges
             if e.server_seconds is not None and e.image_evals > 0]
    if not timed:
        return DirectionsChoice(least, float("nan"), float("nan"), 0)
    rtt = max(0.0, statistics.median(seconds - server for seconds, server, _ in timed))
    per_query = train_images * min(server / evals for _, server, evals in timed)
    need = math.ceil(rtt / (TOLERANCE * pipeline * 2 * per_query)) if per_query > 0 else AUTO_MAX
    q = max(least, min(AUTO_MAX, need))
    return DirectionsChoice(q, round(1000 * rtt, 3), round(1000 * per_query, 4), len(timed))


def parse_directions(value: str | int) -> int | None:
    """``--directions``: ``auto`` (None) or a positive q."""
    if str(value).strip().lower() == "auto":
        return None
    try:
        q = int(str(value))
    except ValueError:
        q = 0
    if q < 1:
        raise ValueError(f"directions must be 'auto' or a positive integer, got {value!r}")
    return q


def option_default(method: str, name: str | None) -> int | None:
    """The method's own default of option ``name``, None for a method without it."""
    from .optim import OPTIMIZERS  # the optimisers import nothing from here; kept local to keep this module light

    defaults = OPTIMIZERS[method].config_type()
    return None if name is None or not hasattr(defaults, name) else int(getattr(defaults, name))


def resolve_options(
    method: str, directions: str | int | None, options: dict[str, Any], exchanges: list[Exchange], train_images: int
) -> tuple[dict[str, Any], DirectionsChoice | None]:
    """The optimiser options with q set by ``--directions`` (an explicit ``--opt`` q wins), and the auto choice."""
    name = Q_OPTION.get(method)
    least = option_default(method, name)
    if directions is None or name is None or least is None or name in options:
        return options, None
    fixed = parse_directions(directions)
    if fixed is not None:
        return {**options, name: fixed}, None
    pipeline = int(options.get("pipeline", option_default(method, "pipeline") or 1))
    choice = choose_directions(exchanges, train_images, least, pipeline)
    return {**options, name: choice.q}, choice
