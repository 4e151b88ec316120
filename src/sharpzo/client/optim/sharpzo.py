"""SharpZO: sharpness-aware CMA-ES, then sparse ZO-SGD.

Stage 1, per iteration: a gradient estimate ĝ at the CMA mean θ gives
ε* = ρ ĝ/‖ĝ‖; the population w_i is evaluated at w_i + ε* and told to CMA-ES
unshifted. With the automatic switch a 1-point "val" ask of θ follows. Stage 2
starts from θ: every ``mask_interval`` steps a mask Ω is scored, and each step is
one masked random-direction ZO-SGD step (2q queries: q directions), optionally ZO-SAM's (``sam_rho``:
the pair evaluated at an ascent from w along the running average of the estimates).

Where ĝ comes from (``sharpness``):
- "es" (the default, chosen on validation): no extra queries: the average of the last
  ``shift_generations`` generations' ES gradients (none before the first, so ε* = 0
  there). The mask is scored once, at the switch, from the average of the last
  ``mask_generations`` ES gradients, and kept: stage 2's masked estimates say nothing
  about the coordinates the mask leaves out, so they cannot re-score it.
- "cge": coordinate-wise estimate at θ, 2d queries an iteration, and a CGE for
  every mask (the paper's version);
- "rge": ``sharpness_probes`` random pairs at θ, 2·probes queries.

Every length (ρ, the μ's, σ0, the bound) is in spreads and lr in spreads² per unit of
loss: see client/prompt.py. A CGE probe of length μ is w ± μ·√d·e_i.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..prompt import w_norm
from .base import Ask, Evaluation, Info, Optimizer, Probe, Request
from .cma_search import CMAConfig, CMASearch
from .config import SEQUENTIAL, LrScaling, clip_option, option, pipeline_option, require, require_stepping, scaled_rate
from .descent import RandomDirectionDescent
from .estimators import (
    cge_gradient,
    cge_probes,
    es_gradient,
    gaussian_directions,
    require_resolvable_step,
    rge_gradient,
    rge_probes,
    sharpness_shift,
)
from .masks import MaskKeep, MaskScore, mask_scores, select_mask

Phase = Literal["sharpness", "population", "val", "mask", "step"]
SEQUENTIAL_LR = 25.0  # stage 2's η one step at a time


@dataclass(frozen=True)
class Generation:
    """A stage-1 generation as drawn: its unshifted candidates and the mean and σ they were drawn around, which
    its ES gradient needs (a generation drawn ahead is told after the search has moved on)."""

    candidates: np.ndarray
    mean: np.ndarray
    sigma: float


@dataclass(frozen=True)
class SharpZOConfig(CMAConfig):
    sequential = {**SEQUENTIAL, "lr": SEQUENTIAL_LR}

    rho: float = option(
        0.05, "sharpness radius of ε* along ĝ/‖ĝ‖; 0 gives plain CMA-ES in stage 1 (best groceries validation on v2 "
        "of 0, 0.02, 0.05, 0.15, then checked on 3 selection seeds: BENCHMARKS.md; the paper's ρ/(σ√d) is about 0.01)"
    )
    rho_scale: Literal["population", "absolute"] = option(
        "population", "population: ε* is ρ times the population radius σ·√d (ρ·σ spreads); absolute: ρ spreads"
    )
    shift_generations: int = option(
        10, "sharpness='es': ε* from the average of the last N generations' ES gradients (picked with rho: 1 or 10)"
    )
    mask_generations: int = option(
        10, "sharpness='es': the mask from the average of the last N generations' ES gradients",
    )
    sharpness: Literal["cge", "es", "rge"] = option(
        "es",
        "source of ĝ for ε* and the mask scores: es (free: previous generation; chosen on groceries validation), "
        "cge (2d queries, the paper's), rge (2·sharpness_probes)",
    )
    sharpness_mu: float = option(1e-2, "μc, length in spreads of the stage-1 CGE/RGE probes (floor: estimators.py)")
    sharpness_probes: int = option(5, "random-direction pairs for sharpness='rge'")
    switch_iterations: int | None = option(
        None, "Tc: switch to stage 2 after this many stage-1 iterations (the paper: 100-500); None: by queries only"
    )
    switch_queries: int | None = option(None, "also switch once this many queries (all kinds) have been spent")
    switch_fraction: float | None = option(
        1 / 3, "also switch once this share of the run's budget is spent (about 1/3 did best on validation); None: off"
    )
    auto_switch: bool = option(
        False, "switch once validation accuracy of the CMA mean stalls (1 val query an iteration)"
    )
    patience: int = option(10, "auto switch: stage-1 iterations in a row without a val-accuracy improvement")
    min_delta: float = option(0.01, "auto switch: an improvement must beat the best val accuracy by more than this")
    lr: float = option(
        0.7 * SEQUENTIAL_LR, f"η, constant stage-2 learning rate in spreads²/loss, with steps in flight: 0.7 × the "
        f"{SEQUENTIAL_LR:g} of one step at a time (chosen on 10 groceries validation seeds; on 10 test seeds -0.8 +- "
        f"0.5 points against {SEQUENTIAL_LR:g}, not separable: BENCHMARKS.md \"Pipelined steps\"); {SEQUENTIAL_LR:g} "
        f"one step at a time, which a tune run with pipeline 1 takes (chosen on v1 validation; 50, 100 and 200 were no "
        f"better on v2)",
    )
    mask_lr: Literal["same", "rescaled"] = option(
        "same", "same: η as dense ZO-SGD; rescaled: η·(d+2)/(k+2) for k kept coordinates (the RGE second-moment ratio)"
    )
    rge_mu: float = option(
        1e-2, "μr, length in spreads of the stage-2 probes (directional derivatives within 5%: estimators.py)",
    )
    directions: int = option(
        1, "q: stage-2 random directions averaged per step, sent in one request (2q queries a step)",
    )
    lr_scaling: LrScaling = option(
        "sqrt", "the stage-2 step with q directions is lr·√q (sqrt), lr·q (linear) or lr (none)"
    )
    sam_rho: float = option(
        0.0, "ZO-SAM stage 2: length in spreads of the ascent ε = ρ·m/‖m‖ at which each step's pair is evaluated, "
        "m a running average of the estimates (descent.py); 0: off"
    )
    sam_beta: float = option(0.9, "ZO-SAM: weight of the past in m's running average")
    mask_fraction: float = option(0.5, "fraction of coordinates stage 2 updates; 1.0 is dense (no mask queries)")
    mask_keep: MaskKeep = option(
        "highest", "highest: prune the least salient coordinates (masks.py); lowest: the authors' code (Sparse-MeZO)"
    )
    mask_score: MaskScore = option(
        "zscore", "zscore: w²·z(ĝ²) (paper); zscore-abs: w²·z(|ĝ|) (authors' code); magnitude: w²·ĝ²"
    )
    mask_mu: float = option(1e-2, "length in spreads of the mask's CGE probes (floor: estimators.py)")
    mask_interval: int = option(200, "K: re-score the mask every K stage-2 steps (CGE masks only)")
    pipeline: int = pipeline_option()
    clip: float | None = clip_option()
    stage1_pipeline: int = option(
        1, "stage-1 CMA-ES generations in flight at once, as bbt's pipeline (cma_search.py), with sharpness='es' or "
        "rho=0 and no auto_switch; never across the switch; 1: one at a time (2 lost 3 points on groceries "
        "validation, BENCHMARKS.md)",
    )

    def __post_init__(self) -> None:
        require(
            str(self.rho_scale) != "sigma",  # a value older configs (checkpoints, presets) may still hold
            "rho_scale='sigma' scaled ε* by σ, not by the population radius σ·√d; use rho_scale='population' "
            "(ρ is then a fraction of σ·√d; the old ρ is ρ/√d of it)",
        )
        super().__post_init__()
        require(self.rho >= 0, f"rho must be non-negative, got {self.rho}")
        require(0.0 < self.mask_fraction <= 1.0, f"mask_fraction must be in (0, 1], got {self.mask_fraction}")
        counts = (self.sharpness_probes, self.directions, self.patience, self.mask_interval,
                  self.shift_generations, self.mask_generations, self.stage1_pipeline)
        require(min(counts) >= 1, "counts must be at least 1")
        require(self.lr > 0, f"lr must be positive, got {self.lr}")
        require_stepping(self.pipeline, self.clip)  # pipeline >= 1 is checked there
        require(self.sam_rho >= 0, f"sam_rho must be non-negative, got {self.sam_rho}")
        require(0.0 <= self.sam_beta < 1.0, f"sam_beta must be in [0, 1), got {self.sam_beta}")
        for name in ("sharpness_mu", "rge_mu", "mask_mu"):
            require_resolvable_step(name, getattr(self, name))
        for name in ("switch_iterations", "switch_queries"):
            value = getattr(self, name)
            require(value is None or value >= 0, f"{name} must be non-negative or None, got {value}")
        require(
            self.switch_fraction is None or 0 <= self.switch_fraction <= 1,
            f"switch_fraction must be in [0, 1] or None, got {self.switch_fraction}",
        )


class SharpZO(Optimizer[SharpZOConfig]):
    """``solution``: the CMA mean in stage 1, the ZO-SGD iterate in stage 2."""

    name = "sharpzo"
    config_type = SharpZOConfig

    def __init__(self, dim: int, seed: int = 0, config: SharpZOConfig | None = None) -> None:
        super().__init__(dim, seed, config)
        self._cma: CMASearch | None = CMASearch(dim, self.config, self.rng, ahead=self.config.stage1_pipeline)
        self.stage1_iterations = 0
        self.stage2_steps = 0
        self._shift = np.zeros(dim)  # ε* applied to the current generation
        self._generations: deque[Generation] = deque()  # stage-1 generations asked and not yet told, oldest first
        self._probe_directions: np.ndarray | None = None  # for sharpness="rge"
        self._es_gradients: list[np.ndarray] = []  # sharpness="es": the latest generations' ES gradients, newest last
        self._val_best = -np.inf
        self._val_stall = 0
        self._descent: RandomDirectionDescent | None = None
        self._mask: np.ndarray | None = None
        self._phase: Phase = "population"
        if self._switch_due():
            self._switch()
        else:
            self._start_iteration()

    @property
    def solution(self) -> np.ndarray:
        return self._descent.w.copy() if self._descent is not None else self._stage1.mean

    @property
    def stage(self) -> str:
        return "cma" if self._descent is None else "zo"

    @property
    def depth(self) -> int:
        """Stage 2's steps pipeline, and stage 1's generations (``_ahead_size`` says when)."""
        return self.config.pipeline if self._descent is not None else self.config.stage1_pipeline

    @property
    def _stage1(self) -> CMASearch:
        """Stage 1's search, which the switch to stage 2 drops."""
        if self._cma is None:
            raise RuntimeError("SharpZO is in stage 2: its CMA-ES search is gone")
        return self._cma

    @property
    def mask(self) -> np.ndarray | None:
        """Stage 2's current 0/1 coordinate mask; None while there is none (stage 1, or dense)."""
        return None if self._mask is None else self._mask.copy()

    def _request(self) -> Request:
        c = self.config
        if self._phase == "sharpness":
            theta = self._stage1.mean
            if c.sharpness == "cge":
                return Request(Ask(cge_probes(theta, w_norm(c.sharpness_mu, self.dim))), "sharpness")
            self._probe_directions = gaussian_directions(self.rng, c.sharpness_probes, self.dim)
            return Request(Ask(rge_probes(theta, c.sharpness_mu, self._probe_directions)), "sharpness")
        if self._phase == "population":
            generation = Generation(self._stage1.sample(), self._stage1.mean, self._stage1.sigma)
            self._generations.append(generation)
            return Request(Ask(generation.candidates + self._shift), "population")
        if self._phase == "val":
            return Request(Ask(self._stage1.mean[None, :], split="val"), "val")
        assert self._descent is not None
        if self._phase == "mask":
            return Request(Ask(cge_probes(self._descent.w, w_norm(c.mask_mu, self.dim))), "mask")
        points, probe = self._descent.probes(self._mask)
        return Request(Ask(points), "step", probe)

    def _ahead_size(self) -> int | None:
        """Stage-2 steps may be asked ahead when no mask refresh can come between them (dense, or ES masks);
        stage-1 generations when nothing is asked between them and the switch is not due before the last
        pending one is told."""
        c = self.config
        if self._phase == "population":
            between = c.auto_switch or (c.rho > 0 and c.sharpness != "es")
            pending = sum(len(request.ask.points) for request in self._queue)
            due = self._switch_due(self.queries + pending, self.stage1_iterations + len(self._queue))
            return None if between or due else c.popsize
        no_refresh = c.mask_fraction == 1.0 or self._free_masks()
        return 2 * c.directions if self._phase == "step" and no_refresh else None

    def decline(self) -> bool:
        """A mask refresh (2d queries) that does not fit gives way to steps on the current mask (dense at first)."""
        if self._phase != "mask":
            return False
        self._queue.pop()  # the refresh: it is asked alone (``_ahead_size``)
        self._phase = "step"
        return True

    def _absorb(self, request: Request, result: Evaluation) -> None:
        c = self.config
        if request.purpose == "sharpness":
            if c.sharpness == "cge":
                gradient = cge_gradient(result.loss, w_norm(c.sharpness_mu, self.dim))
            else:
                assert self._probe_directions is not None
                gradient = rge_gradient(result.loss, c.sharpness_mu, self._probe_directions)
            self._shift = sharpness_shift(gradient, self._radius())
            self._phase = "population"
        elif request.purpose == "population":
            self._absorb_population(result.loss)
        elif request.purpose == "val":
            self._absorb_val(float(result.accuracy[0]))
            self._end_iteration()
        elif request.purpose == "mask":
            self._set_mask(cge_gradient(result.loss, w_norm(c.mask_mu, self.dim)))
            self._phase = "step"
        else:
            self._absorb_step(result.loss, request.probed())

    def _absorb_population(self, loss: np.ndarray) -> None:
        c = self.config
        generation = self._generations.popleft()
        if c.sharpness == "es":
            self._es_gradients.append(es_gradient(generation.candidates, loss, generation.mean, generation.sigma))
            del self._es_gradients[: -max(c.shift_generations, c.mask_generations)]
        self._stage1.update(loss)
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

    def _absorb_step(self, loss: np.ndarray, probe: Probe) -> None:
        assert self._descent is not None
        self._descent.step(loss, probe)
        self.stage2_steps += 1
        self.iteration += 1
        self._begin_step()

    def _radius(self) -> float:
        """‖ε*‖ in w space: ρ spreads, or ρ·σ spreads (ρ times the population radius σ·√d)."""
        length = self.config.rho * (1.0 if self.config.rho_scale == "absolute" else self._stage1.sigma)
        return w_norm(length, self.dim)

    def _es_average(self, generations: int) -> np.ndarray | None:
        recent = self._es_gradients[-generations:]
        return np.mean(recent, axis=0) if recent else None

    def _start_iteration(self) -> None:
        c = self.config
        if c.rho > 0 and c.sharpness in ("cge", "rge"):
            self._phase = "sharpness"
            return
        average = self._es_average(c.shift_generations)
        if c.rho > 0 and average is not None:
            self._shift = sharpness_shift(average, self._radius())
        self._phase = "population"

    def _end_iteration(self) -> None:
        if self._switch_due():
            self._switch()
        else:
            self._start_iteration()

    def _switch_due(self, queries: int | None = None, iterations: int | None = None) -> bool:
        """Whether stage 1 ends now, or once ``queries`` and ``iterations`` (stage 1's) are reached."""
        c = self.config
        queries = self.queries if queries is None else queries
        iterations = self.stage1_iterations if iterations is None else iterations
        return (
            (c.switch_iterations is not None and iterations >= c.switch_iterations)
            or (c.switch_queries is not None and queries >= c.switch_queries)
            or (
                c.switch_fraction is not None and self.budget is not None and queries >= c.switch_fraction * self.budget
            )
            or (c.auto_switch and self._val_stall >= c.patience)
        )

    def _switch(self) -> None:
        c = self.config
        lr = scaled_rate(c.lr, c.directions, 1, c.lr_scaling)
        if c.mask_lr == "rescaled" and c.mask_fraction < 1.0:
            kept = max(1, int(c.mask_fraction * self.dim + 0.5))
            lr *= (self.dim + 2) / (kept + 2)
        self._descent = RandomDirectionDescent(self._stage1.mean, lr, c.rge_mu, c.directions, self.rng,
                                               w_norm(c.sam_rho, self.dim), c.sam_beta, c.clip)
        self._cma = None  # megabytes of covariance that every stage-2 checkpoint would otherwise carry
        if self._free_masks():
            average = self._es_average(c.mask_generations)
            self._set_mask(np.zeros(self.dim) if average is None else average)
        self._es_gradients = []
        self._begin_step()

    def _free_masks(self) -> bool:
        return self.config.sharpness == "es" and self.config.mask_fraction < 1.0

    def _begin_step(self) -> None:
        """Choose the next stage-2 phase: a mask refresh is due at the switch and every K steps."""
        refresh = self.config.mask_fraction < 1.0 and self.stage2_steps % self.config.mask_interval == 0
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
            info.update(sigma=self._stage1.sigma, shift_norm=float(np.linalg.norm(self._shift)))
            if self.config.auto_switch:
                info.update(val_best=float(self._val_best), val_stall=self._val_stall)
        else:
            info["grad_norm"] = float(np.linalg.norm(self._descent.gradient))
            info.update(self._descent.clip_details())
            info["mask_fraction"] = 1.0 if self._mask is None else float(self._mask.mean())
        return info
