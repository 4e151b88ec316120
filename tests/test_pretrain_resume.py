"""Pretraining split over two sittings ends with the same weights as one sitting (tiny model, synthetic corpus)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sharpzo.tools import pretrain
from sharpzo.tools.corpus import CAPTION_TEMPLATES, DOMAIN_TEMPLATES, PRIMARY, CorpusPart, GroupSampler
from sharpzo.tools.pretrain_plot import plot_log

SCHEDULE = pretrain.Schedule(model="sharpzo-tiny", steps=6, seed=3, group_size=4, groups=2, primary_share=0.5,
                             max_per_dataset=12, threads=1)


def synthetic_corpus(
    preprocess: Callable[[Image.Image], torch.Tensor], max_per_dataset: int, seed: int
) -> list[CorpusPart]:
    rng = np.random.default_rng(seed)
    parts = []
    for name, classes in ((PRIMARY, ["pear", "plum", "fig"]), ("shapes", ["disc", "ring", "bar"])):
        labels = np.arange(max_per_dataset) % len(classes)
        images = torch.as_tensor(rng.normal(size=(max_per_dataset, 3, 32, 32)), dtype=torch.float16)
        hashes = [f"{name}-{i}" for i in range(max_per_dataset)]
        parts.append(CorpusPart(name, images, labels, classes, np.arange(max_per_dataset), hashes))
    return parts


def train(run_dir: Path, stop_after: int | None, state: dict | None = None) -> pretrain.Trainer:
    trainer, _, _ = pretrain.build_trainer(SCHEDULE, synthetic_corpus)
    if state is not None:
        trainer.load_state_dict(state)
    pretrain.run(trainer, run_dir, stop_after, checkpoint_minutes=60.0)
    return trainer


def test_split_run_ends_with_the_same_weights_as_an_unsplit_one(tmp_path: Path) -> None:
    whole = train(tmp_path / "whole", None)
    assert whole.step == SCHEDULE.steps

    first = train(tmp_path / "split", 2)
    assert first.step == 2
    torch.manual_seed(12345)  # a new sitting starts with other global RNG state; the checkpoint must restore it
    np.random.seed(12345)
    state = pretrain.read_state(tmp_path / "split" / "state.pt")
    second = train(tmp_path / "split", None, state)

    assert second.step == SCHEDULE.steps
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key]), key
    logged = [json.loads(line) for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == list(range(1, SCHEDULE.steps + 1))
    whole_log = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in logged] == [r["loss"] for r in whole_log]


def test_resume_refuses_a_different_schedule(tmp_path: Path) -> None:
    args = pretrain.parse_args(["--steps", "7"])
    with pytest.raises(SystemExit, match="--steps 7 .run has 6"):
        pretrain.resolve_schedule(args, dict(SCHEDULE.__dict__))


def test_a_run_plots_its_curves(tmp_path: Path) -> None:
    train(tmp_path / "run", None)
    plot_log(tmp_path / "run" / "log.jsonl", tmp_path / "curves.png", "tiny")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_domain_captions_replace_the_generic_templates_at_their_share(share: float) -> None:
    parts = synthetic_corpus(lambda image: image, max_per_dataset=12, seed=0)
    sampler = GroupSampler(parts, group_size=4, groups=2, primary_share=0.5, seed=0, domain_share=share)
    captions = sampler.sample().captions
    fruit = {t.format(n) for t in DOMAIN_TEMPLATES[PRIMARY] for n in parts[0].class_names}
    generic = {t.format(n) for t in CAPTION_TEMPLATES for part in parts for n in part.class_names}
    primary = [c for c in captions if any(n in c for n in parts[0].class_names)]
    assert len(primary) == 4
    assert all(c in (fruit if share else generic) for c in primary)
    # a dataset without its own words keeps the generic templates
    assert all(c in generic for c in captions if c not in primary)
