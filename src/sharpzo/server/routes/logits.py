"""Scoring soft prompts: the one charged route."""

from __future__ import annotations

import numpy as np
import torch
from fastapi import APIRouter
from fastapi.responses import Response

from sharpzo.shared.protocol import API_PREFIX, LogitsRequest, LogitsResponse, Usage
from sharpzo.shared.tensors import Tensor

from ..batcher import LogitsJob
from ..dependencies import MeteredDep
from ..errors import ERROR_RESPONSES, ApiError
from ..metering import MeteredCall
from ..model import LoadedModel
from ..services import Services, ServicesDep
from ..text import PromptError
from .image_sets import owned_image_set

router = APIRouter(prefix=API_PREFIX)


def _decode_prompts(body: LogitsRequest, loaded: LoadedModel, max_candidates: int) -> torch.Tensor:
    try:
        prompts = body.prompts.to_numpy()
    except ValueError as exc:
        raise ApiError(422, f"prompts: {exc}") from exc
    if prompts.ndim != 3:
        raise ApiError(422, f"prompts: shape {list(prompts.shape)} must be [P, m, width]")
    n_cand, m, width = prompts.shape
    if width != loaded.width:
        raise ApiError(422, f"prompts: width {width} does not match the model's token width {loaded.width}")
    if not 1 <= m <= loaded.context_length - 3:
        raise ApiError(422, f"prompts: m = {m} context vectors; it must be 1..{loaded.context_length - 3}")
    if not 1 <= n_cand <= max_candidates:
        raise ApiError(422, f"prompts: P = {n_cand} candidates; it must be 1..{max_candidates}")
    if not np.isfinite(prompts).all():
        raise ApiError(422, "prompts: contains NaN or Inf")
    return torch.from_numpy(prompts.astype(np.float32, copy=False))


async def _job(body: LogitsRequest, services: Services, call: MeteredCall) -> LogitsJob:
    """The request decoded and checked against this server's limits, its class names tokenised once."""
    settings = services.settings
    prompts = _decode_prompts(body, services.loaded, settings.max_candidates)
    n_cls = len(body.class_names)
    if n_cls > settings.max_classes:
        raise ApiError(422, f"class_names: {n_cls} classes is over the limit of {settings.max_classes}")
    try:
        suffixes = services.encoder.suffixes(body.class_names, prompts.shape[1])
    except PromptError as exc:
        raise ApiError(422, str(exc)) from exc
    image_set = await owned_image_set(services, body.image_set, call.caller.account.name)
    features = image_set.features
    if body.indices is not None:
        bad = [i for i in body.indices if not 0 <= i < image_set.count]
        if bad:
            raise ApiError(422, f"indices: {bad[0]} is out of range for an image set of {image_set.count}")
        features = features[torch.tensor(body.indices, dtype=torch.long)]
    n_img, n_cand = features.shape[0], prompts.shape[0]
    if not 1 <= n_img <= settings.max_images_per_request:
        raise ApiError(422, f"indices: {n_img} images; a request may score 1..{settings.max_images_per_request}")
    labels = None
    if body.labels is not None:
        if len(body.labels) != n_img:
            raise ApiError(422, f"labels: {len(body.labels)} labels for {n_img} images")
        bad = [y for y in body.labels if not 0 <= y < n_cls]
        if bad:
            raise ApiError(422, f"labels: {bad[0]} is not a class index below {n_cls}")
        labels = torch.tensor(body.labels, dtype=torch.long, device=features.device)
    elif not body.return_logits:
        raise ApiError(422, "return_logits: false needs labels, or the response would be empty")
    if n_cand * n_img * n_cls > settings.max_logit_elements:
        raise ApiError(
            422, f"prompts: P x N x C = {n_cand * n_img * n_cls} logits is over the limit of {settings.max_logit_elements}"
        )
    call.check_quota(n_cand)
    return LogitsJob(prompts, suffixes, features, labels, body.return_logits)


async def _score(body: LogitsRequest, services: Services, call: MeteredCall) -> tuple[LogitsResponse, Usage]:
    with services.batcher.arriving(), call.stages.time("validate"):
        job = await _job(body, services, call)
    scores = await services.batcher.submit(job)
    call.stages.add("queue", job.queue_wait_s)
    call.stages.add("model", job.model_s)
    n_cand, n_img = job.prompts.shape[0], job.images.shape[0]
    usage = Usage(queries=n_cand, image_evals=n_cand * n_img, requests=1)
    with call.stages.time("encode"):
        response = LogitsResponse(
            logits=None if scores.logits is None else Tensor.from_numpy(scores.logits.cpu().numpy(), body.logits_dtype),
            loss=None if scores.loss is None else scores.loss.cpu().tolist(),
            accuracy=None if scores.accuracy is None else scores.accuracy.cpu().tolist(),
            usage=usage,
        )
    return response, usage


@router.post("/logits", response_model=LogitsResponse, responses=ERROR_RESPONSES)
async def logits(body: LogitsRequest, services: ServicesDep, call: MeteredDep) -> Response:
    return await call.respond(lambda: _score(body, services, call))
