"""SharpZO: sharpness-aware CMA-ES, then sparse ZO-SGD.

Stage 1, per iteration: a gradient estimate ĝ at the CMA mean θ gives
ε* = ρ ĝ/‖ĝ‖; the population w_i is evaluated at w_i + ε* and told to CMA-ES
unshifted. With the automatic switch a 1-point "val" ask of θ follows. Stage 2
starts from θ: every ``mask_interval`` steps a mask Ω is scored, and each step is
one masked random-direction ZO-SGD step (2 queries).

Where ĝ comes from (``sharpness``):
- "es" (the default, chosen on validation): no extra queries: the previous
  generation's ES gradient (none in the first iteration, so ε* = 0 there). Mask
  scores then come from already-paid queries too: the last ES gradient at the
  switch, afterwards an exponential average of the stage-2 estimates δ·ũ.
- "cge": coordinate-wise estimate at θ, 2d queries an iteration, and a CGE for
  every mask (the paper's version);
- "rge": ``sharpness_probes`` random pairs at θ, 2·probes queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .base import Ask, Evaluation, Info, Optimizer, Request
from .cma_search import CMAConfig, CMASearch
from .config import option, require
from .descent import RandomDirectionDescent
from .estimators import (
    cge_gradient,
    cge_probes,
    es_gradient,
    gaussian_directions,
    rge_gradient,
    rge_probes,
    sharpness_shift,
)
from .masks import MaskKeep, MaskScore, mask_scores, select_mask

Phase = Literal["sharpness", "population", "val", "mask", "step"]


@dataclass(frozen=True)
class SharpZOConfig(CMAConfig):
    rho: float = option(0.1, "sharpness radius ρ of ε* = ρ ĝ/‖ĝ‖; 0 gives plain CMA-ES in stage 1")
    rho_scale: Literal["absolute", "sigma"] = option(
        "absolute", "absolute: ‖ε*‖ = ρ; sigma: ‖ε*‖ = ρ·(current CMA step size)"
    )
    sharpness: Literal["cge", "es", "rge"] = option(
        "es",
        "source of ĝ for ε* and the mask scores: es (free: previous generation; chosen on groceries validation), "
        "cge (2d queries, the paper's), rge (2·sharpness_probes)",
    )
    sharpness_mu: float = option(1e-3, "μc, finite-difference step of the stage-1 CGE/RGE probes")
    sharpness_probes: int = option(5, "random-direction pairs for sharpness='rge'")
    switch_iterations: int | None = option(
        None, "Tc: switch to stage 2 after this many stage-1 iterations (the paper: 100-500); None: by queries only"
    )
    switch_queries: int | None = option(
        3000, "also switch once this many queries (all kinds) have been spent; about 1/3 of the budget did best on validation"
    )
    auto_switch: bool = option(
        False, "switch once validation accuracy of the CMA mean stalls (1 val query an iteration)"
    )
    patience: int = option(10, "auto switch: stage-1 iterations in a row without a val-accuracy improvement")
    min_delta: float = option(0.01, "auto switch: an improvement must beat the best val accuracy by more than this")
    lr: float = option(100.0, "η, constant stage-2 learning rate (chosen on groceries validation, bench/selection.py)")
    rge_mu: float = option(1e-3, "μr, finite-difference step of the stage-2 probes")
    mask_fraction: float = option(0.5, "fraction of coordinates stage 2 updates; 1.0 is dense (no mask queries)")
    mask_keep: MaskKeep = option("lowest", "keep the lowest scores (authors' code, Sparse-MeZO) or the highest")
    mask_score: MaskScore = option(
        "zscore", "zscore: w²·z(ĝ²) (paper); zscore-abs: w²·z(|ĝ|) (authors' code); magnitude: w²·ĝ²"
    )
    mask_mu: float = option(1e-5, "finite-difference step of the mask's CGE")
    mask_interval: int = option(200, "K: re-score the mask every K stage-2 steps")
    mask_ema: float = option(0.99, "sharpness='es': decay of the running average of stage-2 estimates for masks")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.rho >= 0, f"rho must be non-negative, got {self.rho}")
        require(0.0 < self.mask_fraction <= 1.0, f"mask_fraction must be in (0, 1], got {self.mask_fraction}")
        require(min(self.sharpness_probes, self.patience, self.mask_interval) >= 1, "counts must be at least 1")
        require(min(self.sharpness_mu, self.rge_mu, self.mask_mu, self.lr) > 0, "steps and lr must be positive")
        require(0.0 <= self.mask_ema < 1.0, f"mask_ema must be in [0, 1), got {self.mask_ema}")
        for name in ("switch_iterations", "switch_queries"):
            value = getattr(self, name)
            require(value is None or value >= 0, f"{name} must be non-negative or None, got {value}")


class SharpZO(Optimizer[SharpZOConfig]):
    """``solution``: the CMA mean in stage 1, the ZO-SGD iterate in stage 2."""

    name = "sharpzo"
    config_type = SharpZOConfig

    def __init__(self, dim: int, seed: int = 0, config: SharpZOConfig | None = None) -> None:
        super().__init__(dim, seed, config)
        self._cma: CMASearch | None = CMASearch(dim, self.config, self.rng)
        self.stage1_iterations = 0
        self.stage2_steps = 0
        self._shift = np.zeros(dim)  # ε* applied to the current generation
        self._candidates = np.zeros((0, dim))  # the current generation, unshifted
        self._probe_directions: np.ndarray | None = None  # for sharpness="rge"
        self._es_gradient: np.ndarray | None = None  # for sharpness="es"
        self._val_best = -np.inf
        self._val_stall = 0
        self._descent: RandomDirectionDescent | None = None
        self._mask: np.ndarray | None = None
        self._mask_gradient = np.zeros(dim)  # the free mask-score source of sharpness="es"
        self._phase: Phase = "population"
        if self._switch_due():
            self._switch()
        else:
            self._start_iteration()

    @property
    def solution(self) -> np.ndarray:
        return self._descent.w.copy() if self._descent is not None else self._cma.mean

    @property
    def stage(self) -> str:
        return "cma" if self._descent is None else "zo"

    def _request(self) -> Request:
        c = self.config
        if self._phase == "sharpness":
            theta = self._cma.mean
            if c.sharpness == "cge":
                return Request(Ask(cge_probes(theta, c.sharpness_mu)), "sharpness")
            self._probe_directions = gaussian_directions(self.rng, c.sharpness_probes, self.dim)
            return Request(Ask(rge_probes(theta, c.sharpness_mu, self._probe_directions)), "sharpness")
        if self._phase == "population":
            self._candidates = self._cma.sample()
            return Request(Ask(self._candidates + self._shift), "population")
        if self._phase == "val":
            return Request(Ask(self._cma.mean[None, :], split="val"), "val")
        assert self._descent is not None
        if self._phase == "mask":
            return Request(Ask(cge_probes(self._descent.w, c.mask_mu)), "mask")
        return Request(Ask(self._descent.probes(self._mask)), "step")

    def decline(self) -> bool:
        """A mask refresh (2d queries) that does not fit gives way to steps on the current mask (dense at first)."""
        if self._phase != "mask":
            return False
        self._pending = None
        self._phase = "step"
        return True

    def _absorb(self, request: Request, result: Evaluation) -> None:
        c = self.config
        if self._phase == "sharpness":
            if c.sharpness == "cge":
                gradient = cge_gradient(result.loss, c.sharpness_mu)
            else:
                assert self._probe_directions is not None
                gradient = rge_gradient(result.loss, c.sharpness_mu, self._probe_directions)
            self._shift = sharpness_shift(gradient, self._radius())
            self._phase = "population"
        elif self._phase == "population":
            self._absorb_population(result.loss)
        elif self._phase == "val":
            self._absorb_val(float(result.accuracy[0]))
            self._end_iteration()
        elif self._phase == "mask":
            self._set_mask(cge_gradient(result.loss, c.mask_mu))
            self._phase = "step"
        else:
            self._absorb_step(result.loss)

    def _absorb_population(self, loss: np.ndarray) -> None:
        if self.config.sharpness == "es":
            self._es_gradient = es_gradient(self._candidates, loss, self._cma.mean, self._cma.sigma)
        self._cma.update(loss)
        self.stage1_iterations += 1
        self.iteration += 1
        if self.config.auto_switch:
            self._phase = "val"
        else:
            self._end_iteration()

    def _absorb_val(self, accuracy: float) -> None:
        # The best only moves on an improvement larger than min_delta, so a slow creep still stalls.
        if accuracy > self._val_best + self.config.min_delta:
            self._val_best = accuracy
            self._val_stall = 0
        else:
            self._val_stall += 1

    def _absorb_step(self, loss: np.ndarray) -> None:
        assert self._descent is not None
        self._descent.step(loss)
        self.stage2_steps += 1
        self.iteration += 1
        if self._free_masks():
            ema = self.config.mask_ema
            self._mask_gradient = ema * self._mask_gradient + (1.0 - ema) * self._descent.gradient
        self._begin_step()

    def _radius(self) -> float:
        scale = 1.0 if self.config.rho_scale == "absolute" else self._cma.sigma
        return self.config.rho * scale

    def _start_iteration(self) -> None:
        c = self.config
        if c.rho > 0 and c.sharpness in ("cge", "rge"):
            self._phase = "sharpness"
            return
        if c.rho > 0 and self._es_gradient is not None:
            self._shift = sharpness_shift(self._es_gradient, self._radius())
        self._phase = "population"

    def _end_iteration(self) -> None:
        if self._switch_due():
            self._switch()
        else:
            self._start_iteration()

    def _switch_due(self) -> bool:
        c = self.config
        return (
            (c.switch_iterations is not None and self.stage1_iterations >= c.switch_iterations)
            or (c.switch_queries is not None and self.queries >= c.switch_queries)
            or (c.auto_switch and self._val_stall >= c.patience)
        )

    def _switch(self) -> None:
        self._descent = RandomDirectionDescent(self._cma.mean, self.config.lr, self.config.rge_mu, 1, self.rng)
        self._cma = None  # megabytes of covariance that every stage-2 checkpoint would otherwise carry
        if self._free_masks() and self._es_gradient is not None:
            self._mask_gradient = self._es_gradient
        self._begin_step()

    def _free_masks(self) -> bool:
        return self.config.sharpness == "es" and self.config.mask_fraction < 1.0

    def _begin_step(self) -> None:
        """Choose the next stage-2 phase: a mask refresh is due at the switch and every K steps."""
        refresh = self.config.mask_fraction < 1.0 and self.stage2_steps % self.config.mask_interval == 0
        if refresh and self._free_masks():
            self._set_mask(self._mask_gradient)
        self._phase = "mask" if refresh and not self._free_masks() else "step"

    def _set_mask(self, gradient: np.ndarray) -> None:
        assert self._descent is not None
        c = self.config
        scores = mask_scores(self._descent.w, gradient, c.mask_score)
        self._mask = select_mask(scores, c.mask_fraction, c.mask_keep, self.rng)

    def _details(self) -> Info:
        info: Info = {
            "phase": self._phase,
            "stage1_iterations": self.stage1_iterations,
            "stage2_steps": self.stage2_steps,
        }
        if self._descent is None:
            info.update(sigma=self._cma.sigma, shift_norm=float(np.linalg.norm(self._shift)))
            if self.config.auto_switch:
                info.update(val_best=float(self._val_best), val_stall=self._val_stall)
        else:
            info["grad_norm"] = float(np.linalg.norm(self._descent.gradient))
            info["mask_fraction"] = 1.0 if self._mask is None else float(self._mask.mean())
        return info
