"""A CSV file with a ``path,label`` header: one image a row, paths relative to the CSV's folder.

Labels are the class names as written; classes are ordered by name. Other columns are ignored.
"""

from __future__ import annotations

import csv
from pathlib import Path

from .listing import FileListing

REQUIRED = ("path", "label")
MAX_NAMED = 20  # missing files named in the error


def scan_csv(path: Path) -> FileListing:
    path = path.resolve()
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    header = [cell.strip().lower() for cell in rows[0]] if rows else []
    if not all(column in header for column in REQUIRED):
        raise ValueError(f"{path}: the first row must be the header 'path,label', got {','.join(header)!r}")
    path_col, label_col = header.index("path"), header.index("label")
    entries: list[tuple[Path, str]] = []
    missing: list[str] = []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        cells = [row[i].strip() if i < len(row) else "" for i in (path_col, label_col)]
        if not all(cells):
            raise ValueError(f"{path}:{number}: a row needs both a path and a label, got {row}")
        file = path.parent / cells[0]
        if not file.is_file():
            missing.append(f"{cells[0]} (line {number})")
        entries.append((file, cells[1]))
    if missing:
        more = f" and {len(missing) - MAX_NAMED} more" if len(missing) > MAX_NAMED else ""
        raise ValueError(f"{path}: {len(missing)} listed file(s) do not exist: {', '.join(missing[:MAX_NAMED])}{more}")
    if not entries:
        raise ValueError(f"{path} lists no images")
    class_names = sorted({label for _, label in entries})
    index = {name: i for i, name in enumerate(class_names)}
    return FileListing(
        path, "CSV file", path.stem, [file for file, _ in entries], [index[label] for _, label in entries], class_names
    )
