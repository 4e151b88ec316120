"""Checkpoints and logs on resume: old formats refuse with the reason; the log is trimmed to the checkpoint."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from sharpzo.client.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, trim_log


@pytest.mark.parametrize("old_format", [1, 2])
def test_a_checkpoint_in_the_old_units_is_refused_with_the_reason(tmp_path: Path, old_format: int) -> None:
    path = tmp_path / "checkpoint.pkl"
    path.write_bytes(pickle.dumps({"format": old_format, "settings": {}, "state": None}))
    with pytest.raises(RuntimeError, match="embedding-space units.*cannot resume"):
        load_checkpoint(path, {})


def test_a_checkpoint_from_before_a_setting_was_added_resumes_at_its_old_meaning(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pkl"
    path.write_bytes(pickle.dumps({"format": CHECKPOINT_FORMAT, "settings": {"seed": 3}, "state": "the state"}))
    assert load_checkpoint(path, {"seed": 3, "pipeline": None}) == "the state"
    with pytest.raises(RuntimeError, match="other settings"):
        load_checkpoint(path, {"seed": 3, "pipeline": "auto"})


def test_a_checkpoint_naming_a_class_this_version_lacks_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pkl"
    path.write_bytes(b"cgone_module\nThing\n.")  # a pickle of a class from a module that no longer exists
    with pytest.raises(RuntimeError, match="cannot resume"):
        load_checkpoint(path, {})


def test_trim_log_drops_lines_past_the_checkpoint_and_a_partial_last_line(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    lines = [json.dumps({"tells": t, "stage": "zo"}) for t in range(4)]
    log.write_text("\n".join(lines) + '\n{"tells": 4, "sta')  # killed mid-write
    trim_log(log, 2)
    assert [json.loads(line)["tells"] for line in log.read_text().splitlines()] == [0, 1, 2]
