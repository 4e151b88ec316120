"""The FastAPI app factory: a frozen CLIP behind /v1, its services built once and injected into the routers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from .body_limit import BodyLimitMiddleware
from .content_encoding import GzipRequestMiddleware
from .errors import install_error_handlers
from .metrics import ObserveMiddleware
from .model import LoadedModel
from .routes import image_sets, logits, metrics, model, usage
from .services import Services, build_services
from .settings import ServerSettings


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    services: Services = app.state.services
    services.batcher.start()
    yield
    await services.batcher.stop()
    services.ledger.close()
    if services.store.shared is not None:
        services.store.shared.close()


def create_app(settings: ServerSettings | None = None, loaded: LoadedModel | None = None) -> FastAPI:
    services = build_services(settings or ServerSettings(), loaded)
    app = FastAPI(
        title="SharpZO inference server",
        version="1",
        description="A frozen CLIP that scores soft text prompts: black-box prompt tuning as a service.",
        lifespan=_lifespan,
    )
    app.state.services = services
    app.add_middleware(GzipRequestMiddleware, max_bytes=services.settings.max_body_bytes)  # inside the raw limit
    app.add_middleware(BodyLimitMiddleware, max_bytes=services.settings.max_body_bytes)
    app.add_middleware(ObserveMiddleware, metrics=services.metrics)
    install_error_handlers(app)
    for routes in (model, image_sets, logits, usage, metrics):
        app.include_router(routes.router)
    return app
