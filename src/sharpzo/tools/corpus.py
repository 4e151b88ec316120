"""The pretraining corpus: official train splits, preprocessed once, and batches of captioned images.

Only official train splits are read, so no image of the downstream protocol (built from official
test splits) can be seen in pretraining; the manifest written by ``pretrain`` records every image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from sharpzo.data.catalog import DATASETS, load_split
from sharpzo.data.image_io import decode_rgb
from sharpzo.data.locate import DatasetNotInstalledError

CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of the {}.",
    "a {}.",
)
# Captions in each dataset's own words, as web captions name a picture's kind as well as its subject: a
# prompt's context then says something the class name does not, so the text tower learns to use it.
DOMAIN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "groceries": (
        "a photo of a {}, a type of fruit.",
        "a photo of a {} on a shelf in a grocery store.",
        "a {} in the fruit section of a supermarket.",
        "fresh {} for sale.",
    ),
    "mnist": ("a handwritten {}.", "a black and white scan of a handwritten {}.", "the {}, written by hand."),
    "fashion-mnist": (
        "a grayscale photo of a {}, an item of clothing.",
        "a small picture of a {} from an online shop.",
        "a {}, something to wear.",
    ),
    "animals": ("a black silhouette of a {}.", "the outline of a {}, an animal.", "a {} drawn as a flat shape."),
}
# The photo dataset: few images but the finest classes, so it gets a fixed share of every group.
PRIMARY = "groceries"


@dataclass(frozen=True)
class CorpusPart:
    """One dataset's pretraining images, preprocessed, with their positions in the official train split."""

    name: str
    images: torch.Tensor  # (N, 3, S, S) float16, normalised by the model's preprocess
    labels: np.ndarray
    class_names: list[str]
    train_indices: np.ndarray
    hashes: list[str]


def build_corpus(
    preprocess: Callable[[Image.Image], torch.Tensor], max_per_dataset: int, seed: int
) -> list[CorpusPart]:
    """Each installed dataset's train split, subsampled by ``seed`` to at most ``max_per_dataset`` images."""
    rng = np.random.default_rng(seed)
    parts: list[CorpusPart] = []
    for name in DATASETS:
        try:
            train = load_split(name, "train")
        except DatasetNotInstalledError as error:
            print(f"skipping {name}: {error}")
            continue
        indices = np.arange(len(train))
        if len(train) > max_per_dataset:
            indices = np.sort(rng.choice(len(train), size=max_per_dataset, replace=False))
        subset = train.subset(indices)
        images = torch.stack([preprocess(decode_rgb(data)) for data in subset.images])
        parts.append(
            CorpusPart(name, images.half(), subset.labels, subset.class_names, indices, subset.hashes())
        )
    if not parts or parts[0].name != PRIMARY:
        raise RuntimeError(f"pretraining needs the {PRIMARY} train split")
    return parts


@dataclass(frozen=True)
class Batch:
    images: torch.Tensor  # (groups * group_size, 3, S, S) float32
    captions: list[str]


class GroupSampler:
    """Batches made of groups whose captions all name different classes.

    Plain CLIP loss treats every other caption in a batch as a negative; with only ~40 classes a
    batch of 128 repeats classes, so the loss is applied per group, where no class repeats.
    """

    def __init__(
        self, parts: list[CorpusPart], group_size: int, groups: int, primary_share: float, seed: int,
        domain_share: float = 0.0,
    ) -> None:
        self.parts = parts
        self.domain_share = domain_share
        self.groups = groups
        self.n_primary = round(primary_share * group_size)
        self.n_other = group_size - self.n_primary
        # (part, label) pairs of the non-primary datasets
        self.other_classes = [(p, c) for p in range(1, len(parts)) for c in range(len(parts[p].class_names))]
        if self.n_primary > len(parts[0].class_names) or self.n_other > len(self.other_classes):
            raise ValueError(f"group size {group_size} needs more distinct classes than the corpus has")
        self.members = [[np.flatnonzero(part.labels == c) for c in range(len(part.class_names))] for part in parts]
        self.rng = np.random.default_rng(seed)
        self.augment = v2.Compose(
            [
                v2.RandomResizedCrop(parts[0].images.shape[-1], scale=(0.5, 1.0), antialias=True),
                v2.RandomHorizontalFlip(),
            ]
        )

    def _group(self) -> list[tuple[int, int]]:
        primary = self.rng.choice(len(self.parts[0].class_names), size=self.n_primary, replace=False)
        other = self.rng.choice(len(self.other_classes), size=self.n_other, replace=False)
        return [(0, int(c)) for c in primary] + [self.other_classes[i] for i in other]

    def sample(self) -> Batch:
        images: list[torch.Tensor] = []
        captions: list[str] = []
        for _ in range(self.groups):
            for part_index, label in self._group():
                part = self.parts[part_index]
                image = part.images[int(self.rng.choice(self.members[part_index][label]))].float()
                images.append(self.augment(image) if part_index == 0 else image)
                captions.append(self._template(part.name).format(part.class_names[label]))
        return Batch(torch.stack(images), captions)

    def _template(self, dataset: str) -> str:
        # no draw at all at share 0, so that runs without domain captions keep their random stream
        if self.domain_share > 0 and self.rng.random() < self.domain_share:
            own = DOMAIN_TEMPLATES.get(dataset, CAPTION_TEMPLATES)
            return own[int(self.rng.integers(len(own)))]
        return CAPTION_TEMPLATES[int(self.rng.integers(len(CAPTION_TEMPLATES)))]
