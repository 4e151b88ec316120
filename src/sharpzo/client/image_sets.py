"""Uploading a labelled split once as a server image set (large ones in chunks sent concurrently), and reusing it
on later runs through the upload index. Visual prompts need the set's patch stems on the server: such a split is
uploaded with ``visual`` (again, if the known set has lost them, as a set read back from a server's disk cache
has)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from rich.progress import Progress

from sharpzo.data.base import LabeledImages
from sharpzo.data.identity import image_set_key
from sharpzo.data.image_io import decode_rgb

from .api import ApiClient

MAX_SIDE = 512
MAX_BYTES = 1_000_000
CHUNK_BYTES = 8_000_000
CHUNK_IMAGES = 256


@dataclass(frozen=True)
class RemoteSplit:
    """A split living on the server: its image-set id and the labels the client keeps."""

    set_id: str
    labels: np.ndarray
    hashes: list[str]
    stem_spread: float | None = None  # the server's, for a set that keeps its patch stems (client/prompt.py)

    def __len__(self) -> int:
        return len(self.labels)


def shrink(data: bytes, max_side: int = MAX_SIDE, max_bytes: int = MAX_BYTES) -> bytes:
    """Re-encode a large image as JPEG at most ``max_side`` pixels a side; small ones pass unchanged."""
    with Image.open(io.BytesIO(data)) as image:
        if max(image.size) <= max_side and len(data) <= max_bytes:
            return data
    image = decode_rgb(data)
    image.thumbnail((max_side, max_side))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def default_index_path() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "sharpzo" / "image-sets.json"


class UploadIndex:
    """Which server image set holds which content, so a re-run with the same images skips the upload."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_index_path()

    def _read(self) -> dict[str, str]:
        try:
            entries: dict[str, str] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return entries

    def get(self, key: str) -> str | None:
        return self._read().get(key)

    def put(self, key: str, set_id: str) -> None:
        """Atomic per write; each writer has its own temporary file, since several runs may share the index (a
        concurrent put may still drop another's entry, which only costs that run an upload next time)."""
        entries = self._read()
        entries[key] = set_id
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        with os.fdopen(handle, "w") as out:
            out.write(json.dumps(entries, indent=0))
        os.replace(tmp, self.path)


def chunked(images: list[bytes], max_bytes: int = CHUNK_BYTES, max_images: int = CHUNK_IMAGES) -> list[list[bytes]]:
    """Consecutive chunks, each under ``max_bytes`` of base64 (a single larger image goes alone)."""
    chunks: list[list[bytes]] = [[]]
    size = 0
    for data in images:
        encoded = 4 * ((len(data) + 2) // 3)
        if chunks[-1] and (size + encoded > max_bytes or len(chunks[-1]) >= max_images):
            chunks.append([])
            size = 0
        chunks[-1].append(data)
        size += encoded
    return chunks


async def _upload(
    api: ApiClient, images: list[bytes], augment: bool, seed: int, visual: bool, label: str, progress: bool
) -> str:
    limits = (await api.model_info()).limits
    # half the body limit leaves room for JSON around the base64
    chunks = chunked(images, min(CHUNK_BYTES, limits.max_body_bytes // 2), min(CHUNK_IMAGES, limits.max_images_per_set))
    if len(chunks) == 1:
        return (await api.create_image_set(chunks[0], augment=augment, seed=seed, visual=visual)).id
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"uploading {label} images", total=len(images))

        async def part(chunk: list[bytes]) -> str:
            uploaded = await api.create_image_set(chunk, augment=augment, seed=seed, visual=visual)
            bar.advance(task, len(chunk))
            return uploaded.id

        parts = await asyncio.gather(*(part(chunk) for chunk in chunks))  # as many at once as the client allows
    return (await api.concat_image_sets(list(parts))).id


async def upload_split(
    api: ApiClient,
    images: LabeledImages,
    augment: bool = False,
    seed: int = 0,
    index: UploadIndex | None = None,
    label: str = "",
    progress: bool = False,
    visual: bool = False,
) -> RemoteSplit:
    """``visual``: the set must keep its patch stems, for visual prompts."""
    known = None if index is None else await find_split(api, images, augment, seed, index, visual)
    return known or await store_split(api, images, augment, seed, index, label, progress, visual)


async def find_split(
    api: ApiClient, images: LabeledImages, augment: bool, seed: int, index: UploadIndex, visual: bool
) -> RemoteSplit | None:
    """The server's set of these images if the index knows one and the server still holds it (with its patch
    stems, if ``visual``); None: it must be uploaded."""
    hashes = images.hashes()
    known = index.get(image_set_key(hashes, augment, seed, scope=api.base_url))
    if known is None:
        return None
    info = await api.image_set(known)
    if info is not None and info.count == len(images) and (info.stem_spread is not None or not visual):
        return RemoteSplit(known, images.labels, hashes, info.stem_spread)
    return None


async def store_split(
    api: ApiClient, images: LabeledImages, augment: bool, seed: int, index: UploadIndex | None, label: str,
    progress: bool, visual: bool,
) -> RemoteSplit:
    """Upload the split as a new set (and record it in ``index``)."""
    hashes = images.hashes()
    key = image_set_key(hashes, augment, seed, scope=api.base_url)
    set_id = await _upload(api, [shrink(b) for b in images.images], augment, seed, visual, label, progress)
    info = await api.image_set(set_id)
    if info is None or info.count != len(images):
        raise RuntimeError(f"the server stored {None if info is None else info.count} images of {len(images)}")
    if visual and info.stem_spread is None:
        raise RuntimeError(f"the server kept no patch stems of image set {set_id}, which visual prompts need")
    if index is not None:
        index.put(key, set_id)
    return RemoteSplit(set_id, images.labels, hashes, info.stem_spread)
