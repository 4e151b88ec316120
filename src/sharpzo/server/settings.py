"""Server configuration: SHARPZO_* environment variables, overridden by ``sharpzo serve`` flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from .ledger import default_ledger_path
from .project_models import DEFAULT_MODEL, shipped_weights


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHARPZO_", extra="ignore")

    model: str = Field(
        default=DEFAULT_MODEL,
        description="open_clip model name (e.g. ViT-B-32, RN50, or the project's sharpzo-standin-v2 and "
        "sharpzo-standin-v1).",
    )
    pretrained: str | None = Field(
        default=None,
        description="open_clip pretrained tag (e.g. openai) or a checkpoint file; unset: a project model's shipped "
        "weights; 'none' for random weights.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto (CUDA when available), cpu or cuda."
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        default="fp32", description="fp32, or bf16 / fp16 (these need CUDA)."
    )
    init_seed: int = Field(
        default=0, description="torch seed before building the model: random weights are reproducible."
    )
    threads: int = Field(default=0, ge=0, description="torch CPU threads; 0 leaves torch's default.")

    max_candidates: int = Field(default=2048, ge=1, description="Most prompts (P) in one /v1/logits request.")
    max_classes: int = Field(default=1000, ge=1, description="Most class names (C) in one /v1/logits request.")
    max_images_per_request: int = Field(default=10_000, ge=1, description="Most images (N) one request may score.")
    max_images_per_set: int = Field(default=10_000, ge=1, description="Most images in one image set.")
    max_image_pixels: int = Field(
        default=40_000_000, ge=1, description="Most pixels in one image, read from its header (stops decompression "
            "bombs)"
    )
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, description="Largest request body; 413 beyond.")
    max_logit_elements: int = Field(default=64_000_000, ge=1, description="Most P x N x C logits one request may need.")
    max_image_sets: int = Field(default=256, ge=1, description="Image sets kept in memory; the oldest go first.")
    max_visual_tokens: int = Field(
        default=64, ge=0, description="Most visual prompt tokens (m_v); 0: no visual prompts."
    )
    max_image_forwards_per_request: int = Field(
        default=65_536, ge=0, description="Most image-tower forwards (P_v x N) one /v1/logits request may run."
    )
    max_visual_images_per_set: int = Field(
        default=2048, ge=0,
        description="Most images in a set uploaded with visual: true: each keeps its patch stem ((1 + grid^2) x "
        "visual width floats) in memory.",
    )
    image_forward_quota: int | None = Field(
        default=None, ge=0,
        description="Image forwards each API key may use in all (besides its query quota); unset: no limit.",
    )
    visual_chunk_tokens: int = Field(
        default=65_536, ge=256, description="Most tokens (image forwards x sequence length) in one image-tower pass."
    )

    text_chunk_tokens: int | None = Field(
        default=None,
        ge=64,
        description="Most suffix tokens (candidates x class tokens) in one text-tower pass; unset: 4096 on the CPU "
        "(activations stay in cache), 65536 on CUDA.",
    )
    batch_window_ms: float = Field(
        default=2.0, ge=0,
        description="With batch_merge, how long the micro-batcher waits to fill a batch; it waits only while other "
        "requests are on their way. Without it each request runs alone and no one waits.",
    )
    batch_max_candidates: int = Field(
        default=4096, ge=1, description="Most candidates one merged batch carries (batch_merge)."
    )
    batch_merge: bool = Field(
        default=False,
        description="Run the jobs of one batch through the towers together (one pass per class list): more throughput "
        "where passes are costly to launch (a GPU), but a request's losses then differ in their last bits with the "
        "requests beside it, so a run is reproducible bit for bit only while it is alone. Off: each request's scores "
        "are the same whatever else is in flight.",
    )
    suffix_cache_size: int = Field(
        default=64, ge=0, description="Tokenised class lists kept across requests (least recently used go first); "
            "0: none."
    )

    image_cache_dir: Path | None = Field(
        default=None, description="Folder to persist image-set features across restarts."
    )

    auth: Literal["on", "off"] = Field(
        default="on", description="on: every /v1 call but health needs a Bearer API key; off: all calls charge "
            "'anonymous'."
    )
    api_keys: SecretStr | None = Field(
        default=None, description="API keys as 'name:key:quota,...' (besides the ledger's)."
    )
    api_keys_file: Path | None = Field(default=None, description="File of 'name:key:quota' lines ('#' comments).")
    ledger: str = Field(
        default_factory=lambda: str(default_ledger_path()),
        description="Ledger of hashed keys, usage, idempotent responses: a SQLite file, or postgresql://... for "
        "replicas.",
    )
    ledger_synchronous: Literal["NORMAL", "FULL"] = Field(
        default="NORMAL",
        description="SQLite synchronous mode: NORMAL survives process crashes; FULL also power loss, at an fsync a "
        "request.",
    )
    feature_store: str | None = Field(
        default=None,
        description="Where replicas share image-set features: postgresql://...; unset: the ledger's database when it "
        "is PostgreSQL, else none (features stay in memory and image_cache_dir). 'none': never shared.",
    )
    idempotency_window_s: float = Field(
        default=24 * 3600.0, gt=0, description="How long a POST's response is kept for retries with its "
            "Idempotency-Key."
    )
    rate_limit_rps: float = Field(default=100.0, gt=0, description="Requests per second per API key, on average.")
    rate_limit_burst: int = Field(default=200, ge=1, description="Requests an API key may send at once.")
    access_log: bool = Field(default=True, description="One JSON line per request on stderr.")

    def feature_store_url(self) -> str | None:
        url = self.ledger if self.feature_store is None else self.feature_store
        return url if url.startswith(("postgresql://", "postgres://")) else None

    def pretrained_or_none(self) -> str | None:
        if self.pretrained is None:
            shipped = shipped_weights(self.model)
            return None if shipped is None else str(shipped)
        if self.pretrained.strip().lower() in ("", "none", "random"):
            return None
        return self.pretrained
