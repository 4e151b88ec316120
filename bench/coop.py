"""White-box CoOp reference (server side, backprop): the headroom above zero-shot on the protocol.

    python bench/coop.py --dataset groceries --shots 16 --seeds 0 1 2

Loads the served model in-process (SHARPZO_MODEL / SHARPZO_PRETRAINED, default the
stand-in), encodes the few-shot, validation and held-out images once, then trains the
four context vectors with Adam through the frozen text tower. This is the upper
reference the black-box methods are measured against; it never runs in the client.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="groceries")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200, help="Adam steps (full batch)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/coop.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(ServerSettings())
    encoder = PromptedTextEncoder(loaded)
    _, p0 = encoder.token_embeddings("a photo of a")
    rows = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        task = few_shot_task(args.dataset, args.shots, seed)
        split_loss = {
            name: PromptLoss(encoder, loaded.logit_scale, task.class_names, features_of(loaded, part),
                             torch.as_tensor(part.labels))
            for name, part in (("train", task.train), ("val", task.val), ("test", task.test))
        }
        started = time.perf_counter()
        ctx, history = train_coop(split_loss["train"], p0, args.steps, args.lr)
        rows.append({
            "seed": seed,
            "zero_shot_test": split_loss["test"].accuracy(p0),
            "coop_test": split_loss["test"].accuracy(ctx),
            "coop_val": split_loss["val"].accuracy(ctx),
            "train_loss_start": history[0],
            "train_loss_end": history[-1],
            "seconds": time.perf_counter() - started,
        })
        print(json.dumps(rows[-1]))
    summary = {
        "dataset": args.dataset, "shots": args.shots, "model": loaded.name, "pretrained": loaded.pretrained,
        "steps": args.steps, "lr": args.lr, "runs": rows,
        "zero_shot_test_mean": float(np.mean([r["zero_shot_test"] for r in rows])),
        "coop_test_mean": float(np.mean([r["coop_test"] for r in rows])),
        "coop_test_std": float(np.std([r["coop_test"] for r in rows])),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    print(f"{args.dataset} {args.shots}-shot: zero-shot {summary['zero_shot_test_mean']:.1%}, "
          f"white-box CoOp {summary['coop_test_mean']:.1%} ± {summary['coop_test_std']:.1%} over seeds {args.seeds}")


if __name__ == "__main__":
    main()
