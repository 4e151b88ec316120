"""Pretrain a stand-in CLIP on official train splits: ``python -m sharpzo.tools.pretrain --help``.

A run lives in its run directory: ``state.pt`` (model, optimiser, schedule, both RNGs and the
step, rewritten atomically every few minutes and on SIGINT/SIGTERM) and ``log.jsonl`` (one line
per step). ``--resume`` continues from ``state.pt`` bit for bit, so a run split over several
sittings ends with the same weights as one that was not. When the schedule ends, the fp16
weights and their manifest are written to ``--out``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import open_clip
import torch

from sharpzo.server.project_models import DEFAULT_MODEL, manifest_for, register_project_configs, weights_for

from .corpus import CAPTION_TEMPLATES, DOMAIN_TEMPLATES, PRIMARY, CorpusPart, GroupSampler, build_corpus
from .pretrain_plot import plot_log

STATE_FORMAT = 2


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Schedule:
    """Everything that decides the trajectory; a resumed run must use the same values."""

    model: str = _setting(DEFAULT_MODEL, "open_clip model name of a config in model_configs/")
    steps: int = _setting(1000, "length of the lr schedule in optimiser steps; the run always goes to its end")
    seed: int = _setting(0, "seed of the corpus subsample, the batches, the augmentation and the initial weights")
    lr: float = _setting(1e-3, "peak AdamW learning rate")
    logit_scale_start: float = _setting(1 / 0.07, "logit scale at step 0 (CLIP's initial 1/0.07)")
    logit_scale_end: float = _setting(
        100.0, "logit scale reached at the end of the ramp and held to the end (CLIP's clamp: 100)"
    )
    logit_scale_ramp: float = _setting(
        0.5, "share of the schedule over which the logit scale rises, log-linearly, from start to end"
    )
    group_size: int = _setting(32, "classes per contrastive group, all distinct")
    groups: int = _setting(4, "groups per batch (batch = groups x group size)")
    primary_share: float = _setting(0.25, f"share of each group taken from {PRIMARY}")
    domain_captions: float = _setting(
        0.0, "share of captions in their dataset's own words ('a photo of a {}, a type of fruit.') "
        "instead of the generic templates"
    )
    max_per_dataset: int = _setting(15000, "train images kept per dataset (seeded subsample)")
    threads: int = _setting(1, "torch CPU threads (part of the schedule: a different count rounds differently)")


# What a run saved before a setting existed did in its place.
_BEFORE_IT_EXISTED: dict[str, Any] = {"domain_captions": 0.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sharpzo.tools.pretrain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for setting in fields(Schedule):
        parser.add_argument(
            f"--{setting.name.replace('_', '-')}", type=type(setting.default), default=None,
            help=f"{setting.metadata['help']} (default {setting.default})",
        )
    parser.add_argument("--run-dir", type=Path, default=None, help="state and log folder (default runs/pretrain/MODEL)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    parser.add_argument(
        "--stop-after", type=int, default=None, metavar="N",
        help="checkpoint and stop once step N of the schedule is done (resume later with --resume)",
    )
    parser.add_argument(
        "--checkpoint-minutes", type=float, default=3.0, help="checkpoint at least this often (default 3)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="fp16 weights written at the end (default: the model's shipped path)"
    )
    return parser.parse_args(argv)


def resolve_schedule(args: argparse.Namespace, saved: dict[str, Any] | None) -> Schedule:
    """Flags over defaults for a new run; for a resumed run the saved values, and no flag may contradict them."""
    given = {k: getattr(args, k) for k in asdict(Schedule()) if getattr(args, k) is not None}
    if saved is None:
        return Schedule(**given)
    saved = _BEFORE_IT_EXISTED | saved
    clashes = {k: (v, saved[k]) for k, v in given.items() if v != saved[k]}
    if clashes:
        listed = ", ".join(f"--{k.replace('_', '-')} {new} (run has {old})" for k, (new, old) in clashes.items())
        raise SystemExit(f"cannot resume with a different schedule: {listed}")
    return Schedule(**saved)


def clip_adamw(
    model: open_clip.CLIP, lr: float, steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW as CLIP uses it (no decay on gains and biases), linear warm-up then cosine to zero.

    The logit scale is not among the parameters: it follows ``logit_scale_at`` instead.
    """
    trained = [p for p in model.parameters() if p is not model.logit_scale]
    decay = [p for p in trained if p.ndim >= 2]
    no_decay = [p for p in trained if p.ndim < 2]
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


def logit_scale_at(schedule: Schedule, step: int) -> float:
    """The logit scale of a step: a log-linear rise from start to end over the ramp, then held.

    Measured on 100-step probes: starting at 100 left the loss at chance (ln 32) for 20 steps and
    zero-shot at chance after 100; a learned scale started at 14.3 fell to 11 instead of rising. A
    short run reaches CLIP's temperature only if it is led there, and the held part adapts the
    features to it.
    """
    ramp_steps = max(1.0, schedule.logit_scale_ramp * schedule.steps)
    t = min(1.0, step / ramp_steps)
    return math.exp((1 - t) * math.log(schedule.logit_scale_start) + t * math.log(schedule.logit_scale_end))


class Trainer:
    """The training state and one step of it; ``state_dict`` holds all of it, RNGs and step included."""

    def __init__(self, model: open_clip.CLIP, sampler: GroupSampler, tokenizer: Callable[[list[str]], torch.Tensor],
                 schedule: Schedule) -> None:
        self.model = model
        self.sampler = sampler
        self.tokenizer = tokenizer
        self.schedule = schedule
        model.logit_scale.requires_grad_(False)
        self.optimizer, self.scheduler = clip_adamw(model, schedule.lr, schedule.steps)
        self.loss_fn = open_clip.ClipLoss()
        self.step = 0
        self.train_seconds = 0.0

    def train_step(self) -> float:
        self.model.train()
        self.model.logit_scale.fill_(math.log(logit_scale_at(self.schedule, self.step)))
        batch = self.sampler.sample()
        out = self.model(batch.images, self.tokenizer(batch.captions))
        size = self.schedule.group_size
        pairs = zip(out["image_features"].split(size), out["text_features"].split(size))
        loss = torch.stack([self.loss_fn(i, t, out["logit_scale"]) for i, t in pairs]).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return loss.item()

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "schedule": asdict(self.schedule),
            "step": self.step,
            "train_seconds": self.train_seconds,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler_rng": self.sampler.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.rng.bit_generator.state = state["sampler_rng"]
        torch.set_rng_state(state["torch_rng"])
        self.step = state["step"]
        self.train_seconds = state["train_seconds"]

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)


def read_state(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise SystemExit(f"nothing to resume: {path} does not exist (start the run without --resume)")
    state = torch.load(path, weights_only=False)
    if state.get("format") != STATE_FORMAT:
        raise SystemExit(f"{path} is pretraining state format {state.get('format')}; this version reads {STATE_FORMAT}")
    return state


def truncate_log(path: Path, step: int) -> None:
    """Drop the log lines of steps after the checkpoint: a resumed run logs them again."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in lines))


class StopRequest:
    """SIGINT/SIGTERM ask the loop to checkpoint and stop after the current step."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: object) -> None:
        self.requested = True


def run(trainer: Trainer, run_dir: Path, stop_after: int | None, checkpoint_minutes: float) -> bool:
    """Train to the schedule's end (or ``stop_after``), logging every step; return True if the schedule ended."""
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / "state.pt"
    stop = StopRequest()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    end = trainer.schedule.steps if stop_after is None else min(trainer.schedule.steps, stop_after)
    batch_size = trainer.schedule.groups * trainer.schedule.group_size
    last_save = time.monotonic()
    try:
        with (run_dir / "log.jsonl").open("a") as log:
            while trainer.step < end and not stop.requested:
                began = time.monotonic()
                loss = trainer.train_step()
                seconds = time.monotonic() - began
                trainer.train_seconds += seconds
                record = {
                    "step": trainer.step, "loss": round(loss, 5),
                    "logit_scale": round(trainer.model.logit_scale.exp().item(), 3),
                    "lr": trainer.scheduler.get_last_lr()[0], "images_per_s": round(batch_size / seconds, 1),
                    "train_seconds": round(trainer.train_seconds, 1),
                }
                log.write(json.dumps(record) + "\n")
                log.flush()
                if trainer.step % 10 == 0 or trainer.step == end:
                    print(f"step {trainer.step}/{trainer.schedule.steps}  loss {loss:.3f}  "
                          f"logit scale {record['logit_scale']:.1f}  {record['images_per_s']:.0f} img/s", flush=True)
                if time.monotonic() - last_save > checkpoint_minutes * 60:
                    trainer.save(state_path)
                    last_save = time.monotonic()
        trainer.save(state_path)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if trainer.step < trainer.schedule.steps:
        print(
            f"stopped after step {trainer.step} of {trainer.schedule.steps}; continue with --resume --run-dir {run_dir}"
        )
        return False
    return True


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


def export(trainer: Trainer, out: Path, parts: list[CorpusPart], prep_seconds: float) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.half() for k, v in trainer.model.state_dict().items()}, out)
    checksum, size, logit_scale = sha256_file(out), out.stat().st_size, trainer.model.logit_scale.exp().item()
    domain_templates = {n: list(t) for n, t in DOMAIN_TEMPLATES.items()} if trainer.schedule.domain_captions else {}
    record: dict[str, object] = {
        "model": trainer.schedule.model,
        "checkpoint": out.name,
        "checkpoint_sha256": checksum,
        "checkpoint_bytes": size,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        **asdict(trainer.schedule),
        "steps_done": trainer.step,
        "batch_size": trainer.schedule.groups * trainer.schedule.group_size,
        "logit_scale": logit_scale,
        "train_seconds": round(trainer.train_seconds, 1),
        "preprocess_seconds": round(prep_seconds, 1),
        "caption_templates": list(CAPTION_TEMPLATES),
        "domain_templates": domain_templates,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
    }
    write_manifest(manifest_for(out), record, parts)
    print(f"saved {out} ({size / 1e6:.1f} MB, sha256 {checksum})")
    print(f"{trainer.step} steps, {trainer.train_seconds / 60:.1f} min of training, logit scale {logit_scale:.1f}")


def build_trainer(
    schedule: Schedule, parts_builder: Callable[..., list[CorpusPart]] = build_corpus
) -> tuple[Trainer, list[CorpusPart], float]:
    torch.set_num_threads(schedule.threads)
    torch.manual_seed(schedule.seed)
    register_project_configs()
    model, _, preprocess = open_clip.create_model_and_transforms(schedule.model, pretrained=None, output_dict=True)
    began = time.monotonic()
    parts = parts_builder(preprocess, schedule.max_per_dataset, schedule.seed)
    prep_seconds = time.monotonic() - began
    print("corpus:", ", ".join(f"{p.name} {len(p.hashes)}" for p in parts), f"(preprocessed in {prep_seconds:.0f} s)")
    sampler = GroupSampler(parts, schedule.group_size, schedule.groups, schedule.primary_share, schedule.seed,
                           schedule.domain_captions)
    return Trainer(model, sampler, open_clip.get_tokenizer(schedule.model), schedule), parts, prep_seconds


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model_name = args.model or DEFAULT_MODEL
    run_dir = args.run_dir or Path("runs") / "pretrain" / model_name
    state = read_state(run_dir / "state.pt") if args.resume else None
    if state is None and (run_dir / "state.pt").exists():
        raise SystemExit(f"{run_dir} already holds a run: add --resume to continue it, or choose another --run-dir")
    schedule = resolve_schedule(args, state["schedule"] if state else None)
    trainer, parts, prep_seconds = build_trainer(schedule)
    if state is not None:
        trainer.load_state_dict(state)
        truncate_log(run_dir / "log.jsonl", trainer.step)
        print(f"resumed {run_dir} at step {trainer.step} of {schedule.steps}")
    if run(trainer, run_dir, args.stop_after, args.checkpoint_minutes):
        export(trainer, args.out or weights_for(schedule.model), parts, prep_seconds)
        plot_log(run_dir / "log.jsonl", run_dir / "log.png", schedule.model)
        print(f"curves: {run_dir / 'log.png'}")


if __name__ == "__main__":
    main()
