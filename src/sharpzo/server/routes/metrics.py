"""Prometheus metrics, outside /v1 and open like health."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from ..services import MetricsDep

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(metrics: MetricsDep) -> Response:
    return metrics.exposition()
