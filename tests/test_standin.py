"""The shipped stand-in CLIPs: each loads through open_clip, matches its record, and never saw a downstream image."""

from __future__ import annotations

import gzip
import hashlib
import json
from typing import Any

import open_clip
import pytest

from sharpzo.data.catalog import DATASETS, load_split
from sharpzo.data.fewshot import downstream_split
from sharpzo.data.locate import DatasetNotInstalledError
from sharpzo.server.project_models import DEFAULT_MODEL, STANDIN_V1, manifest_for, register_project_configs, weights_for

MODELS = [DEFAULT_MODEL, STANDIN_V1]


@pytest.fixture(scope="module", params=MODELS)
def shipped(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    with gzip.open(manifest_for(weights_for(request.param))) as f:
        return request.param, json.load(f)


def test_checkpoint_loads_and_matches_its_record(shipped: tuple[str, dict[str, Any]]) -> None:
    name, manifest = shipped
    data = weights_for(name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == manifest["checkpoint_sha256"]
    assert len(data) == manifest["checkpoint_bytes"] <= 40_000_000
    register_project_configs()
    model, _, _ = open_clip.create_model_and_transforms(name, pretrained=str(weights_for(name)))
    assert sum(p.numel() for p in model.parameters()) == manifest["parameters"] <= 25_000_000


def test_default_model_is_clip_sharp() -> None:
    """v2's logit scale is near CLIP's 100, not v1's 14.6."""
    register_project_configs()
    model, _, _ = open_clip.create_model_and_transforms(DEFAULT_MODEL, pretrained=str(weights_for(DEFAULT_MODEL)))
    assert model.logit_scale.exp().item() >= 50


@pytest.mark.parametrize("dataset", DATASETS)
def test_no_downstream_image_was_seen_in_pretraining(shipped: tuple[str, dict[str, Any]], dataset: str) -> None:
    _, manifest = shipped
    try:
        split = downstream_split(dataset)
        train = load_split(dataset, "train")
    except DatasetNotInstalledError as error:
        pytest.skip(str(error))
    if dataset not in manifest["corpus"]:
        pytest.skip(f"{dataset} was not installed at pretraining time, so none of it was seen")
    record = manifest["corpus"][dataset]
    seen = record["sha256"]
    # The recorded hashes must be reproducible from today's loader, or the disjointness below proves nothing.
    assert train.subset(record["train_indices"]).hashes() == seen
    downstream = split.pool.hashes() + split.val.hashes() + split.eval.hashes()
    assert set(seen).isdisjoint(downstream)
