"""The server's long-lived parts, built once per app; each route depends (``Depends``) on the parts it uses."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request

from sharpzo.shared.protocol import Limits, ModelInfo

from .auth import Admission, Authenticator, TokenBucket
from .batcher import MicroBatcher
from .content_encoding import ENCODINGS
from .feature_store import SharedFeatureStore
from .images import ImageSets, ImageSetStore
from .keys import configured_keys
from .ledger import Ledger, open_ledger
from .metering import Metering
from .metrics import Metrics
from .model import LoadedModel, load_model
from .scorer import Scorer, ScoringLimits
from .settings import ServerSettings
from .text import PromptedTextEncoder
from .visual import PromptedImageEncoder, visual_refusal
from .vocabulary import Vocabulary

T = TypeVar("T")


@dataclass
class Services:
    """Everything the app is built from: the app starts and stops it; routes take only the parts they use."""

    settings: ServerSettings
    loaded: LoadedModel
    info: ModelInfo
    ledger: Ledger
    encoder: PromptedTextEncoder
    store: ImageSetStore
    executor: ThreadPoolExecutor  # the model thread: image encoding and scoring batches
    batcher: MicroBatcher
    metrics: Metrics
    admission: Admission
    image_sets: ImageSets
    scorer: Scorer
    metering: Metering
    vocabulary: Vocabulary


def _model_info(loaded: LoadedModel, settings: ServerSettings, visual: PromptedImageEncoder | None) -> ModelInfo:
    return ModelInfo(
        name=loaded.name,
        pretrained=loaded.pretrained,
        embed_dim=loaded.embed_dim,
        width=loaded.width,
        context_length=loaded.context_length,
        logit_scale=loaded.logit_scale,
        device=str(loaded.device),
        precision=loaded.precision,
        limits=Limits(**settings.model_dump(include=set(Limits.model_fields))),
        request_encodings=list(ENCODINGS),
        visual_width=None if visual is None else visual.width,
        visual_prompts=visual is not None,
    )


def build_services(settings: ServerSettings, loaded: LoadedModel | None = None) -> Services:
    api_keys = configured_keys(
        None if settings.api_keys is None else settings.api_keys.get_secret_value(), settings.api_keys_file
    )
    # before the model, so that a bad key or ledger setting fails fast
    ledger = open_ledger(settings.ledger, settings.ledger_synchronous)
    loaded = loaded or load_model(settings)
    chunk = settings.text_chunk_tokens or (65_536 if loaded.device.type == "cuda" else 4096)
    encoder = PromptedTextEncoder(loaded, chunk, settings.suffix_cache_size)
    refusal = visual_refusal(loaded.model, settings.max_visual_tokens)
    visual = None if refusal is not None else PromptedImageEncoder(loaded.model, settings.visual_chunk_tokens)
    feature_url = settings.feature_store_url()
    shared = None if feature_url is None else SharedFeatureStore(feature_url)
    store = ImageSetStore(
        loaded, settings.max_image_sets, settings.max_image_pixels, settings.image_cache_dir, shared, visual
    )
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
    metrics = Metrics()
    batcher = MicroBatcher(
        encoder, loaded.logit_scale, executor, settings.batch_window_ms / 1000.0, settings.batch_max_candidates,
        on_batch=metrics.on_batch, visual=visual, merge=settings.batch_merge,
    )
    auth_on = settings.auth == "on"
    admission = Admission(
        ledger,
        Authenticator(ledger, api_keys) if auth_on else None,
        TokenBucket(settings.rate_limit_rps, settings.rate_limit_burst) if auth_on else None,
        settings.idempotency_window_s,
    )
    image_sets = ImageSets(
        store, ledger, executor, settings.max_images_per_set, settings.max_visual_images_per_set, refusal
    )
    limits = ScoringLimits(
        settings.max_candidates, settings.max_classes, settings.max_images_per_request, settings.max_logit_elements,
        loaded.width, loaded.context_length, settings.max_visual_tokens, settings.max_image_forwards_per_request,
        None if visual is None else visual.width, refusal,
    )
    return Services(
        settings=settings,
        loaded=loaded,
        info=_model_info(loaded, settings, visual),
        ledger=ledger,
        encoder=encoder,
        store=store,
        executor=executor,
        batcher=batcher,
        metrics=metrics,
        admission=admission,
        image_sets=image_sets,
        scorer=Scorer(limits, encoder, image_sets, batcher),
        metering=Metering(ledger, settings.idempotency_window_s, metrics),
        vocabulary=Vocabulary(encoder, executor),
    )


def _part(of: Callable[[Services], T]) -> Any:
    """A dependency on one part of the app's services (async, so that FastAPI does not hop to its thread pool)."""

    async def part(request: Request) -> T:
        return of(request.app.state.services)

    return Depends(part)


AdmissionDep = Annotated[Admission, _part(lambda services: services.admission)]
ImageSetsDep = Annotated[ImageSets, _part(lambda services: services.image_sets)]
ScorerDep = Annotated[Scorer, _part(lambda services: services.scorer)]
MeteringDep = Annotated[Metering, _part(lambda services: services.metering)]
MetricsDep = Annotated[Metrics, _part(lambda services: services.metrics)]
ModelInfoDep = Annotated[ModelInfo, _part(lambda services: services.info)]
VocabularyDep = Annotated[Vocabulary, _part(lambda services: services.vocabulary)]
