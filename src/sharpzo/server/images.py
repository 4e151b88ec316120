"""Image sets: decode uploaded images, preprocess with the model's transform, keep normalised features (and, for
visual prompts, the patch stems); each set belongs to its uploader."""

from __future__ import annotations

import asyncio
import base64
import binascii
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from sharpzo.data.identity import image_digest, image_set_key, joined_set_key
from sharpzo.data.image_io import UnreadableImage, decode_rgb

from .errors import ApiError
from .feature_store import SharedFeatureStore
from .ledger import Ledger
from .model import LoadedModel
from .visual import PromptedImageEncoder

_ENCODE_BATCH = 64


class ImageError(ValueError):
    """An uploaded image that cannot be used; the message names its index."""


@dataclass(frozen=True)
class ImageSet:
    id: str
    features: torch.Tensor  # [N, embed_dim] float32, L2-normalised
    stems: torch.Tensor | None = None  # [N, 1 + grid^2, visual width]: kept only for sets uploaded with visual: true

    @property
    def count(self) -> int:
        return int(self.features.shape[0])

    @cached_property  # a pass over every stem entry, which each GET of the set asks for: computed once
    def stem_spread(self) -> float | None:
        """Std of the stems' patch-token entries (the class token left out); None without stems."""
        return None if self.stems is None else float(self.stems[:, 1:].float().std())


def _image_bytes(images: list[str]) -> list[bytes]:
    """The uploaded images' encoded bytes (the wire carries them in base64)."""
    raw = []
    for index, data in enumerate(images):
        try:
            raw.append(base64.b64decode(data, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise ImageError(f"images[{index}]: not valid base64 ({exc})") from exc
    return raw


def _decoded(raw: list[bytes], max_pixels: int) -> list[Image.Image]:
    decoded = []
    for index, data in enumerate(raw):
        try:
            decoded.append(decode_rgb(data, max_pixels))
        except UnreadableImage as exc:
            raise ImageError(f"images[{index}]: {exc}") from exc
    return decoded


def _pixels(loaded: LoadedModel, images: list[Image.Image], augment: bool, seed: int) -> list[torch.Tensor]:
    """The model's own (or the augmenting) transform of each image."""
    transform = loaded.augment if augment else loaded.preprocess
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return [transform(image) for image in images]
    finally:
        torch.random.set_rng_state(generator_state)


Encode = Callable[[torch.Tensor], torch.Tensor]


def _encoded(loaded: LoadedModel, pixels: list[torch.Tensor], encode: Encode) -> torch.Tensor:
    """``encode`` of the images' pixels, in batches on the model's device."""
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(pixels), _ENCODE_BATCH):
            chunks.append(encode(torch.stack(pixels[start : start + _ENCODE_BATCH]).to(loaded.device, loaded.dtype)))
    return torch.cat(chunks)


def _features(loaded: LoadedModel, pixels: list[torch.Tensor]) -> torch.Tensor:
    return _encoded(loaded, pixels, lambda batch: F.normalize(loaded.model.encode_image(batch).float(), dim=-1))


def encode_images(loaded: LoadedModel, images: list[Image.Image], augment: bool = False, seed: int = 0) -> torch.Tensor:
    """L2-normalised image features [N, embed_dim] in float32, with the model's own (or augmenting) transform."""
    return _features(loaded, _pixels(loaded, images, augment, seed))


def encode_stems(loaded: LoadedModel, images: list[Image.Image], visual: PromptedImageEncoder) -> torch.Tensor:
    """The images' patch stems [N, 1 + grid^2, visual width] with the model's own transform, as an upload keeps them."""
    return _encoded(loaded, _pixels(loaded, images, False, 0), visual.stems)


def _set_id(key: str) -> str:
    return key[:32]


class ImageSetStore:
    """Encoded image sets by id, kept in memory (least recently used go first) and optionally on disk and in a
    feature store shared by replicas, where a set missing from memory is looked up."""

    def __init__(
        self, loaded: LoadedModel, max_sets: int, max_pixels: int, cache_dir: Path | None,
        shared: SharedFeatureStore | None = None, visual: PromptedImageEncoder | None = None,
    ) -> None:
        self.loaded = loaded
        self.visual = visual
        self.max_sets = max_sets
        self.max_pixels = max_pixels
        self.cache_dir = cache_dir
        self.shared = shared
        self._sets: OrderedDict[str, ImageSet] = OrderedDict()
        self._lock = threading.Lock()
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)

    def in_memory(self, set_id: str) -> ImageSet | None:
        """The set if memory holds it: no file or network, so callers need no thread for it."""
        with self._lock:
            found = self._sets.get(set_id)
            if found is not None:
                self._sets.move_to_end(set_id)
            return found

    def get(self, set_id: str) -> ImageSet | None:
        found = self.in_memory(set_id)
        if found is not None:
            return found
        features = None
        path = None if self.cache_dir is None or not set_id.isalnum() else self.cache_dir / f"{set_id}.pt"
        if path is not None and path.is_file():
            features = torch.load(path, map_location=self.loaded.device, weights_only=True)
        elif self.shared is not None:
            features = self.shared.load(set_id, self.loaded.device)
        return None if features is None else self._keep(ImageSet(set_id, features))

    def _keep(self, image_set: ImageSet) -> ImageSet:
        with self._lock:
            self._sets[image_set.id] = image_set
            self._sets.move_to_end(image_set.id)
            while len(self._sets) > self.max_sets:
                self._sets.popitem(last=False)
        return image_set

    def _persist(self, image_set: ImageSet, content: str) -> ImageSet:
        if self.cache_dir is not None:
            torch.save(image_set.features.cpu(), self.cache_dir / f"{image_set.id}.pt")
        if self.shared is not None:
            self.shared.save(image_set.id, content, image_set.features)
        return self._keep(image_set)

    def concat(self, set_id: str, parts: list[ImageSet]) -> ImageSet:
        """One set holding the parts' features (and their stems if every part has them) in order; no image is
        encoded again."""
        part_stems = [p.stems for p in parts if p.stems is not None]
        stems = torch.cat(part_stems) if len(part_stems) == len(parts) else None
        # the id is a digest of the parts' ids, themselves digests of their content
        existing = self.get(set_id)
        if existing is None:
            return self._persist(ImageSet(set_id, torch.cat([p.features for p in parts]), stems), set_id)
        if stems is None or existing.stems is not None:
            return existing
        return self._keep(ImageSet(set_id, existing.features, stems))

    def create(
        self, set_id: str, raw: list[bytes], digests: list[str], augment: bool, seed: int, visual: bool = False
    ) -> ImageSet:
        """Decode, preprocess and encode (the stems too when ``visual``); runs on the model thread."""
        existing = self.get(set_id)
        if existing is not None and (existing.stems is not None or not visual):
            return existing
        pixels = self._pixels(raw, augment, seed) if visual else None
        stems = None if pixels is None or self.visual is None else _encoded(self.loaded, pixels, self.visual.stems)
        if existing is not None:  # the features are known: only the stems were missing
            return self._keep(ImageSet(set_id, existing.features, stems))
        content = set_id if self.shared is None else self.shared.content_key(self.loaded, digests, augment, seed)
        features = None if self.shared is None else self.shared.features(content, self.loaded.device)
        if features is None:  # images no replica has encoded yet, for any account
            features = _features(self.loaded, pixels or self._pixels(raw, augment, seed))
        return self._persist(ImageSet(set_id, features, stems), content)

    def _pixels(self, raw: list[bytes], augment: bool, seed: int) -> list[torch.Tensor]:
        return _pixels(self.loaded, _decoded(raw, self.max_pixels), augment, seed)


class ImageSets:
    """The image sets as one account sees them (another account's set is as unknown as a missing one), uploaded
    and joined on the model thread within the server's limits of images per set (with stems, for visual prompts)."""

    def __init__(
        self, store: ImageSetStore, ledger: Ledger, model_thread: Executor, max_images: int, max_visual_images: int,
        visual_refusal: str | None,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.model_thread = model_thread
        self.max_images = max_images
        self.max_visual_images = max_visual_images
        self.visual_refusal = visual_refusal  # why a set cannot keep stems here, if it cannot
        self._owners: dict[str, str] = {}  # an id is derived from its owner, so it never changes hands

    async def owned(self, set_id: str, owner: str, field: str = "image_set") -> ImageSet:
        """The owner's set, or a 404 naming ``field``."""
        image_set = await self._lookup(set_id, owner)
        if image_set is None:
            raise ApiError(404, f"{field}: no image set {set_id!r} on this server", code="unknown_image_set")
        return image_set

    async def _lookup(self, set_id: str, owner: str) -> ImageSet | None:
        found = self._owners.get(set_id) or await asyncio.to_thread(self.ledger.image_set_owner, set_id)
        if found is not None:
            self._owners[set_id] = found
        if found != owner:
            return None
        # a set only on disk or in the shared store is read on a thread, and never on the model thread: a
        # lookup must not wait behind a running batch
        return self.store.in_memory(set_id) or await asyncio.to_thread(self.store.get, set_id)

    async def create(self, owner: str, images: list[str], augment: bool, seed: int, visual: bool = False) -> ImageSet:
        if len(images) > self.max_images:
            raise ApiError(422, f"images: {len(images)} images is over the limit of {self.max_images}")
        if visual:
            self._check_visual(len(images), "images")
        try:
            raw = _image_bytes(images)
            digests = [image_digest(data) for data in raw]
            loaded = self.store.loaded
            set_id = _set_id(image_set_key(digests, augment, seed, scope=f"{loaded.name}|{loaded.pretrained}|{owner}"))
            image_set = await self._on_model_thread(self.store.create, set_id, raw, digests, augment, seed, visual)
        except ImageError as exc:
            raise ApiError(422, str(exc)) from exc
        return await self._record(image_set, owner)

    async def concat(self, owner: str, part_ids: list[str]) -> ImageSet:
        parts = [await self.owned(part, owner, f"parts[{i}]") for i, part in enumerate(part_ids)]
        total = sum(p.count for p in parts)
        if total > self.max_images:
            raise ApiError(422, f"parts: {total} images in all is over the limit of {self.max_images}")
        if all(p.stems is not None for p in parts):
            self._check_visual(total, "parts")
        image_set = await self._on_model_thread(self.store.concat, _set_id(joined_set_key(part_ids, owner)), parts)
        return await self._record(image_set, owner)

    def _check_visual(self, count: int, field: str) -> None:
        if self.visual_refusal is not None:
            raise ApiError(422, f"visual: {self.visual_refusal}")
        if count > self.max_visual_images:
            limit = self.max_visual_images
            raise ApiError(422, f"{field}: {count} images is over the limit of {limit} for a set with visual: true")

    async def _on_model_thread(self, fn: Callable[..., ImageSet], *args: object) -> ImageSet:
        return await asyncio.get_running_loop().run_in_executor(self.model_thread, fn, *args)

    async def _record(self, image_set: ImageSet, owner: str) -> ImageSet:
        await asyncio.to_thread(self.ledger.own_image_set, image_set.id, owner)
        self._owners[image_set.id] = owner
        return image_set
