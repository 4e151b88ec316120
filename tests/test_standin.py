"""The shipped stand-in CLIP: it loads through open_clip, matches its record, and never saw a downstream image."""

from __future__ import annotations

import gzip
import hashlib
import json
from typing import Any

import open_clip
import pytest

from sharpzo.client.datasets.locate import DatasetNotInstalledError
from sharpzo.client.datasets.protocol import downstream_split
from sharpzo.client.datasets.registry import DATASETS, load_split
from sharpzo.server.registry import STANDIN_MODEL, STANDIN_WEIGHTS, manifest_for, register_project_configs


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    with gzip.open(manifest_for(STANDIN_WEIGHTS)) as f:
        return json.load(f)


def test_checkpoint_loads_and_matches_its_record(manifest: dict[str, Any]) -> None:
    data = STANDIN_WEIGHTS.read_bytes()
    assert hashlib.sha256(data).hexdigest() == manifest["checkpoint_sha256"]
    assert len(data) == manifest["checkpoint_bytes"] <= 30_000_000
    register_project_configs()
    model, _, _ = open_clip.create_model_and_transforms(STANDIN_MODEL, pretrained=str(STANDIN_WEIGHTS))
    assert sum(p.numel() for p in model.parameters()) == manifest["parameters"] <= 25_000_000


@pytest.mark.parametrize("name", DATASETS)
def test_no_downstream_image_was_seen_in_pretraining(manifest: dict[str, Any], name: str) -> None:
    try:
        split = downstream_split(name)
        train = load_split(name, "train")
    except DatasetNotInstalledError as error:
        pytest.skip(str(error))
    if name not in manifest["corpus"]:
        return  # not installed at pretraining time, so nothing of it was seen
    record = manifest["corpus"][name]
    seen = record["sha256"]
    # The recorded hashes must be reproducible from today's loader, or the disjointness below proves nothing.
    assert train.subset(record["train_indices"]).hashes() == seen
    downstream = split.pool.hashes() + split.val.hashes() + split.eval.hashes()
    assert set(seen).isdisjoint(downstream)
