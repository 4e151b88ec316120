"""Image files and their labels as a folder or CSV file names them, before any file is read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FileListing:
    source: Path  # the folder or CSV file, absolute
    kind: str  # how the source is described to the user: "image folder", "CSV file"
    name: str  # short name for the task and the default run directory
    files: list[Path]
    labels: list[int]  # into class_names
    class_names: list[str]
