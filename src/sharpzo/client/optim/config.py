"""Option dataclasses: defaults and help text per field, built from keyword options with clear errors."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, TypeVar

ConfigT = TypeVar("ConfigT", bound="OptimizerConfig")


def option(default: Any, help: str) -> Any:
    """A dataclass field with a default and the help text a CLI shows (``field.metadata["help"]``)."""
    return dataclasses.field(default=default, metadata={"help": help})


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


LrScaling = Literal["sqrt", "linear", "none"]
_POWERS: dict[str, float] = {"sqrt": 0.5, "linear": 1.0, "none": 0.0}


def scaled_rate(rate: float, count: int, reference: int, scaling: LrScaling) -> float:
    """``rate`` chosen at ``reference`` directions, for an average over ``count`` of them: ×(count/reference)^s.

    An average of q random-direction estimates has 1/q of one's variance, so it takes a longer step; √q
    (sqrt) did better than q (linear) or 1 on groceries validation at q = 8, 16 and 64 (BENCHMARKS.md,
    "Tuning over a WAN").
    """
    return rate if count == reference else rate * (count / reference) ** _POWERS[scaling]


DEFAULT_PIPELINE = 8


def pipeline_option() -> Any:
    """The ``pipeline`` option of the random-direction methods (optim/base.py, "Pipelining")."""
    return option(
        DEFAULT_PIPELINE, "steps in flight at once: each step's probes are taken before the results of the "
        "pipeline - 1 steps before it are in (a fixed staleness, the same on any network), so a remote run waits "
        "one round trip per `pipeline` steps; 1: one step at a time, which a tune run gives the sequential "
        "version's options where --opt does not set them (no clip; SharpZO's stage-2 lr 25)",
    )


DEFAULT_CLIP = 5.0


SEQUENTIAL: Mapping[str, Any] = {"clip": None}  # the random-direction methods' one-step-at-a-time options


def clip_option() -> Any:
    """The ``clip`` option of the random-direction methods (estimators.DerivativeClip)."""
    return option(
        DEFAULT_CLIP, "bound each directional derivative to ±clip times the median |δ| of the last 64 (a probe pair "
        "across a cliff would throw w out to where the loss is flat); None: no bound",
    )


def require_stepping(pipeline: int, clip: float | None) -> None:
    """The checks of ``pipeline_option`` and ``clip_option``, shared by the random-direction methods."""
    require(pipeline >= 1, f"pipeline must be at least 1, got {pipeline}")
    require(clip is None or clip > 0, f"clip must be positive or None, got {clip}")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Base of every optimiser's options. Literal-typed fields are checked against their choices, and counts
    (``int`` fields) are whole numbers: a JSON ``16.0`` or ``true`` would otherwise pass for one."""

    # The options that one step at a time takes in place of the defaults chosen for steps in flight: the sequential
    # version that was checked on test (BENCHMARKS.md, "Pipelined steps"); see client/latency.py.
    sequential: ClassVar[Mapping[str, Any]] = {}

    def __post_init__(self) -> None:
        for name, hint in typing.get_type_hints(type(self)).items():
            value = getattr(self, name)
            if typing.get_origin(hint) is typing.Literal:
                choices = typing.get_args(hint)
                require(value in choices, f"{type(self).__name__}.{name}={value!r}: choose one of {list(choices)}")
            elif hint is int or hint == int | None:
                whole = isinstance(value, int) and not isinstance(value, bool)
                require(whole or (value is None and hint is not int),
                        f"{type(self).__name__}.{name}={value!r}: must be a whole number")

    @classmethod
    def from_options(cls: type[ConfigT], options: Mapping[str, Any], owner: str | None = None) -> ConfigT:
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(
                f"unknown option(s) for {owner or cls.__name__}: {', '.join(map(repr, unknown))}; "
                f"known options: {', '.join(known) or '(none)'}"
            )
        return cls(**options)
