"""The async HTTP client of the inference API, and the query budget it enforces.

One ``httpx.AsyncClient`` (one connection pool) per ``ApiClient``. A population is split
into requests of at most the server's ``max_candidates`` that run concurrently; every
POST carries an Idempotency-Key that stays the same across its retries, so a server that
deduplicates charges a retried request once.
"""

from __future__ import annotations

import asyncio
import base64
import random
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Literal

import httpx
import numpy as np

from sharpzo.shared.protocol import (
    API_PREFIX,
    IDEMPOTENCY_HEADER,
    ImageSetConcatRequest,
    ImageSetInfo,
    ImageSetRequest,
    LogitsRequest,
    LogitsResponse,
    ModelInfo,
    TokenEmbeddingsRequest,
    TokenEmbeddingsResponse,
)
from sharpzo.shared.tensors import Tensor

Charge = Literal["budget", "monitor"]
_RETRY_STATUS = {429, 500, 502, 503, 504}


class ApiError(RuntimeError):
    """The server refused a request (4xx) or kept failing after every retry."""

    def __init__(self, status: int | None, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}" if status else detail)
        self.status = status
        self.detail = detail


class BudgetExhausted(RuntimeError):
    """The next batch of queries does not fit in what is left of the budget; nothing was sent."""


class UsageMismatch(RuntimeError):
    """The server charged something other than what the client counted."""


@dataclass
class Budget:
    """Queries, image-evals and requests spent. ``max_queries`` caps the ``budget`` line only.

    ``monitor_queries`` are evaluations made for reporting (test-accuracy curves), not by the
    method; the server charges them too, so ``total_queries`` is what it should report.
    """

    max_queries: int | None = None
    queries: int = 0
    monitor_queries: int = 0
    image_evals: int = 0
    requests: int = 0

    @property
    def remaining(self) -> int | None:
        return None if self.max_queries is None else self.max_queries - self.queries

    @property
    def total_queries(self) -> int:
        return self.queries + self.monitor_queries

    def check(self, n: int) -> None:
        if self.max_queries is not None and self.queries + n > self.max_queries:
            raise BudgetExhausted(
                f"{n} more queries would exceed the budget: {self.queries} of {self.max_queries} used"
            )

    def record(self, charge: Charge, queries: int, image_evals: int) -> None:
        if charge == "budget":
            self.queries += queries
        else:
            self.monitor_queries += queries
        self.image_evals += image_evals
        self.requests += 1

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_queries": self.total_queries}


@dataclass(frozen=True)
class Scored:
    loss: np.ndarray | None  # [P]
    accuracy: np.ndarray | None  # [P]
    logits: np.ndarray | None  # [P, N, C]


class ApiClient:
    """``async with ApiClient(url, api_key=...) as api: ...``"""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        budget: Budget | None = None,
        timeout: float = 300.0,
        concurrency: int = 4,
        retries: int = 6,
        backoff: float = 0.5,
        max_backoff: float = 20.0,
        request_candidates: int | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_connections=max(concurrency, 1) + 2),
        )
        self.base_url = base_url.rstrip("/")
        self.budget = budget or Budget()
        self.concurrency = concurrency
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.request_candidates = request_candidates
        self._model: ModelInfo | None = None
        self._jitter = random.Random()

    async def __aenter__(self) -> "ApiClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        headers = {IDEMPOTENCY_HEADER: uuid.uuid4().hex} if method == "POST" else {}
        last: str = ""
        for attempt in range(self.retries + 1):
            try:
                response = await self._http.request(method, f"{API_PREFIX}{path}", json=body, headers=headers)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
                delay = None
            else:
                if response.status_code < 400:
                    return response
                detail = _detail(response)
                # an exhausted quota does not refill by waiting; a rate limit does
                if response.status_code not in _RETRY_STATUS or detail.startswith("quota"):
                    raise ApiError(response.status_code, detail)
                last = f"HTTP {response.status_code}: {detail}"
                delay = _retry_after(response)
            if attempt == self.retries:
                break
            wait = min(self.max_backoff, self.backoff * 2**attempt)
            await asyncio.sleep(delay if delay is not None else wait * (0.5 + self._jitter.random()))
        raise ApiError(None, f"{method} {path} failed after {self.retries + 1} attempts; last error: {last}")

    async def model_info(self) -> ModelInfo:
        if self._model is None:
            self._model = ModelInfo.model_validate((await self._send("GET", "/model")).json())
        return self._model

    async def token_embeddings(self, text: str) -> np.ndarray:
        body = TokenEmbeddingsRequest(text=text).model_dump()
        response = TokenEmbeddingsResponse.model_validate((await self._send("POST", "/token-embeddings", body)).json())
        return response.embeddings.to_numpy()

    async def create_image_set(self, images: list[bytes], augment: bool = False, seed: int = 0) -> ImageSetInfo:
        encoded = [base64.b64encode(b).decode("ascii") for b in images]
        body = ImageSetRequest(images=encoded, augment=augment, seed=seed).model_dump()
        return ImageSetInfo.model_validate((await self._send("POST", "/image-sets", body)).json())

    async def concat_image_sets(self, parts: list[str]) -> ImageSetInfo:
        body = ImageSetConcatRequest(parts=parts).model_dump()
        return ImageSetInfo.model_validate((await self._send("POST", "/image-sets/concat", body)).json())

    async def image_set(self, set_id: str) -> ImageSetInfo | None:
        try:
            return ImageSetInfo.model_validate((await self._send("GET", f"/image-sets/{set_id}")).json())
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def usage(self) -> dict[str, Any]:
        return (await self._send("GET", "/usage")).json()

    async def score(
        self,
        image_set: str,
        class_names: list[str],
        prompts: np.ndarray,
        labels: np.ndarray | None = None,
        indices: list[int] | None = None,
        n_images: int | None = None,
        charge: Charge = "budget",
        return_logits: bool = False,
    ) -> Scored:
        """Score P prompts [P, m, width]; the whole population is checked against the budget first."""
        n_cand = int(prompts.shape[0])
        if charge == "budget":
            self.budget.check(n_cand)
        limit = self.request_candidates or (await self.model_info()).limits.max_candidates
        gate = asyncio.Semaphore(self.concurrency)
        n_img = len(indices) if indices is not None else (len(labels) if labels is not None else n_images)

        async def one(chunk: np.ndarray) -> LogitsResponse:
            body = LogitsRequest(
                image_set=image_set,
                class_names=class_names,
                prompts=Tensor.from_numpy(chunk),
                indices=indices,
                labels=None if labels is None else [int(y) for y in labels],
                return_logits=return_logits or labels is None,
            ).model_dump()
            async with gate:
                response = LogitsResponse.model_validate((await self._send("POST", "/logits", body)).json())
            expected = (len(chunk), None if n_img is None else len(chunk) * n_img, 1)
            got = (response.usage.queries, response.usage.image_evals, response.usage.requests)
            if got[0] != expected[0] or got[2] != 1 or (expected[1] is not None and got[1] != expected[1]):
                raise UsageMismatch(f"the server charged {response.usage} for a request the client counts as {expected}")
            self.budget.record(charge, response.usage.queries, response.usage.image_evals)
            return response

        chunks = [prompts[i : i + limit] for i in range(0, n_cand, limit)]
        responses = await asyncio.gather(*(one(c) for c in chunks))
        return Scored(
            loss=None if labels is None else np.concatenate([r.loss for r in responses]),
            accuracy=None if labels is None else np.concatenate([r.accuracy for r in responses]),
            logits=(np.concatenate([r.logits.to_numpy() for r in responses]) if responses[0].logits is not None else None),
        )


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
        return str(detail) if detail is not None else response.text[:500]
    except ValueError:
        return response.text[:500]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return min(float(value), 60.0) if value is not None else None
    except ValueError:
        return None
