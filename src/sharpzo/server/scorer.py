"""Scoring requests as domain work: a `LogitsRequest` checked against the server's limits and the caller's image set
becomes a micro-batcher job, and the batch's scores become the `LogitsResponse`. Text prompts [P_t, m, width] and
visual prompts [P_v, m_v, visual width] pair up candidate by candidate; either P may be 1, shared by all."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sharpzo.shared.protocol import LogitsRequest, LogitsResponse, Usage
from sharpzo.shared.tensors import Tensor, WireDType

from .batcher import LogitsJob, MicroBatcher, VisualPrompts
from .errors import ApiError
from .images import ImageSet, ImageSets
from .metrics import StageTimes
from .text import PromptedTextEncoder, PromptError


@dataclass(frozen=True)
class ScoringLimits:
    """The most one /v1/logits request may ask of this server, and the model's prompt shape."""

    max_candidates: int
    max_classes: int
    max_images_per_request: int
    max_logit_elements: int
    width: int
    context_length: int
    max_visual_tokens: int = 0
    max_image_forwards: int = 0
    visual_width: int | None = None  # None: the image tower takes no prompt tokens
    visual_refusal: str | None = None  # why not


@dataclass(frozen=True)
class _PromptShape:
    """What one prompts field must look like: ``[P, m, width]`` with m in ``m_min..m_max``."""

    field: str
    m: str  # the name of its m in messages
    width: int
    tower: str  # whose token width it must match
    m_min: int
    m_max: int


def _decode_prompts(tensor: Tensor, shape: _PromptShape, max_candidates: int) -> torch.Tensor:
    field = shape.field
    try:
        prompts = tensor.to_numpy()
    except ValueError as exc:
        raise ApiError(422, f"{field}: {exc}") from exc
    if prompts.ndim != 3:
        raise ApiError(422, f"{field}: shape {list(prompts.shape)} must be [P, {shape.m}, width]")
    n_cand, m, width = prompts.shape
    if width != shape.width:
        raise ApiError(422, f"{field}: width {width} does not match {shape.tower} token width {shape.width}")
    if not shape.m_min <= m <= shape.m_max:
        raise ApiError(422, f"{field}: {shape.m} = {m} context vectors; it must be {shape.m_min}..{shape.m_max}")
    if not 1 <= n_cand <= max_candidates:
        raise ApiError(422, f"{field}: P = {n_cand} candidates; it must be 1..{max_candidates}")
    if not np.isfinite(prompts).all():
        raise ApiError(422, f"{field}: contains NaN or Inf")
    return torch.from_numpy(prompts.astype(np.float32, copy=False))


def _text_prompts(body: LogitsRequest, limits: ScoringLimits) -> torch.Tensor:
    shape = _PromptShape("prompts", "m", limits.width, "the model's", 1, limits.context_length - 3)
    return _decode_prompts(body.prompts, shape, limits.max_candidates)


def _visual_prompts(body: LogitsRequest, limits: ScoringLimits, n_text: int) -> torch.Tensor | None:
    """The visual prompts, checked to pair with ``n_text`` text prompts; None without them."""
    if body.visual_prompts is None:
        return None
    if limits.visual_width is None:
        raise ApiError(422, f"visual_prompts: {limits.visual_refusal}")
    shape = _PromptShape("visual_prompts", "m_v", limits.visual_width, "the image tower's", 0, limits.max_visual_tokens)
    prompts = _decode_prompts(body.visual_prompts, shape, limits.max_candidates)
    n_visual = prompts.shape[0]
    if n_text not in (1, n_visual) and n_visual != 1:
        raise ApiError(
            422, f"visual_prompts: P = {n_visual} visual prompts cannot pair with {n_text} text prompts; "
            "the two P must be equal or one of them 1",
        )
    return prompts


def _stems(image_set: ImageSet, index: torch.Tensor | None) -> torch.Tensor:
    if image_set.stems is None:
        raise ApiError(
            422, f"image_set: {image_set.id!r} keeps no patch stems; upload its images again with visual: true "
            "(a set read back from the disk cache or the shared store has none)",
        )
    return image_set.stems if index is None else image_set.stems[index.to(image_set.stems.device)]


def _labels(body: LogitsRequest, n_img: int, n_cls: int, device: torch.device) -> torch.Tensor | None:
    if body.labels is None:
        if not body.return_logits:
            raise ApiError(422, "return_logits: false needs labels, or the response would be empty")
        return None
    if len(body.labels) != n_img:
        raise ApiError(422, f"labels: {len(body.labels)} labels for {n_img} images")
    bad = [y for y in body.labels if not 0 <= y < n_cls]
    if bad:
        raise ApiError(422, f"labels: {bad[0]} is not a class index below {n_cls}")
    return torch.tensor(body.labels, dtype=torch.long, device=device)


class Scorer:
    def __init__(
        self, limits: ScoringLimits, encoder: PromptedTextEncoder, image_sets: ImageSets, batcher: MicroBatcher
    ) -> None:
        self.limits = limits
        self.encoder = encoder
        self.image_sets = image_sets
        self.batcher = batcher

    async def job(self, body: LogitsRequest, owner: str, stages: StageTimes) -> LogitsJob:
        """The request decoded and checked against this server's limits, its class names tokenised once (the
        "validate" stage; a batch about to start waits the batch window for it meanwhile)."""
        with self.batcher.arriving(), stages.time("validate"):
            return await self._job(body, owner)

    async def _job(self, body: LogitsRequest, owner: str) -> LogitsJob:
        limits = self.limits
        prompts = _text_prompts(body, limits)
        visual = _visual_prompts(body, limits, prompts.shape[0])
        n_cls = len(body.class_names)
        if n_cls > limits.max_classes:
            raise ApiError(422, f"class_names: {n_cls} classes is over the limit of {limits.max_classes}")
        try:
            suffixes = self.encoder.suffixes(body.class_names, prompts.shape[1])
        except PromptError as exc:
            raise ApiError(422, str(exc)) from exc
        image_set = await self.image_sets.owned(body.image_set, owner)
        features, index = image_set.features, None
        if body.indices is not None:
            bad = [i for i in body.indices if not 0 <= i < image_set.count]
            if bad:
                raise ApiError(422, f"indices: {bad[0]} is out of range for an image set of {image_set.count}")
            index = torch.tensor(body.indices, dtype=torch.long)
            features = features[index]
        n_img, n_cand = features.shape[0], max(prompts.shape[0], 0 if visual is None else visual.shape[0])
        if not 1 <= n_img <= limits.max_images_per_request:
            raise ApiError(422, f"indices: {n_img} images; a request may score 1..{limits.max_images_per_request}")
        labels = _labels(body, n_img, n_cls, features.device)
        n_logits = n_cand * n_img * n_cls
        if n_logits > limits.max_logit_elements:
            raise ApiError(
                422, f"prompts: P x N x C = {n_logits} logits is over the limit of {limits.max_logit_elements}"
            )
        if visual is None:
            return LogitsJob(prompts, suffixes, features, labels, body.return_logits)
        forwards = visual.shape[0] * n_img
        if forwards > limits.max_image_forwards:
            raise ApiError(
                422,
                f"visual_prompts: P_v x N = {forwards} image forwards is over the limit of {limits.max_image_forwards}",
            )
        visual_job = VisualPrompts(visual, _stems(image_set, index))
        return LogitsJob(prompts, suffixes, features, labels, body.return_logits, visual_job)

    async def score(self, job: LogitsJob, logits_dtype: WireDType, stages: StageTimes) -> LogitsResponse:
        """Run the job in the micro-batcher's next batch; its usage is what the request is charged."""
        scores = await self.batcher.submit(job)
        stages.add("queue", job.queue_wait_s)
        stages.add("model", job.model_s)
        n_cand, n_img = job.candidates, job.images.shape[0]
        with stages.time("encode"):
            return LogitsResponse(
                logits=None if scores.logits is None else Tensor.from_numpy(scores.logits.cpu().numpy(), logits_dtype),
                loss=None if scores.loss is None else scores.loss.cpu().tolist(),
                accuracy=None if scores.accuracy is None else scores.accuracy.cpu().tolist(),
                usage=Usage(queries=n_cand, image_evals=n_cand * n_img, requests=1, image_forwards=job.image_forwards),
            )
