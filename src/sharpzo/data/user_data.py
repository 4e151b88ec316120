"""The user's own labelled images, from an image folder, a CSV file or memory: decodable and deduplicated."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .base import LabeledImages
from .csv_source import scan_csv
from .folder import scan_folder
from .image_io import UnreadableImage, encode_image, read_image_file
from .listing import FileListing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InMemoryData:
    """Images (PIL images, or HxW / HxWx3 uint8 arrays) with integer labels into ``class_names``."""

    images: Sequence[Image.Image | np.ndarray]
    labels: Sequence[int] | np.ndarray
    class_names: Sequence[str]


@dataclass(frozen=True)
class UserImages:
    """Labelled images from one source, with the files that were left out and why."""

    images: LabeledImages
    name: str  # short name for the task and the default run directory
    origin: str  # the source as the user should recognise it, e.g. "image folder /abs/path"
    sources: list[str]  # where each kept image came from: a file path or "images[i]"
    skipped: list[str]  # "file: why it does not decode"
    duplicates: list[tuple[str, str]]  # (left out, the kept image with the same content)

    def report(self, role: str) -> list[str]:
        """Task notes on what was left out of this source; ``role`` is "data" or "test data"."""
        notes = []
        if self.skipped:
            notes.append(f"{role}: skipped {len(self.skipped)} unreadable file(s): {'; '.join(self.skipped)}")
        if self.duplicates:
            pairs = "; ".join(f"{dup} (same content as {kept})" for dup, kept in self.duplicates)
            notes.append(f"{role}: left out {len(self.duplicates)} duplicate image(s): {pairs}")
        return notes


def _deduplicated(images: LabeledImages, sources: list[str], name: str, origin: str, skipped: list[str]) -> UserImages:
    """Keep the first image of each content hash and report the rest."""
    first: dict[str, int] = {}
    duplicates: list[tuple[str, str]] = []
    for i, digest in enumerate(images.hashes()):
        if digest in first:
            duplicates.append((sources[i], sources[first[digest]]))
            log.warning("duplicate image %s has the same content as %s; keeping the first", *duplicates[-1])
        else:
            first[digest] = i
    if duplicates:
        log.warning("left out %d duplicate image(s) of %s", len(duplicates), origin)
    keep = list(first.values())
    return UserImages(images.subset(keep), name, origin, [sources[i] for i in keep], skipped, duplicates)


def load_listing(listing: FileListing) -> UserImages:
    """Read every listed file, skipping (with a warning naming it) each one that does not decode."""
    encoded: list[bytes] = []
    labels: list[int] = []
    sources: list[str] = []
    skipped: list[str] = []
    for file, label in zip(listing.files, listing.labels):
        try:
            encoded.append(read_image_file(file))
        except UnreadableImage as exc:
            log.warning("skipping unreadable image %s", exc)
            skipped.append(str(exc))
            continue
        labels.append(label)
        sources.append(str(file))
    origin = f"{listing.kind} {listing.source}"
    if skipped:
        log.warning("skipped %d unreadable file(s) of %d in %s", len(skipped), len(listing.files), origin)
    images = LabeledImages(encoded, np.asarray(labels, dtype=np.int64), listing.class_names)
    return _deduplicated(images, sources, listing.name, origin, skipped)


def from_memory(data: InMemoryData) -> UserImages:
    class_names = [str(name).strip() for name in data.class_names]
    if not all(class_names) or len(set(class_names)) != len(class_names):
        raise ValueError(f"class names must be distinct and non-empty, got {list(data.class_names)}")
    labels = np.asarray(data.labels)
    if labels.ndim != 1 or len(labels) != len(data.images):
        raise ValueError(f"{len(data.images)} images but labels of shape {labels.shape}")
    if len(labels) and (labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(f"labels must be integers from 0 to {len(class_names) - 1} (indices into class_names)")
    encoded = [encode_image(image, i) for i, image in enumerate(data.images)]
    images = LabeledImages(encoded, labels.astype(np.int64), class_names)
    return _deduplicated(images, [f"images[{i}]" for i in range(len(encoded))], "in-memory", "in-memory images", [])


def load_user_data(source: Path | InMemoryData) -> UserImages:
    """Images from an image folder, a CSV file (``path,label``) or memory."""
    if isinstance(source, InMemoryData):
        return from_memory(source)
    if source.is_dir():
        return load_listing(scan_folder(source))
    if source.is_file() and source.suffix.lower() == ".csv":
        return load_listing(scan_csv(source))
    raise ValueError(f"{source} is neither a folder of class sub-folders nor a .csv file")
