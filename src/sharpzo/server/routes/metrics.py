"""Prometheus metrics, outside /v1 and open like health."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from ..services import ServicesDep

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(services: ServicesDep) -> Response:
    return services.metrics.exposition()
