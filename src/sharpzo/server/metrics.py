"""Prometheus metrics (a registry per app) and the access log: one JSON line per request."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sharpzo.shared.protocol import SERVER_TIMING_HEADER, Usage

from .batcher import BatchStats
from .observation import Observation, begin_observation

ACCESS_LOG = logging.getLogger("sharpzo.access")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_POWERS_OF_TWO = tuple(float(2**k) for k in range(14))


class StageTimes:
    """Seconds per named stage of one request: its Server-Timing header and the stage histogram."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    @contextmanager
    def time(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - started)

    def header(self) -> str:
        return ", ".join(f"{stage};dur={seconds * 1000.0:.3f}" for stage, seconds in self.seconds.items())


def configure_access_log(enabled: bool) -> None:
    """Access lines go to stderr as bare JSON, whatever format and level the rest of the logging has."""
    ACCESS_LOG.propagate = False
    ACCESS_LOG.handlers.clear()
    if enabled:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        ACCESS_LOG.addHandler(handler)
        ACCESS_LOG.setLevel(logging.INFO)
    else:
        ACCESS_LOG.setLevel(logging.CRITICAL + 1)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sharpzo_http_requests", "HTTP requests by route and status.", ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sharpzo_http_request_duration_seconds", "Time from request to the end of the response.",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.queries = Counter(
            "sharpzo_queries", "Queries (prompt candidates) charged, by key.", ["key"], registry=self.registry
        )
        self.image_evals = Counter(
            "sharpzo_image_evals", "Candidate x image evaluations charged, by key.", ["key"], registry=self.registry
        )
        self.image_forwards = Counter(
            "sharpzo_image_forwards", "Image-tower forwards for visual prompts charged, by key.", ["key"],
            registry=self.registry,
        )
        self.batch_candidates = Histogram(
            "sharpzo_batch_candidates", "Candidates per model batch of the micro-batcher.", buckets=_POWERS_OF_TWO,
            registry=self.registry,
        )
        self.batch_requests = Histogram(
            "sharpzo_batch_requests", "Requests merged into one model batch.", buckets=_POWERS_OF_TWO[:8],
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "sharpzo_queue_wait_seconds", "Time a scoring request waited for its model batch to start.",
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "sharpzo_batch_seconds", "Model time per batch.", buckets=_LATENCY_BUCKETS, registry=self.registry
        )
        self.stage_seconds = Histogram(
            "sharpzo_logits_stage_seconds",
            "Server time of a charged /v1/logits request by stage: accept (receive, parse, authenticate, the usage and "
            "replay lookups), validate, queue, model, encode (the response), ledger (the commit).",
            ["stage"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )

    def charged(self, key: str, usage: Usage) -> None:
        self.queries.labels(key).inc(usage.queries)
        self.image_evals.labels(key).inc(usage.image_evals)
        self.image_forwards.labels(key).inc(usage.image_forwards)

    def on_stages(self, stages: StageTimes) -> None:
        for stage, seconds in stages.seconds.items():
            self.stage_seconds.labels(stage).observe(seconds)

    def on_batch(self, stats: BatchStats) -> None:
        self.batch_candidates.observe(stats.candidates)
        self.batch_requests.observe(stats.jobs)
        self.batch_seconds.observe(stats.seconds)
        for wait in stats.queue_wait_s:
            self.queue_wait.observe(wait)

    def exposition(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class ObserveMiddleware:
    """Counts and times every request, adds its total time to Server-Timing ("app"), and writes its access-log line."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seen = begin_observation()
        status = 500  # what the client gets if the app raises before it answers

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                app_ms = (time.perf_counter() - seen.started) * 1000.0
                MutableHeaders(scope=message).append(SERVER_TIMING_HEADER, f"app;dur={app_ms:.3f}")
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            self._record(scope, seen, status, time.perf_counter() - seen.started)

    def _record(self, scope: Scope, seen: Observation, status: int, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", "unmatched")
        method = scope["method"]
        self.metrics.requests.labels(method, route, str(status)).inc()
        self.metrics.latency.labels(method, route).observe(seconds)
        ACCESS_LOG.info(
            json.dumps(
                {
                    "method": method,
                    "path": scope["path"],
                    "status": status,
                    "key": seen.key,
                    "queries": seen.queries,
                    "latency_ms": round(seconds * 1000.0, 2),
                }
            )
        )
