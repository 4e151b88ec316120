"""Health, the model's description, and token embeddings."""

from __future__ import annotations

import numpy as np
import torch
from fastapi import APIRouter, Depends

from sharpzo.shared.protocol import API_PREFIX, Health, ModelInfo, TokenEmbeddingsRequest, TokenEmbeddingsResponse
from sharpzo.shared.tensors import Tensor

from ..dependencies import current_caller
from ..errors import ERROR_RESPONSES, ApiError
from ..services import ServicesDep
from ..text import PromptError

router = APIRouter(prefix=API_PREFIX)
authenticated = [Depends(current_caller)]


@router.get("/health", response_model=Health)
async def health(services: ServicesDep) -> Health:
    return Health(model=services.loaded.name)


@router.get("/model", response_model=ModelInfo, responses=ERROR_RESPONSES, dependencies=authenticated)
async def model_info(services: ServicesDep) -> ModelInfo:
    return services.info


# Only /v1/logits is charged, so only it keeps responses for retries: the other POSTs are idempotent by content.
@router.post(
    "/token-embeddings", response_model=TokenEmbeddingsResponse, responses=ERROR_RESPONSES, dependencies=authenticated
)
async def token_embeddings(body: TokenEmbeddingsRequest, services: ServicesDep) -> TokenEmbeddingsResponse:
    def run() -> tuple[list[int], np.ndarray]:
        with torch.inference_mode():
            ids, emb = services.encoder.token_embeddings(body.text)
            return ids, emb.cpu().numpy()

    try:
        ids, emb = await services.on_model_thread(run)
    except PromptError as exc:
        raise ApiError(422, str(exc)) from exc
    return TokenEmbeddingsResponse(tokens=ids, embeddings=Tensor.from_numpy(emb))
