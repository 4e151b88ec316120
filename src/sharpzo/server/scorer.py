"""Scoring requests as domain work: a `LogitsRequest` checked against the server's limits and the caller's image set
becomes a micro-batcher job, and the batch's scores become the `LogitsResponse`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sharpzo.shared.protocol import LogitsRequest, LogitsResponse, Usage
from sharpzo.shared.tensors import Tensor, WireDType

from .batcher import LogitsJob, MicroBatcher
from .errors import ApiError
from .images import ImageSets
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


def _decode_prompts(body: LogitsRequest, limits: ScoringLimits) -> torch.Tensor:
    try:
        prompts = body.prompts.to_numpy()
    except ValueError as exc:
        raise ApiError(422, f"prompts: {exc}") from exc
    if prompts.ndim != 3:
        raise ApiError(422, f"prompts: shape {list(prompts.shape)} must be [P, m, width]")
    n_cand, m, width = prompts.shape
    if width != limits.width:
        raise ApiError(422, f"prompts: width {width} does not match the model's token width {limits.width}")
    if not 1 <= m <= limits.context_length - 3:
        raise ApiError(422, f"prompts: m = {m} context vectors; it must be 1..{limits.context_length - 3}")
    if not 1 <= n_cand <= limits.max_candidates:
        raise ApiError(422, f"prompts: P = {n_cand} candidates; it must be 1..{limits.max_candidates}")
    if not np.isfinite(prompts).all():
        raise ApiError(422, "prompts: contains NaN or Inf")
    return torch.from_numpy(prompts.astype(np.float32, copy=False))


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
        prompts = _decode_prompts(body, limits)
        n_cls = len(body.class_names)
        if n_cls > limits.max_classes:
            raise ApiError(422, f"class_names: {n_cls} classes is over the limit of {limits.max_classes}")
        try:
            suffixes = self.encoder.suffixes(body.class_names, prompts.shape[1])
        except PromptError as exc:
            raise ApiError(422, str(exc)) from exc
        image_set = await self.image_sets.owned(body.image_set, owner)
        features = image_set.features
        if body.indices is not None:
            bad = [i for i in body.indices if not 0 <= i < image_set.count]
            if bad:
                raise ApiError(422, f"indices: {bad[0]} is out of range for an image set of {image_set.count}")
            features = features[torch.tensor(body.indices, dtype=torch.long)]
        n_img, n_cand = features.shape[0], prompts.shape[0]
        if not 1 <= n_img <= limits.max_images_per_request:
            raise ApiError(422, f"indices: {n_img} images; a request may score 1..{limits.max_images_per_request}")
        labels = _labels(body, n_img, n_cls, features.device)
        n_logits = n_cand * n_img * n_cls
        if n_logits > limits.max_logit_elements:
            raise ApiError(
                422, f"prompts: P x N x C = {n_logits} logits is over the limit of {limits.max_logit_elements}"
            )
        return LogitsJob(prompts, suffixes, features, labels, body.return_logits)

    async def score(self, job: LogitsJob, logits_dtype: WireDType, stages: StageTimes) -> LogitsResponse:
        """Run the job in the micro-batcher's next batch; its usage is what the request is charged."""
        scores = await self.batcher.submit(job)
        stages.add("queue", job.queue_wait_s)
        stages.add("model", job.model_s)
        n_cand, n_img = job.prompts.shape[0], job.images.shape[0]
        with stages.time("encode"):
            return LogitsResponse(
                logits=None if scores.logits is None else Tensor.from_numpy(scores.logits.cpu().numpy(), logits_dtype),
                loss=None if scores.loss is None else scores.loss.cpu().tolist(),
                accuracy=None if scores.accuracy is None else scores.accuracy.cpu().tolist(),
                usage=Usage(queries=n_cand, image_evals=n_cand * n_img, requests=1),
            )
