"""Pretrain the stand-in CLIP on official train splits: ``python -m sharpzo.server.pretrain --help``."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import open_clip
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .pretrain_data import CAPTION_TEMPLATES, PRIMARY, CorpusPart, GroupSampler, build_corpus
from .registry import STANDIN_MODEL, STANDIN_WEIGHTS, manifest_for, register_project_configs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sharpzo.server.pretrain", description=__doc__.split(":")[0] + "."
    )
    parser.add_argument("--steps", type=int, default=420, help="length of the lr schedule in optimiser steps (default 420, ~20 min on 2 idle cores)")
    parser.add_argument("--minutes", type=float, default=25.0, help="wall-clock cap: stop early and save if reached (default 25)")
    parser.add_argument(
        "--stop-after", type=int, default=None, metavar="N",
        help="stop after N steps of the schedule: replays a run that the time cap stopped, exactly",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=STANDIN_WEIGHTS, help=f"checkpoint path (default {STANDIN_WEIGHTS})")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--group-size", type=int, default=32, help="classes per contrastive group, all distinct")
    parser.add_argument("--groups", type=int, default=4, help="groups per batch (batch = groups x group size)")
    parser.add_argument("--primary-share", type=float, default=0.4, help=f"share of each group from {PRIMARY}")
    parser.add_argument("--max-per-dataset", type=int, default=15000, help="train images kept per dataset")
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


def make_optimizer(model: torch.nn.Module, lr: float, steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW as CLIP uses it (no decay on gains, biases, logit scale), linear warm-up then cosine to zero."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.98), eps=1e-6,
    )
    warmup = max(1, steps // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train(
    model: open_clip.CLIP, sampler: GroupSampler, tokenizer: Callable[[list[str]], torch.Tensor], args: argparse.Namespace
) -> tuple[int, float, float]:
    """Run the schedule until it ends, ``args.stop_after`` or ``args.minutes``; return steps done, seconds, last loss."""
    optimizer, scheduler = make_optimizer(model, args.lr, args.steps)
    loss_fn = open_clip.ClipLoss()
    model.train()
    start = time.monotonic()
    loss_value = float("nan")
    planned = args.steps if args.stop_after is None else min(args.steps, args.stop_after)
    columns = (TextColumn("pretraining"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.3f}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns) as progress:
        task = progress.add_task("train", total=planned, loss=loss_value)
        for step in range(planned):
            if time.monotonic() - start > args.minutes * 60:
                progress.console.print(f"time cap of {args.minutes} min reached after {step} steps")
                return step, time.monotonic() - start, loss_value
            batch = sampler.sample()
            out = model(batch.images, tokenizer(batch.captions))
            image_groups = out["image_features"].split(args.group_size)
            text_groups = out["text_features"].split(args.group_size)
            loss = torch.stack(
                [loss_fn(i, t, out["logit_scale"]) for i, t in zip(image_groups, text_groups)]
            ).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            loss_value = loss.item()
            progress.update(task, advance=1, loss=loss_value)
            if (step + 1) % max(1, args.steps // 10) == 0:  # the bar is not drawn when output is not a terminal
                progress.console.print(f"step {step + 1}: loss {loss_value:.3f}, logit scale {model.logit_scale.exp().item():.1f}")
    return planned, time.monotonic() - start, loss_value


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(path: Path, record: dict[str, object], parts: list[CorpusPart]) -> None:
    record = dict(record)
    record["corpus"] = {
        part.name: {
            "split": "train",
            "class_names": part.class_names,
            "count": len(part.hashes),
            "train_indices": part.train_indices.tolist(),
            "sha256": part.hashes,
        }
        for part in parts
    }
    with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(json.dumps(record, indent=1).encode())


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    register_project_configs()
    model, _, preprocess = open_clip.create_model_and_transforms(STANDIN_MODEL, pretrained=None, output_dict=True)
    tokenizer = open_clip.get_tokenizer(STANDIN_MODEL)

    began = time.monotonic()
    parts = build_corpus(preprocess, args.max_per_dataset, args.seed)
    prep_seconds = time.monotonic() - began
    print("corpus:", ", ".join(f"{p.name} {len(p.hashes)}" for p in parts), f"(preprocessed in {prep_seconds:.0f} s)")
    sampler = GroupSampler(parts, args.group_size, args.groups, args.primary_share, args.seed)
    steps_done, seconds, final_loss = train(model, sampler, tokenizer, args)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.half() for k, v in model.state_dict().items()}, args.out)
    record: dict[str, object] = {
        "model": STANDIN_MODEL,
        "checkpoint": args.out.name,
        "checkpoint_sha256": sha256_file(args.out),
        "checkpoint_bytes": args.out.stat().st_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seed": args.seed,
        "steps": args.steps,
        "steps_done": steps_done,
        "stop_after": args.stop_after,
        "max_per_dataset": args.max_per_dataset,
        "batch_size": args.groups * args.group_size,
        "group_size": args.group_size,
        "primary_share": args.primary_share,
        "lr": args.lr,
        "threads": args.threads,
        "train_seconds": round(seconds, 1),
        "preprocess_seconds": round(prep_seconds, 1),
        "final_loss": final_loss,
        "caption_templates": list(CAPTION_TEMPLATES),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
    }
    write_manifest(manifest_for(args.out), record, parts)
    print(f"saved {args.out} ({record['checkpoint_bytes'] / 1e6:.1f} MB, sha256 {record['checkpoint_sha256']})")
    print(f"{steps_done} steps in {seconds / 60:.1f} min, final loss {final_loss:.3f}")


if __name__ == "__main__":
    main()
