"""Loading a frozen open_clip CLIP and checking that its text tower is one this server can serve."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import open_clip
import torch
from torch import nn
from torchvision import transforms

from .project_models import register_project_configs
from .settings import ServerSettings

log = logging.getLogger(__name__)

_OPEN_CLIP_PRECISION = {"fp32": "fp32", "bf16": "pure_bf16", "fp16": "pure_fp16"}


class UnsupportedModel(RuntimeError):
    """The configured model cannot be served: its text tower is not the causal CLIP transformer."""


@dataclass
class LoadedModel:
    model: open_clip.CLIP  # open_clip ships no type hints: its models and tokenizers are unchecked
    tokenizer: open_clip.SimpleTokenizer
    preprocess: Callable
    augment: Callable
    name: str
    pretrained: str | None
    device: torch.device
    dtype: torch.dtype
    precision: str

    @property
    def width(self) -> int:
        return int(self.model.token_embedding.weight.shape[1])

    @property
    def context_length(self) -> int:
        return int(self.model.positional_embedding.shape[0])

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1])

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().item())


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise UnsupportedModel("SHARPZO_DEVICE=cuda, but torch sees no CUDA device")
    return torch.device(setting)


def check_servable(model: open_clip.CLIP, tokenizer: open_clip.SimpleTokenizer) -> None:
    """Raise UnsupportedModel unless the fast prompted text path is exact for this model."""
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection", "attn_mask")
    missing = [name for name in needed if getattr(model, name, None) is None]
    if missing:
        raise UnsupportedModel(
            f"{type(model).__name__} has no {', '.join(missing)}: only open_clip CLIP models with the built-in "
            "causal text transformer are supported (not CustomTextCLIP / Hugging Face text towers)"
        )
    if getattr(model, "text_pool_type", "argmax") not in ("argmax", "eos"):
        raise UnsupportedModel(f"text pooling {model.text_pool_type!r} is not supported; it must pool at EOT")
    if not isinstance(model.text_projection, torch.Tensor):
        raise UnsupportedModel("text_projection must be a matrix, not a layer")
    for i, block in enumerate(model.transformer.resblocks):
        if not isinstance(getattr(block, "attn", None), nn.MultiheadAttention) or not block.attn.batch_first:
            raise UnsupportedModel(
                f"text block {i} is {type(block).__name__}: a batch-first MultiheadAttention block is required"
            )
        if hasattr(block, "ln_1_kv"):
            raise UnsupportedModel(f"text block {i} is a cross-attention block")
    mask = model.attn_mask
    causal = torch.full_like(mask, float("-inf")).triu_(1)
    if mask.shape[0] != model.positional_embedding.shape[0] or not torch.equal(mask, causal):
        raise UnsupportedModel("the text attention mask is not causal")
    for attr in ("encode", "sot_token_id", "eot_token_id"):
        if not hasattr(tokenizer, attr):
            raise UnsupportedModel(
                f"the tokenizer {type(tokenizer).__name__} has no {attr}: a CLIP BPE tokenizer is required"
            )


def _augmentation(preprocess: transforms.Compose, image_size: int) -> transforms.Compose:
    """The paper's single augmented view: random resized crop (scale 0.5-1) plus a horizontal flip."""
    tail = [t for t in preprocess.transforms if not isinstance(t, (transforms.Resize, transforms.CenterCrop))]
    bicubic = transforms.InterpolationMode.BICUBIC
    crop = transforms.RandomResizedCrop(image_size, scale=(0.5, 1.0), interpolation=bicubic)
    return transforms.Compose([crop, transforms.RandomHorizontalFlip(), *tail])


def load_model(settings: ServerSettings) -> LoadedModel:
    register_project_configs()
    if settings.model not in open_clip.list_models():
        raise UnsupportedModel(f"unknown model {settings.model!r}; open_clip knows e.g. ViT-B-32, RN50, ViT-L-14")
    device = resolve_device(settings.device)
    if settings.precision != "fp32" and device.type != "cuda":
        raise UnsupportedModel(f"precision {settings.precision} needs CUDA; use fp32 on {device.type}")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    pretrained = settings.pretrained_or_none()
    torch.manual_seed(settings.init_seed)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            settings.model, pretrained=pretrained, precision=_OPEN_CLIP_PRECISION[settings.precision], device=device
        )
    except Exception as exc:  # open_clip raises many types for bad tags, files and downloads
        raise UnsupportedModel(f"could not load {settings.model} with pretrained={pretrained!r}: {exc}") from exc
    model.eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(settings.model)
    check_servable(model, tokenizer)
    image_size = model.visual.image_size
    size = image_size[0] if isinstance(image_size, (tuple, list)) else int(image_size)
    log.info("loaded %s (pretrained=%s) on %s in %s", settings.model, pretrained, device, settings.precision)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        preprocess=preprocess,
        augment=_augmentation(preprocess, size),
        name=settings.model,
        pretrained=pretrained,
        device=device,
        dtype=model.token_embedding.weight.dtype,
        precision=settings.precision,
    )
