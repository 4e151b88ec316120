"""Find data files that ship inside installed packages, without importing those packages."""

from __future__ import annotations

import importlib.util
from pathlib import Path


class DatasetNotInstalledError(FileNotFoundError):
    """A dataset's files are missing; the message says how to install them."""


def package_file(package: str, relative: str, install_hint: str) -> Path:
    """Path of ``relative`` inside the installed top-level ``package``.

    ``find_spec`` on a top-level name locates it without running its ``__init__``, which for
    some of these packages imports pandas or tensorflow.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotInstalledError(install_hint)
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise DatasetNotInstalledError(f"{path} is missing; {install_hint}")
    return path
