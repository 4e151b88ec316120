"""Request and response bodies of the /v1 API, shared by server and client."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from .tensors import Tensor, WireDType

API_PREFIX = "/v1"
IDEMPOTENCY_HEADER = "Idempotency-Key"
# Per-stage server times of a /v1/logits answer (W3C Server-Timing: "stage;dur=<ms>, ...").
SERVER_TIMING_HEADER = "Server-Timing"


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
    max_visual_tokens: int = Field(default=0, description="Most visual prompt tokens (m_v); 0: no visual prompts.")
    max_image_forwards_per_request: int = Field(
        default=0, description="Most image-tower forwards (P_v x N) one /v1/logits request may run; 0: none."
    )
    max_visual_images_per_set: int = Field(
        default=0, description="Most images in a set uploaded with visual: true (their patch stems stay in memory)."
    )


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
    request_encodings: list[str] = Field(
        default_factory=list,
        description="Content-Encodings the server accepts for request bodies (e.g. gzip); empty: plain bodies only.",
    )
    visual_width: int | None = Field(
        default=None, description="Token width of the ViT image tower: the last dimension of visual_prompts."
    )
    visual_prompts: bool = Field(
        default=False, description="Whether /v1/logits takes visual_prompts (a ViT image tower with token pooling)."
    )


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
    visual: bool = Field(
        default=False,
        description="Also keep each image's patch stem in memory, which visual_prompts need. Uploading a set again "
        "with visual: true gives it back its stems (a set read from the disk cache or shared store has none).",
    )


class ImageSetConcatRequest(_Body):
    parts: list[str] = Field(
        min_length=1, max_length=1000, description="Ids of image sets (uploaded in chunks) to join, in order."
    )


class ImageSetInfo(BaseModel):
    id: str = Field(description="Content-derived id: the same images and options give the same id.")
    count: int = Field(description="Number of images in the set.")
    stem_spread: float | None = Field(
        default=None,
        description="Std of the entries of the set's patch tokens as the image tower's first block sees them (the "
        "stems): the length unit of visual prompts. Null when the set keeps no stems (uploaded without visual: true, "
        "or read back from the disk cache or shared store).",
    )


class Usage(BaseModel):
    """What was charged: of one request, of a run, or of an account. The one usage type of server, ledger and client."""

    model_config = ConfigDict(frozen=True)

    queries: int = Field(default=0, description="Candidates scored: one query per prompt candidate.")
    image_evals: int = Field(default=0, description="Candidates times images scored.")
    requests: int = Field(default=0, description="HTTP requests charged.")
    image_forwards: int = Field(
        default=0,
        description="Image-tower forwards run for visual prompts: P_v x N per request; 0 for text prompts alone.",
    )

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            queries=self.queries + other.queries,
            image_evals=self.image_evals + other.image_evals,
            requests=self.requests + other.requests,
            image_forwards=self.image_forwards + other.image_forwards,
        )


class AccountUsage(Usage):
    """GET /v1/usage: what the calling API key (or 'anonymous', with auth off) has been charged in all."""

    quota: int | None = Field(default=None, description="Queries the key may use in all; null for no limit.")

    @property
    def remaining(self) -> int | None:
        return None if self.quota is None else max(self.quota - self.queries, 0)


class LogitsRequest(_Body):
    image_set: str = Field(min_length=1, max_length=128, description="Id from POST /v1/image-sets.")
    class_names: list[str] = Field(min_length=1, description="Class names; class k's prompt is [SOS] ctx name. [EOT].")
    prompts: Tensor = Field(
        description="Soft text prompts, float tensor [P, m, width]. With visual_prompts its P may be 1: one text "
        "prompt (e.g. the zero-shot one) for every visual candidate."
    )
    visual_prompts: Tensor | None = Field(
        default=None,
        description="Soft image-side prompts (VPT-shallow), float tensor [P, m_v, visual_width]: tokens put after "
        "the class token, before the first block (after the stem's pre-norm; no positional embedding). Candidate p "
        "pairs text prompt p with visual prompt p; either P may be 1 (shared by all candidates). Needs an image set "
        "uploaded with visual: true; each candidate with its own visual prompt costs N image forwards.",
    )
    indices: list[int] | None = Field(default=None, description="Images of the set to score; all when omitted.")
    labels: list[int] | None = Field(
        default=None, description="Class index per scored image; adds each candidate's cross-entropy and accuracy."
    )
    return_logits: bool = Field(default=True, description="Send logits back; set false with labels to save bandwidth.")
    logits_dtype: WireDType = Field(default="float32", description="Element type of the returned logits.")

    @field_validator("class_names")
    @classmethod
    def _names_are_distinct_and_not_blank(cls, names: list[str]) -> list[str]:
        seen: dict[str, int] = {}
        for k, name in enumerate(names):
            if not name.strip():
                raise PydanticCustomError("class_name", "class_names[{k}]: empty class name", {"k": k})
            if name in seen:
                raise PydanticCustomError(
                    "class_name", "class_names[{k}]: {name} duplicates class_names[{first}]",
                    {"k": k, "name": repr(name), "first": seen[name]},
                )
            seen[name] = k
        return names


class LogitsResponse(BaseModel):
    logits: Tensor | None = Field(default=None, description="[P, N, C] logits = exp(logit_scale) * cosine.")
    loss: list[float] | None = Field(default=None, description="Mean cross-entropy per candidate (with labels).")
    accuracy: list[float] | None = Field(default=None, description="Top-1 accuracy per candidate (with labels).")
    usage: Usage = Field(description="What this request was charged.")


ErrorCode = Literal[
    "invalid_request",  # 422: the detail names the field
    "unauthorized",  # 401: missing, unknown or revoked API key
    "not_found",  # 404: no such route or resource
    "unknown_image_set",  # 404: no such image set for this key (another key's set looks the same)
    "body_too_large",  # 413
    "quota_exhausted",  # 429: waiting does not help; the operator must raise the quota
    "rate_limited",  # 429: retry after Retry-After
    "idempotency_conflict",  # 422: an Idempotency-Key reused for a different request
    "unavailable",  # 503: a dependency (the ledger's database) is down; retry after Retry-After
]


class ErrorBody(BaseModel):
    detail: str = Field(description="What was wrong, starting with the field it concerns.")
    code: ErrorCode = Field(description="Machine-readable reason; clients decide on retries by it.")
