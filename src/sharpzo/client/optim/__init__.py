"""Client-side black-box optimisers over the prompt vector w, driven by ask/tell.

``build_optimizer(name, dim, seed, budget=N, **options)`` builds one from ``OPTIMIZERS`` for a
run of at most N queries (None: no cap); each
optimiser's options are the fields of its ``config_type`` dataclass (help text in
``field.metadata["help"]``).
"""

from __future__ import annotations

from typing import Any

from .base import Ask, EvalSplit, Evaluation, Optimizer
from .bbt import BBT, BBTConfig
from .config import OptimizerConfig
from .sharpzo import SharpZO, SharpZOConfig
from .spsa_gc import SPSAGC, SPSAGCConfig
from .zo_sgd import ZOSGD, ZOSGDConfig

OPTIMIZERS: dict[str, type[Optimizer[Any]]] = {cls.name: cls for cls in (SharpZO, BBT, ZOSGD, SPSAGC)}


def build_optimizer(
    name: str, dim: int, seed: int = 0, *, budget: int | None = None, **options: Any
) -> Optimizer[Any]:
    """Optimiser ``name`` for a ``dim``-dimensional w and ``budget`` queries; unknown names or options: ValueError."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimiser {name!r}; choose one of {sorted(OPTIMIZERS)}")
    cls = OPTIMIZERS[name]
    return cls.create(dim, seed, cls.config_type.from_options(options, owner=name), budget)


__all__ = [
    "BBT",
    "OPTIMIZERS",
    "SPSAGC",
    "ZOSGD",
    "Ask",
    "BBTConfig",
    "EvalSplit",
    "Evaluation",
    "Optimizer",
    "OptimizerConfig",
    "SPSAGCConfig",
    "SharpZO",
    "SharpZOConfig",
    "ZOSGDConfig",
    "build_optimizer",
]
