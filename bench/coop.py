"""White-box CoOp reference (server side, backprop): the headroom above zero-shot on the protocol.

    python bench/coop.py --dataset groceries --shots 16 --seeds 0 1 2
    python bench/coop.py --dataset groceries --seeds 0 --lr 1e-3 2e-3 5e-3 1e-2 --steps 200 600   # chosen on val

Loads the served model in-process (SHARPZO_MODEL / SHARPZO_PRETRAINED, default the
stand-in), encodes the few-shot, validation and held-out images once, then trains the
four context vectors with Adam through the frozen text tower. This is the upper
reference the black-box methods are measured against; it never runs in the client.
Given several learning rates or step counts it runs every pair and reports the one with
the best mean validation accuracy (never the test set) as the result.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sharpzo.data.base import LabeledImages
from sharpzo.data.fewshot import few_shot_task
from sharpzo.server.images import encode_images
from sharpzo.server.model import load_model
from sharpzo.server.settings import ServerSettings
from sharpzo.server.text import PromptedTextEncoder
from sharpzo.tools.whitebox import PromptLoss, train_coop


def features_of(loaded, images: LabeledImages) -> torch.Tensor:
    return encode_images(loaded, [Image.open(io.BytesIO(b)).convert("RGB") for b in images.images])


def run_setting(
    p0: torch.Tensor, split_loss: dict[int, dict[str, PromptLoss]], lr: float, steps: int
) -> dict[str, object]:
    rows = []
    for seed, losses in split_loss.items():
        torch.manual_seed(seed)
        started = time.perf_counter()
        ctx, history = train_coop(losses["train"], p0, steps, lr)
        rows.append({
            "seed": seed,
            "zero_shot_test": losses["test"].accuracy(p0),
            "zero_shot_val": losses["val"].accuracy(p0),
            "coop_test": losses["test"].accuracy(ctx),
            "coop_val": losses["val"].accuracy(ctx),
            "train_loss_start": history[0],
            "train_loss_end": history[-1],
            "seconds": time.perf_counter() - started,
        })
    keys = ("zero_shot_test", "zero_shot_val", "coop_test", "coop_val")
    mean = {key: float(np.mean([r[key] for r in rows])) for key in keys}
    print(f"lr {lr:g}, {steps} steps: val {mean['coop_val']:.1%} (zero-shot {mean['zero_shot_val']:.1%}), "
          f"test {mean['coop_test']:.1%}")
    return {
        "steps": steps, "lr": lr, "runs": rows,
        "zero_shot_test_mean": mean["zero_shot_test"], "zero_shot_val_mean": mean["zero_shot_val"],
        "coop_val_mean": mean["coop_val"], "coop_test_mean": mean["coop_test"],
        "coop_test_std": float(np.std([r["coop_test"] for r in rows])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="groceries")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, nargs="+", default=[200], help="Adam steps (full batch); several: a sweep")
    parser.add_argument("--lr", type=float, nargs="+", default=[2e-3], help="Adam learning rate; several: a sweep")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/coop.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(ServerSettings())
    encoder = PromptedTextEncoder(loaded)
    _, p0 = encoder.token_embeddings("a photo of a")
    split_loss = {}
    for seed in args.seeds:
        task = few_shot_task(args.dataset, args.shots, seed)
        split_loss[seed] = {
            name: PromptLoss(encoder, loaded.logit_scale, task.class_names, features_of(loaded, part),
                             torch.as_tensor(part.labels))
            for name, part in (("train", task.train), ("val", task.val), ("test", task.test))
        }
    sweep = [run_setting(p0, split_loss, lr, steps) for lr in args.lr for steps in args.steps]
    chosen = max(sweep, key=lambda setting: setting["coop_val_mean"])  # the first of equals: the grid's order
    summary = {"dataset": args.dataset, "shots": args.shots, "model": loaded.name, "pretrained": loaded.pretrained,
               "seeds": args.seeds, **chosen}
    if len(sweep) > 1:
        summary["selected_on"] = "coop_val_mean"
        summary["sweep"] = [{k: v for k, v in setting.items() if k != "runs"} for setting in sweep]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    print(f"{args.dataset} {args.shots}-shot: zero-shot {summary['zero_shot_test_mean']:.1%}, white-box CoOp "
          f"(lr {chosen['lr']:g}, {chosen['steps']} steps) {summary['coop_test_mean']:.1%} ± "
          f"{summary['coop_test_std']:.1%} over seeds {args.seeds}")


if __name__ == "__main__":
    main()
