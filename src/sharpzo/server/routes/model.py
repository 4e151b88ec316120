"""Health, the model's description, and token embeddings."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from sharpzo.shared.protocol import API_PREFIX, Health, ModelInfo, TokenEmbeddingsRequest, TokenEmbeddingsResponse
from sharpzo.shared.tensors import Tensor

from ..dependencies import current_caller
from ..errors import ERROR_RESPONSES
from ..services import ModelInfoDep, VocabularyDep

router = APIRouter(prefix=API_PREFIX)
authenticated = [Depends(current_caller)]


@router.get("/health", response_model=Health)
async def health(info: ModelInfoDep) -> Health:
    return Health(model=info.name)


@router.get("/model", response_model=ModelInfo, responses=ERROR_RESPONSES, dependencies=authenticated)
async def model_info(info: ModelInfoDep) -> ModelInfo:
    return info


# Only /v1/logits is charged, so only it keeps responses for retries: the other POSTs are idempotent by content.
@router.post(
    "/token-embeddings", response_model=TokenEmbeddingsResponse, responses=ERROR_RESPONSES, dependencies=authenticated
)
async def token_embeddings(body: TokenEmbeddingsRequest, vocabulary: VocabularyDep) -> TokenEmbeddingsResponse:
    ids, emb = await vocabulary.embed(body.text)
    return TokenEmbeddingsResponse(tokens=ids, embeddings=Tensor.from_numpy(emb))
