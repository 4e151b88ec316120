"""How far away the server is, and the steps in flight and directions per step that hide it.

A random-direction method (ZO-SGD, SharpZO's stage 2, SPSA-GC) keeps ``pipeline`` steps in flight
(optim/base.py), each one request of 2q candidates (q directions, SPSA-GC's pairs) costing the server
s = 2q·t_query. With P steps in flight a round trip R is spent once per P steps, beside the server's
work on the others, so a step takes max(s, (R + s) / P) against s on loopback. The round trip is
hidden, to within ``TOLERANCE``, when::

    R + s <= (1 + TOLERANCE) * P * s

``--pipeline auto`` picks, once, at the start, between the two versions that were checked on test
(BENCHMARKS.md, "Tuning over a WAN"): one step at a time with the method's ``sequential`` options (no
derivative clip, and SharpZO's stage-2 step of 25: the sequential method) where it hides the round trip,
else the method's own pipeline (8, with its clip). Nothing in between: staleness in between was not
checked. ``--directions auto`` then picks the least q (at least the method's) that hides the round trip
at that P, up to ``AUTO_MAX``, the largest q validated.

R is the median over the scoring requests so far (the zero-shot evaluation's) of the client's round
trip less the server's own time (its Server-Timing ``app``). A step's server time is not known before
a step is made, and a request's cost is far from proportional to its candidates (on the stand-in a ZO
step of 2 candidates takes 26 ms, SPSA-GC's 10 take 47 ms, one candidate on the validation set 23 ms).
So one step at a time is taken only where R <= ``TOLERANCE`` · ``least_step``, the fastest of those
requests' server times, scaled down to the training set's size where it scored more images: a low
estimate, which errs towards steps in flight. For q, ``t_query`` is the server's best time per
image-eval over those requests times the training set's size, and a step of 2q candidates costs 2q·t_query.
The choice, and what it was made from, go into config.json (``auto_chosen``); a resume keeps the
checkpointed optimiser and so its P and q, and the recorded values given as ``--pipeline P
--directions Q`` repeat the run bit for bit anywhere.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .optim.config import OptimizerConfig

TOLERANCE = 0.25
AUTO_MAX = 16
# the optimiser option that is q, per method; the methods without one (bbt) have no steps to choose for
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
class Network:
    """The round trip and the server's speed, as measured from some exchanges."""

    rtt: float  # seconds, the server's own time taken off
    per_query: float  # seconds of server time for one query on the training set
    least_step: float  # seconds, a low estimate of a step's server time
    requests: int

    @classmethod
    def measure(cls, exchanges: list[Exchange], train_images: int) -> Network | None:
        """None without a timed exchange."""
        timed = [(e.seconds, e.server_seconds, e.image_evals) for e in exchanges
                 if e.server_seconds is not None and e.image_evals > 0]
        if not timed:
            return None
        rtt = max(0.0, statistics.median(seconds - server for seconds, server, _ in timed))
        per_query = train_images * min(server / evals for _, server, evals in timed)
        least_step = min(server * min(1.0, train_images / evals) for _, server, evals in timed)
        return cls(rtt, per_query, least_step, len(timed))

    def hidden(self, pipeline: int, q: int) -> bool:
        """Whether ``pipeline`` steps of 2q candidates in flight hide the round trip to within ``TOLERANCE``."""
        step = 2 * q * self.per_query
        return self.rtt + step <= (1 + TOLERANCE) * pipeline * step

    def pipeline(self, far: int) -> int:
        """1 where one step at a time hides the round trip even at ``least_step``, else ``far`` (the method's)."""
        return 1 if self.rtt <= TOLERANCE * self.least_step else far

    def least_q(self, pipeline: int, least: int) -> int:
        return next((q for q in range(least, AUTO_MAX + 1) if self.hidden(pipeline, q)), max(least, AUTO_MAX))


@dataclass(frozen=True)
class AutoChoice:
    """What ``auto`` chose (None: given, not chosen) and what from; nan without timed exchanges."""

    pipeline: int | None
    q: int | None
    rtt_ms: float
    ms_per_query: float
    least_step_ms: float
    requests: int

    def record(self) -> dict[str, Any]:
        return asdict(self)


def parse_count(value: str | int, name: str) -> int | None:
    """``--pipeline``, ``--directions``: ``auto`` (None) or a positive count."""
    if str(value).strip().lower() == "auto":
        return None
    try:
        count = int(str(value))
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"{name} must be 'auto' or a positive integer, got {value!r}")
    return count


def _config_type(method: str) -> type[OptimizerConfig]:
    from .optim import OPTIMIZERS  # the optimisers import nothing from here; kept local to keep this module light

    return OPTIMIZERS[method].config_type


def option_default(method: str, name: str) -> int:
    """The method's own default of its option ``name``."""
    return int(getattr(_config_type(method)(), name))


def _counts(
    method: str, pipeline: str | int | None, directions: str | int | None, options: dict[str, Any]
) -> tuple[str, dict[str, int | None], set[str]] | None:
    """The method's q option, the counts given (an explicit ``--opt`` first; None: unset or auto) and the options
    left to ``auto``; None for a method without steps."""
    name = Q_OPTION.get(method)
    if name is None:
        return None
    given: dict[str, int | None] = {}
    auto: set[str] = set()
    for option, value in (("pipeline", pipeline), (name, directions)):
        given[option] = options[option] if option in options else None if value is None else parse_count(value, option)
        if option not in options and value is not None and given[option] is None:
            auto.add(option)
    return name, given, auto


def needs_timing(
    method: str, pipeline: str | int | None, directions: str | int | None, options: dict[str, Any]
) -> bool:
    """Whether resolving these settings waits for timed exchanges (an ``auto`` that applies)."""
    counts = _counts(method, pipeline, directions, options)
    return counts is not None and bool(counts[2])


def resolve_options(
    method: str, pipeline: str | int | None, directions: str | int | None, options: dict[str, Any],
    exchanges: list[Exchange], train_images: int,
) -> tuple[dict[str, Any], AutoChoice | None]:
    """The optimiser options with ``pipeline`` and q set by ``--pipeline`` and ``--directions`` (unset: the method's
    own; an explicit ``--opt`` wins), and what ``auto`` chose. One step in flight, set either way, takes the method's
    ``sequential`` options (no derivative clip; SharpZO's longer stage-2 step) where ``--opt`` does not set them."""
    counts = _counts(method, pipeline, directions, options)
    if counts is None:
        return options, None
    name, given, auto = counts
    p = given["pipeline"] or option_default(method, "pipeline")
    q = given[name] or option_default(method, name)
    choice = None
    if auto:
        network = Network.measure(exchanges, train_images)
        if network is not None and "pipeline" in auto:
            p = network.pipeline(p)
        if network is not None and name in auto:
            q = network.least_q(p, q)
        nan = float("nan")
        measured = (nan, nan, nan, 0) if network is None else (
            round(1000 * network.rtt, 3), round(1000 * network.per_query, 4), round(1000 * network.least_step, 4),
            network.requests)
        choice = AutoChoice(p if "pipeline" in auto else None, q if name in auto else None, *measured)
    out = {**options, "pipeline": p, name: q}
    if p == 1:
        out.update({key: value for key, value in _config_type(method).sequential.items() if key not in options})
    return out, choice
