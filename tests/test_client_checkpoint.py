"""A run directory from before the units change refuses to resume, and says why."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from sharpzo.client.checkpoint import load_checkpoint


@pytest.mark.parametrize("old_format", [1, 2])
def test_a_checkpoint_in_the_old_units_is_refused_with_the_reason(tmp_path: Path, old_format: int) -> None:
    path = tmp_path / "checkpoint.pkl"
    path.write_bytes(pickle.dumps({"format": old_format, "settings": {}, "state": None}))
    with pytest.raises(RuntimeError, match="embedding-space units.*cannot resume"):
        load_checkpoint(path, {})


def test_a_checkpoint_naming_a_class_this_version_lacks_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pkl"
    path.write_bytes(b"cgone_module\nThing\n.")  # a pickle of a class from a module that no longer exists
    with pytest.raises(RuntimeError, match="cannot resume"):
        load_checkpoint(path, {})
