"""The FastAPI app factory: a frozen CLIP behind /v1, settings injected."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import AsyncIterator

import numpy as np
import torch
from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response

from sharpzo.shared.protocol import (
    API_PREFIX,
    AccountUsage,
    Health,
    ImageSetConcatRequest,
    ImageSetInfo,
    ImageSetRequest,
    Limits,
    LogitsRequest,
    LogitsResponse,
    ModelInfo,
    TokenEmbeddingsRequest,
    TokenEmbeddingsResponse,
    Usage,
)
from sharpzo.shared.tensors import Tensor

from .auth import Account, Authenticator, TokenBucket, anonymous_dependency, bearer_dependency
from .batcher import LogitsJob, MicroBatcher
from .body_limit import BodyLimitMiddleware
from .errors import ERROR_RESPONSES, ApiError, install_error_handlers
from .idempotency import IdempotencyKey
from .images import ImageError, ImageSet, ImageSetStore, concat_set_id, image_set_id
from .keys import configured_keys
from .ledger import Charge, Ledger
from .metering import MeteredCall, UsageHeadersMiddleware
from .metrics import Metrics, ObserveMiddleware
from .model import LoadedModel, load_model
from .settings import ServerSettings
from .text import PromptError, PromptedTextEncoder


def _model_info(loaded: LoadedModel, settings: ServerSettings) -> ModelInfo:
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
    )


def _check_class_names(names: list[str], max_classes: int) -> None:
    if len(names) > max_classes:
        raise ApiError(422, f"class_names: {len(names)} classes is over the limit of {max_classes}")
    seen: dict[str, int] = {}
    for k, name in enumerate(names):
        if not name.strip():
            raise ApiError(422, f"class_names[{k}]: empty class name")
        if name in seen:
            raise ApiError(422, f"class_names[{k}]: {name!r} duplicates class_names[{seen[name]}]")
        seen[name] = k


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


def create_app(settings: ServerSettings | None = None, loaded: LoadedModel | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    api_keys = configured_keys(settings.api_keys and settings.api_keys.get_secret_value(), settings.api_keys_file)
    ledger = Ledger(settings.ledger, settings.ledger_synchronous)  # before the model, so that a bad key or ledger setting fails fast
    loaded = loaded or load_model(settings)
    chunk = settings.text_chunk_tokens or (65_536 if loaded.device.type == "cuda" else 4096)
    encoder = PromptedTextEncoder(loaded, chunk)
    store = ImageSetStore(loaded, settings.max_image_sets, settings.max_image_pixels, settings.image_cache_dir)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
    info = _model_info(loaded, settings)
    metrics = Metrics()
    if settings.auth == "on":
        limiter = TokenBucket(settings.rate_limit_rps, settings.rate_limit_burst)
        current_account = bearer_dependency(Authenticator(ledger, api_keys), limiter)
    else:
        current_account = anonymous_dependency(ledger)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.batcher = MicroBatcher(
            encoder,
            loaded.logit_scale,
            executor,
            settings.batch_window_ms / 1000.0,
            settings.batch_max_candidates,
            on_batch=metrics.on_batch,
        )
        app.state.batcher.start()
        yield
        await app.state.batcher.stop()
        ledger.close()

    app = FastAPI(
        title="SharpZO inference server",
        version="1",
        description="A frozen CLIP that scores soft text prompts: black-box prompt tuning as a service.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(UsageHeadersMiddleware)
    app.add_middleware(ObserveMiddleware, metrics=metrics)
    install_error_handlers(app)
    app.state.settings = settings
    app.state.loaded = loaded

    async def on_model_thread(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    async def metered(
        request: Request, idempotency_key: IdempotencyKey = None, account: Account = Depends(current_account)
    ) -> MeteredCall:
        return MeteredCall(request, account, idempotency_key, ledger, settings.idempotency_window_s)

    owners: dict[str, str] = {}  # set id -> account; an id is derived from its owner, so it never changes hands

    async def owned_image_set(set_id: str, account: Account) -> ImageSet:
        """Another account's image set is as unknown as a missing one."""
        owner = owners.get(set_id) or await asyncio.to_thread(ledger.image_set_owner, set_id)
        if owner is not None:
            owners[set_id] = owner
        # not on the model thread: a lookup must not wait behind a running batch
        image_set = None if owner != account.name else await asyncio.to_thread(store.get, set_id)
        if image_set is None:
            raise ApiError(404, f"image_set: no image set {set_id!r} on this server")
        return image_set

    @app.get(f"{API_PREFIX}/health", response_model=Health)
    async def health() -> Health:
        return Health(model=loaded.name)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return metrics.exposition()

    @app.get(
        f"{API_PREFIX}/model", response_model=ModelInfo, responses=ERROR_RESPONSES, dependencies=[Depends(current_account)]
    )
    async def model_info() -> ModelInfo:
        return info

    @app.get(
        f"{API_PREFIX}/usage", response_model=AccountUsage, responses=ERROR_RESPONSES, dependencies=[Depends(current_account)]
    )
    async def usage(request: Request) -> AccountUsage:
        totals = request.state.totals
        return AccountUsage(
            queries=totals.queries, image_evals=totals.image_evals, requests=totals.requests, quota=totals.quota
        )

    # Only /v1/logits is charged, so only it keeps responses for retries: the other POSTs are idempotent by content.
    @app.post(
        f"{API_PREFIX}/token-embeddings", response_model=TokenEmbeddingsResponse, responses=ERROR_RESPONSES,
        dependencies=[Depends(current_account)],
    )
    async def token_embeddings(body: TokenEmbeddingsRequest) -> TokenEmbeddingsResponse:
        def run() -> tuple[list[int], np.ndarray]:
            with torch.inference_mode():
                ids, emb = encoder.token_embeddings(body.text)
                return ids, emb.cpu().numpy()

        try:
            ids, emb = await on_model_thread(run)
        except PromptError as exc:
            raise ApiError(422, str(exc)) from exc
        return TokenEmbeddingsResponse(tokens=ids, embeddings=Tensor.from_numpy(emb))

    @app.post(f"{API_PREFIX}/image-sets", response_model=ImageSetInfo, responses=ERROR_RESPONSES)
    async def create_image_set(body: ImageSetRequest, account: Account = Depends(current_account)) -> ImageSetInfo:
        if len(body.images) > settings.max_images_per_set:
            raise ApiError(422, f"images: {len(body.images)} images is over the limit of {settings.max_images_per_set}")
        set_id = image_set_id(loaded, body.images, body.augment, body.seed, owner=account.name)
        try:
            image_set = await on_model_thread(store.create, set_id, body.images, body.augment, body.seed)
        except ImageError as exc:
            raise ApiError(422, str(exc)) from exc
        await asyncio.to_thread(ledger.own_image_set, image_set.id, account.name)
        return ImageSetInfo(id=image_set.id, count=image_set.count)

    @app.post(f"{API_PREFIX}/image-sets/concat", response_model=ImageSetInfo, responses=ERROR_RESPONSES)
    async def concat_image_sets(body: ImageSetConcatRequest, account: Account = Depends(current_account)) -> ImageSetInfo:
        parts = []
        for i, part_id in enumerate(body.parts):
            try:
                parts.append(await owned_image_set(part_id, account))
            except ApiError as exc:
                raise ApiError(exc.status, f"parts[{i}]: no image set {part_id!r} on this server") from exc
        total = sum(p.count for p in parts)
        if total > settings.max_images_per_set:
            raise ApiError(422, f"parts: {total} images in all is over the limit of {settings.max_images_per_set}")
        set_id = concat_set_id(body.parts, account.name)
        image_set = await on_model_thread(store.concat, set_id, parts)
        await asyncio.to_thread(ledger.own_image_set, image_set.id, account.name)
        return ImageSetInfo(id=image_set.id, count=image_set.count)

    @app.get(f"{API_PREFIX}/image-sets/{{set_id}}", response_model=ImageSetInfo, responses=ERROR_RESPONSES)
    async def get_image_set(set_id: str, account: Account = Depends(current_account)) -> ImageSetInfo:
        image_set = await owned_image_set(set_id, account)
        return ImageSetInfo(id=image_set.id, count=image_set.count)

    async def compute_logits(body: LogitsRequest, call: MeteredCall) -> tuple[LogitsResponse, Charge]:
        prompts = _decode_prompts(body, loaded, settings.max_candidates)
        _check_class_names(body.class_names, settings.max_classes)
        try:
            encoder.suffixes(body.class_names, prompts.shape[1])
        except PromptError as exc:
            raise ApiError(422, str(exc)) from exc
        image_set = await owned_image_set(body.image_set, call.account)
        features = image_set.features
        if body.indices is not None:
            bad = [i for i in body.indices if not 0 <= i < image_set.count]
            if bad:
                raise ApiError(422, f"indices: {bad[0]} is out of range for an image set of {image_set.count}")
            features = features[torch.tensor(body.indices, dtype=torch.long)]
        n_img, n_cls, n_cand = features.shape[0], len(body.class_names), prompts.shape[0]
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
        future = asyncio.get_running_loop().create_future()
        job = LogitsJob(prompts, tuple(body.class_names), features, labels, body.return_logits, future)
        try:
            scores = await app.state.batcher.submit(job)
        except PromptError as exc:
            raise ApiError(422, str(exc)) from exc
        usage = Usage(queries=n_cand, image_evals=n_cand * n_img, requests=1)
        response = LogitsResponse(
            logits=None if scores.logits is None else Tensor.from_numpy(scores.logits.cpu().numpy(), body.logits_dtype),
            loss=None if scores.loss is None else scores.loss.cpu().tolist(),
            accuracy=None if scores.accuracy is None else scores.accuracy.cpu().tolist(),
            usage=usage,
        )
        return response, Charge(usage.queries, usage.image_evals, usage.requests)

    @app.post(f"{API_PREFIX}/logits", response_model=LogitsResponse, responses=ERROR_RESPONSES)
    async def logits(body: LogitsRequest, call: MeteredCall = Depends(metered)) -> Response:
        return await call.respond(lambda: compute_logits(body, call))

    return app
