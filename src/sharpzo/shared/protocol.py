"""Request and response bodies of the /v1 API, shared by server and client."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .tensors import Tensor, WireDType

API_PREFIX = "/v1"
IDEMPOTENCY_HEADER = "Idempotency-Key"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str


class Limits(BaseModel):
    """Request limits a server enforces; a client plans its request sizes from these."""

    max_candidates: int = Field(description="Most prompts (P) in one /v1/logits request.")
    max_classes: int = Field(description="Most class names (C) in one /v1/logits request.")
    max_images_per_request: int = Field(description="Most images (N) one /v1/logits request may score.")
    max_images_per_set: int = Field(description="Most images in one image set.")
    max_image_pixels: int = Field(description="Most pixels in one decoded image.")
    max_body_bytes: int = Field(description="Largest request body accepted.")


class ModelInfo(BaseModel):
    name: str = Field(description="open_clip model name.")
    pretrained: str | None = Field(description="Pretrained tag or checkpoint file name; null for random weights.")
    embed_dim: int = Field(description="Width of the joint image-text feature space.")
    width: int = Field(description="Token embedding width: the last dimension of every prompt.")
    context_length: int = Field(description="Text context length, SOS and EOT included.")
    logit_scale: float = Field(description="exp(logit_scale): the factor applied to cosine similarities.")
    device: str
    precision: str
    limits: Limits


class TokenEmbeddingsRequest(_Body):
    text: str = Field(min_length=1, max_length=1000, description="Text whose token embeddings to return.")


class TokenEmbeddingsResponse(BaseModel):
    tokens: list[int] = Field(description="Token ids of the text, without SOS and EOT.")
    embeddings: Tensor = Field(description="float32 tensor [n_tokens, width].")


class ImageSetRequest(_Body):
    images: list[str] = Field(min_length=1, description="Base64 of encoded images (JPEG, PNG, WebP, BMP).")
    augment: bool = Field(
        default=False,
        description="Encode one augmented view (random resized crop 0.5-1, horizontal flip) instead of the plain one.",
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seed of the augmentation.")


class ImageSetConcatRequest(_Body):
    parts: list[str] = Field(
        min_length=1, max_length=1000, description="Ids of image sets (uploaded in chunks) to join, in order."
    )


class ImageSetInfo(BaseModel):
    id: str = Field(description="Content-derived id: the same images and options give the same id.")
    count: int = Field(description="Number of images in the set.")


class Usage(BaseModel):
    queries: int = Field(description="Candidates scored: one query per prompt candidate.")
    image_evals: int = Field(description="Candidates times images scored.")
    requests: int = Field(description="HTTP requests charged.")


class AccountUsage(BaseModel):
    """GET /v1/usage: what the calling API key (or 'anonymous', with auth off) has been charged in all."""

    queries: int = Field(description="Candidates scored.")
    image_evals: int = Field(description="Candidates times images scored.")
    requests: int = Field(description="Scoring requests charged.")
    quota: int | None = Field(description="Queries the key may use in all; null for no limit.")


class LogitsRequest(_Body):
    image_set: str = Field(min_length=1, max_length=128, description="Id from POST /v1/image-sets.")
    class_names: list[str] = Field(min_length=1, description="Class names; class k's prompt is [SOS] ctx name. [EOT].")
    prompts: Tensor = Field(description="Soft prompts, float tensor [P, m, width].")
    indices: list[int] | None = Field(default=None, description="Images of the set to score; all when omitted.")
    labels: list[int] | None = Field(
        default=None, description="Class index per scored image; adds each candidate's cross-entropy and accuracy."
    )
    return_logits: bool = Field(default=True, description="Send logits back; set false with labels to save bandwidth.")
    logits_dtype: WireDType = Field(default="float32", description="Element type of the returned logits.")


class LogitsResponse(BaseModel):
    logits: Tensor | None = Field(default=None, description="[P, N, C] logits = exp(logit_scale) * cosine.")
    loss: list[float] | None = Field(default=None, description="Mean cross-entropy per candidate (with labels).")
    accuracy: list[float] | None = Field(default=None, description="Top-1 accuracy per candidate (with labels).")
    usage: Usage = Field(description="What this request was charged.")


class ErrorBody(BaseModel):
    detail: str
