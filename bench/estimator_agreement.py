"""Finite-difference estimators against autograd at the production setting, and the forward pass's noise.

    .venv/bin/python bench/estimator_agreement.py --model sharpzo-standin-v1 --out bench/results/estimators-v1.json

Setting: 16-shot groceries (seed 0), d = 512, the default prompt space (alpha = 1), at w = 0
and at a point of the CMA population's size (w ~ N(0, 1.5^2), i.e. sigma0 spreads).
1. Noise: 16 candidates scored over HTTP by a real server, alone and then inside a batch
   of 64 other candidates (different batch, shape and chunking); and the rounding jitter:
   the residual of a straight-line fit to L(w + t u) over 33 steps t in [-1e-6, 1e-6] spreads,
   far below any curvature, so what is left is rounding.
2. RGE: 16 directional derivatives per mu against u.g (autograd), relative error each.
3. CGE: a 64-coordinate subset per mu, then all 512 coordinates at the chosen mu; cosine
   with autograd. Lengths are in spreads (client/prompt.py); a CGE probe is mu*sqrt(d) along e_i.
4. The mask statistic: mean g_i^2 of the coordinates a mask keeps over the mean g_i^2 of all
   (1 for a random mask), for Z-pruning from the CGE, keeping the highest and the lowest.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from sharpzo.client.embedded import EmbeddedServer
from sharpzo.client.optim.estimators import cge_gradient, cge_probes, directional_derivatives, rge_probes
from sharpzo.client.optim.masks import kept_gradient_ratio, mask_scores, select_mask
from sharpzo.client.prompt import PromptSpace, w_norm
from sharpzo.tools.agreement import InProcessScorer, forward_noise

DIM = 512


def ulp(loss: float) -> float:
    return float(np.spacing(np.float32(loss)))


def jitter(scorer: InProcessScorer, space: PromptSpace, w: np.ndarray, rng: np.random.Generator) -> float:
    u = rng.standard_normal(DIM)
    t = np.linspace(-1e-6, 1e-6, 33)
    losses = scorer.losses(space.ctx(w + t[:, None] * u))
    residual = losses - np.polyval(np.polyfit(t, losses, 1), t)
    return float(residual.std())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="server model (default: the server's default model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rge-mus", type=float, nargs="+", default=[1e-4, 5e-4, 1e-3, 1e-2, 1e-1])
    parser.add_argument("--cge-mus", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2, 1e-1])
    parser.add_argument("--full-cge-mu", type=float, default=1e-2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/estimators.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from sharpzo.server.project_models import DEFAULT_MODEL

    model = args.model or DEFAULT_MODEL
    scorer = InProcessScorer.load(model)
    space = PromptSpace.create(scorer.p0(), DIM, seed=0)
    rng = np.random.default_rng(0)
    points = {"w=0": np.zeros(DIM), "w~N(0,1.5^2)": rng.normal(0.0, 1.5, DIM)}
    report: dict = {"model": model, "logit_scale": scorer.loaded.logit_scale, "dim": DIM, "alpha": space.alpha,
                    "spread": space.spread, "points": {}}

    candidates = np.concatenate([w + rng.normal(0.0, 0.01, (8, DIM)) for w in points.values()])
    filler = rng.normal(0.0, 1.5, (64, DIM))
    with EmbeddedServer(model=model, env={"SHARPZO_THREADS": str(args.threads)}) as server:
        batch_noise = forward_noise(server.url, scorer.images, space.ctx(candidates), space.ctx(filler))
    in_process = scorer.losses(space.ctx(candidates))
    report["batch_noise"] = {"max": float(batch_noise.max()), "median": float(np.median(batch_noise)),
                             "max_in_ulps": float(max(d / ulp(x) for d, x in zip(batch_noise, in_process)))}
    print("batch noise", report["batch_noise"])

    for label, w in points.items():
        started = time.perf_counter()
        loss, g = scorer.gradient(space, w)
        row: dict = {"loss": loss, "ulp": ulp(loss), "grad_norm": float(np.linalg.norm(g)),
                     "jitter": jitter(scorer, space, w, rng)}
        noise = max(row["jitter"], float(batch_noise.max()))
        row["noise"] = noise
        u = rng.standard_normal((16, DIM))
        exact = u @ g
        row["rge"] = {}
        for mu in args.rge_mus:
            estimate = directional_derivatives(scorer.losses(space.ctx(rge_probes(w, mu, u))), mu)
            rel = np.abs(estimate - exact) / np.abs(exact)
            row["rge"][str(mu)] = {"max_rel_error": float(rel.max()), "median_rel_error": float(np.median(rel)),
                                   "median_abs_delta_loss_in_noise": float(np.median(2 * mu * np.abs(exact)) / noise)}
        subset = rng.choice(DIM, 64, replace=False)
        row["cge_subset"] = {}
        for mu in args.cge_mus:
            step = w_norm(mu, DIM)
            probes = np.concatenate([w + step * np.eye(DIM)[subset], w - step * np.eye(DIM)[subset]])
            estimate = directional_derivatives(scorer.losses(space.ctx(probes)), step)
            cos = float(estimate @ g[subset] / (np.linalg.norm(estimate) * np.linalg.norm(g[subset]) + 1e-300))
            row["cge_subset"][str(mu)] = {"cosine": cos, "zero_fraction": float(np.mean(estimate == 0))}
        step = w_norm(args.full_cge_mu, DIM)
        cge = cge_gradient(scorer.losses(space.ctx(cge_probes(w, step))), step)
        row["cge_full"] = {"mu": args.full_cge_mu, "cosine": float(cge @ g / (np.linalg.norm(cge) * np.linalg.norm(g))),
                           "norm_ratio": float(np.linalg.norm(cge) / np.linalg.norm(g))}
        mask_rng = np.random.default_rng(1)
        row["mask_ratio"] = {
            keep: kept_gradient_ratio(select_mask(mask_scores(w, cge, "zscore"), 0.5, keep, mask_rng), g)
            for keep in ("highest", "lowest")
        }
        row["mask_ratio"]["random"] = float(np.mean([
            kept_gradient_ratio(select_mask(mask_rng.random(DIM), 0.5, "highest", mask_rng), g) for _ in range(200)
        ]))
        row["seconds"] = time.perf_counter() - started
        report["points"][label] = row
        print(label, json.dumps(row, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
