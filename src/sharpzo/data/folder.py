"""The image-folder layout: ``ROOT/<class folder>/<image>``, one sub-folder per class.

A class's display name is its folder name with ``_`` and ``-`` turned into spaces, unless
``ROOT/classes.txt`` (lines ``folder<TAB>Display name`` or ``folder,Display name``) or
``ROOT/classes.json`` (``{"folder": "Display name"}``) names it. Images may sit in nested
folders inside a class folder; hidden files and folders and non-image files are ignored.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .image_io import IMAGE_SUFFIXES, is_image_name
from .listing import FileListing

log = logging.getLogger(__name__)

CLASSES_TXT = "classes.txt"
CLASSES_JSON = "classes.json"


def default_name(folder: str) -> str:
    """``granny_smith-apple`` -> ``granny smith apple``."""
    return " ".join(folder.replace("_", " ").replace("-", " ").split())


def _read_classes_txt(path: Path) -> dict[str, str]:
    names: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        separator = "\t" if "\t" in line else ","
        folder, _, name = (part.strip() for part in line.partition(separator))
        if not folder or not name:
            raise ValueError(
                f"{path}:{number}: expected 'folder<TAB>Display name' or 'folder,Display name', got {line!r}"
            )
        names[folder] = name
    return names


def _read_classes_json(path: Path) -> dict[str, str]:
    try:
        names = json.loads(path.read_text(encoding="utf-8-sig"))
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(names, dict) or not all(isinstance(v, str) and v.strip() for v in names.values()):
        raise ValueError(f'{path}: expected an object {{"folder": "Display name", ...}}')
    return {folder: name.strip() for folder, name in names.items()}


def display_names(root: Path, folders: list[str]) -> list[str]:
    """The class name of each folder, from classes.txt or classes.json where one names it."""
    given: dict[str, str] = {}
    txt, js = root / CLASSES_TXT, root / CLASSES_JSON
    if txt.is_file() and js.is_file():
        raise ValueError(f"{root} has both {CLASSES_TXT} and {CLASSES_JSON}; keep one")
    if txt.is_file() or js.is_file():
        names_file = txt if txt.is_file() else js
        given = _read_classes_txt(txt) if txt.is_file() else _read_classes_json(js)
        unknown = sorted(set(given) - set(folders))
        if unknown:
            raise ValueError(f"{names_file} names folders that {root} does not have: {', '.join(unknown)}")
    names = [given.get(folder, default_name(folder)) for folder in folders]
    owner: dict[str, str] = {}
    for folder, name in zip(folders, names):
        if name in owner:
            raise ValueError(
                f"class folders {owner[name]!r} and {folder!r} in {root} both give the class name {name!r}; "
                f"rename one, or give display names in {CLASSES_TXT}"
            )
        owner[name] = folder
    return names


def _images_under(folder: Path) -> list[Path]:
    return sorted(
        path for path in folder.rglob("*")
        if path.is_file() and is_image_name(path)
        and not any(part.startswith(".") for part in path.relative_to(folder).parent.parts)
    )


def scan_folder(root: Path) -> FileListing:
    root = root.resolve()
    entries = sorted(root.iterdir())
    folders = [p.name for p in entries if p.is_dir() and not p.name.startswith(".")]
    if not folders:
        raise ValueError(f"{root} has no class sub-folders; expected {root}/<class name>/<image>")
    loose = [p.name for p in entries if p.is_file() and is_image_name(p)]
    if loose:
        log.warning(
            "ignoring %d image(s) directly in %s, outside any class folder: %s", len(loose), root, ", ".join(loose)
        )
    names = display_names(root, folders)
    files: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(folders):
        members = _images_under(root / folder)
        if not members:
            raise ValueError(
                f"class folder {root / folder} (class {names[label]!r}) holds no images "
                f"({', '.join(sorted(IMAGE_SUFFIXES))}); add some or remove the folder"
            )
        files.extend(members)
        labels.extend([label] * len(members))
    return FileListing(root, "image folder", root.name, files, labels, names)
