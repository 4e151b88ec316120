"""The async HTTP client of the inference API, and the check of what the server charged.

One ``httpx.AsyncClient`` (one connection pool) and one concurrency gate per ``ApiClient``.
A population is split into requests of at most the server's ``max_candidates`` that run
concurrently; every POST carries an Idempotency-Key that stays the same across its retries,
so a server that deduplicates charges a retried request once. Whether to retry is decided
by the error body's machine-readable ``code``; a connection dropped, reset or silent past the
read timeout is retried too (the key makes that safe). The query budget is not kept here: the
optimiser's loop checks it (``Optimizer.optimize``).

For a far-away server: bodies of ``COMPRESS_MIN_BYTES`` or more are sent gzip-compressed when
the server's ``/v1/model`` lists gzip among its ``request_encodings`` (about 0.76 of the bytes
of a soft-prompt body, losslessly); the timeouts are per phase (connect, then each read and
write), so a stalled connection is given up after ``timeout`` seconds of silence, not after a
whole request's worth; ``ca_bundle`` trusts a private CA (``SSL_CERT_FILE`` works too).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import random
import ssl
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
from pydantic import BaseModel

from sharpzo.shared.protocol import (
    API_PREFIX,
    IDEMPOTENCY_HEADER,
    SERVER_TIMING_HEADER,
    AccountUsage,
    ErrorCode,
    ImageSetConcatRequest,
    ImageSetInfo,
    ImageSetRequest,
    LogitsRequest,
    LogitsResponse,
    ModelInfo,
    TokenEmbeddingsRequest,
    TokenEmbeddingsResponse,
    Usage,
)
from sharpzo.shared.tensors import Tensor

from .latency import Exchange, server_seconds

T = TypeVar("T")

# Waiting helps these; an exhausted quota (and every other 4xx) does not refill by waiting.
RETRIED_CODES: frozenset[ErrorCode] = frozenset({"rate_limited", "unavailable"})
_JSON = {"Content-Type": "application/json"}
COMPRESS_MIN_BYTES = 4096
_SECONDS = "sharpzo.seconds"  # a response's extension: the client's round trip of the attempt that got it
# A server never reached (refused, unknown host) is more likely a wrong URL than a restart: give up sooner.
FIRST_CONTACT_ATTEMPTS = 3


class ApiRequestError(RuntimeError):
    """The server refused a request (4xx), or it kept failing after every retry (``status`` None)."""

    def __init__(self, status: int | None, detail: str, code: str | None = None) -> None:
        super().__init__(f"HTTP {status}: {detail}" if status else detail)
        self.status = status
        self.detail = detail
        self.code = code


class UsageMismatch(RuntimeError):
    """The server charged something other than what the client sent."""


def should_retry(status: int, code: str | None) -> bool:
    """Retry by the error's ``code``; a body without one (an older server, a proxy) is judged by status alone."""
    if code is not None and status < 500:
        return code in RETRIED_CODES
    return status >= 500 or status == 429


def check_usage(charged: Usage, candidates: int, images: int | None, visual: int = 0) -> None:
    """One request of ``candidates`` prompts, ``visual`` visual prompts among them, on ``images`` images (None: not
    known here) must cost exactly that: each visual prompt runs the image tower once per image."""
    evals = charged.image_evals if images is None else candidates * images
    forwards = charged.image_forwards if images is None else visual * images
    expected = Usage(queries=candidates, image_evals=evals, requests=1, image_forwards=forwards)
    if charged != expected:
        raise UsageMismatch(f"the server charged {charged!r} for a request the client counts as {expected!r}")


@dataclass(frozen=True)
class Scored:
    loss: np.ndarray | None  # [P]
    accuracy: np.ndarray | None  # [P]
    logits: np.ndarray | None  # [P, N, C]


def raise_first(results: Sequence[T | BaseException]) -> list[T]:
    """The results of ``asyncio.gather(..., return_exceptions=True)``, or the first failure among them in argument
    order: requests sent together all settle before one error is reported, so none is left unretrieved."""
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return list(results)  # type: ignore[arg-type]


class _Written:
    """Calls ``callback`` once: at httpcore's trace event for a request body written out, or when called."""

    def __init__(self, callback: Callable[[], None] | None) -> None:
        self.callback = callback

    async def trace(self, event: str, info: dict[str, Any]) -> None:
        if event.endswith(".send_request_body.complete"):
            self()

    def __call__(self) -> None:
        callback, self.callback = self.callback, None
        if callback is not None:
            callback()


class ApiClient:
    """``async with ApiClient(url, api_key=...) as api: ...``; at most ``concurrency`` requests in flight."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 120.0,
        concurrency: int = 4,
        retries: int = 6,
        backoff: float = 0.5,
        max_backoff: float = 20.0,
        request_candidates: int | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        ca_bundle: str | None = None,
        compress: bool = True,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=headers,
            # per phase: a connection silent for ``timeout`` seconds is given up (and retried), however long the run
            timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0)),
            limits=httpx.Limits(max_connections=max(concurrency, 1) + 2),
            transport=transport,  # None: the network; tests pass an httpx.MockTransport
            verify=True if ca_bundle is None else _trusting(ca_bundle),
        )
        self.compress = compress
        self._reached = False  # some request got an HTTP answer
        self.exchanges: deque[Exchange] = deque(maxlen=256)  # the latest scoring requests, timed (latency.py)
        self.base_url = base_url.rstrip("/")
        self.concurrency = concurrency
        self._gate = asyncio.Semaphore(max(concurrency, 1))
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.request_candidates = request_candidates
        self._model: ModelInfo | None = None
        self._jitter = random.Random()

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _encode(self, body: BaseModel) -> tuple[bytes, dict[str, str]]:
        # fields at their defaults are left out: the server fills in the same, and a server older than a field
        # (visual_prompts, visual) still takes a body that does not use it
        content = body.model_dump_json(exclude_defaults=True).encode()
        big = self.compress and len(content) >= COMPRESS_MIN_BYTES
        if big and "gzip" in (await self.model_info()).request_encodings:
            return gzip.compress(content, 1, mtime=0), {**_JSON, "Content-Encoding": "gzip"}
        return content, dict(_JSON)

    async def _send(
        self, method: str, path: str, body: BaseModel | None = None, on_written: Callable[[], None] | None = None
    ) -> httpx.Response:
        """``on_written`` is called once: when the request's body has been written to its connection (on its way to
        the server), or, if no attempt got that far, when the request ends."""
        written = _Written(on_written)
        try:
            return await self._attempts(method, path, body, {} if on_written is None else {"trace": written.trace})
        finally:
            written()

    async def _attempts(
        self, method: str, path: str, body: BaseModel | None, extensions: dict[str, Any]
    ) -> httpx.Response:
        # The body is serialised once, here, and sent as it is on every retry.
        content, headers = (None, {}) if body is None else await self._encode(body)
        if method == "POST":
            headers[IDEMPOTENCY_HEADER] = uuid.uuid4().hex
        last: str = ""
        for attempt in range(self.retries + 1):
            try:
                async with self._gate:
                    began = time.perf_counter()
                    response = await self._http.request(method, f"{API_PREFIX}{path}", content=content, headers=headers,
                                                        extensions=extensions)
                    response.extensions[_SECONDS] = time.perf_counter() - began
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
                delay = None
                if "CERTIFICATE_VERIFY_FAILED" in str(exc):  # waiting will not make the certificate trusted
                    raise ApiRequestError(None, f"the TLS certificate of {self.base_url} is not trusted ({exc}); for a "
                                                "private CA pass --ca-bundle PEM or set SSL_CERT_FILE") from None
                if not self._reached and isinstance(exc, httpx.ConnectError) and attempt + 1 >= FIRST_CONTACT_ATTEMPTS:
                    raise ApiRequestError(None, f"cannot reach the server at {self.base_url} ({last}); check the "
                                                "URL (--server) and that the server is running") from None
            else:
                self._reached = True
                if response.status_code < 400:
                    return response
                detail, code = _error(response)
                if not should_retry(response.status_code, code):
                    if code is None and response.status_code == 404:  # not a SharpZO error body
                        detail = (f"{self.base_url}{API_PREFIX}{path} does not exist there: is {self.base_url} the "
                                  "URL of a SharpZO server?")
                    raise ApiRequestError(response.status_code, detail, code)
                last = f"HTTP {response.status_code}: {detail}"
                delay = _retry_after(response)
            if attempt == self.retries:
                break
            wait = min(self.max_backoff, self.backoff * 2**attempt)
            await asyncio.sleep(delay if delay is not None else wait * (0.5 + self._jitter.random()))
        raise ApiRequestError(
            None,
            f"{method} {self.base_url}{API_PREFIX}{path} failed after {self.retries + 1} attempts; last error: {last}",
        )

    async def model_info(self) -> ModelInfo:
        if self._model is None:
            response = await self._send("GET", "/model")
            try:
                self._model = ModelInfo.model_validate_json(response.content)
            except ValueError:
                raise ApiRequestError(
                    response.status_code, f"{self.base_url}{API_PREFIX}/model did not answer a SharpZO model "
                    "description: is this the URL of a SharpZO server?",
                ) from None
        return self._model

    async def token_embeddings(self, text: str) -> np.ndarray:
        response = await self._send("POST", "/token-embeddings", TokenEmbeddingsRequest(text=text))
        return TokenEmbeddingsResponse.model_validate_json(response.content).embeddings.to_numpy()

    async def create_image_set(
        self, images: list[bytes], augment: bool = False, seed: int = 0, visual: bool = False
    ) -> ImageSetInfo:
        """``visual``: the server keeps the images' patch stems too, which visual prompts need."""
        encoded = [base64.b64encode(b).decode("ascii") for b in images]
        body = ImageSetRequest(images=encoded, augment=augment, seed=seed, visual=visual)
        response = await self._send("POST", "/image-sets", body)
        return ImageSetInfo.model_validate_json(response.content)

    async def concat_image_sets(self, parts: list[str]) -> ImageSetInfo:
        response = await self._send("POST", "/image-sets/concat", ImageSetConcatRequest(parts=parts))
        return ImageSetInfo.model_validate_json(response.content)

    async def image_set(self, set_id: str) -> ImageSetInfo | None:
        try:
            return ImageSetInfo.model_validate_json((await self._send("GET", f"/image-sets/{set_id}")).content)
        except ApiRequestError as exc:
            if exc.status == 404:
                return None
            raise

    async def usage(self) -> AccountUsage:
        """What the calling key has been charged in all, and its quota."""
        return AccountUsage.model_validate_json((await self._send("GET", "/usage")).content)

    async def score(
        self,
        image_set: str,
        class_names: list[str],
        prompts: np.ndarray,
        labels: np.ndarray | None = None,
        indices: list[int] | None = None,
        n_images: int | None = None,
        return_logits: bool = False,
        on_charge: Callable[[Usage], None] | None = None,
        visual_prompts: np.ndarray | None = None,
        on_written: Callable[[], None] | None = None,
    ) -> Scored:
        """Score P prompts [P, m, width] in requests of at most the server's ``max_candidates``.

        With ``visual_prompts`` [P, m_v, visual width] candidate p is text prompt p under visual prompt p, and either
        may be one prompt for all candidates; a request then also holds at most the server's
        ``max_image_forwards_per_request`` image forwards (P x N).
        Each response's usage is checked against its request and then passed to ``on_charge``,
        as it arrives, so a population that fails part-way still reports what was charged.
        ``on_written`` is called once, when every request's body is on its way (``_send``).
        """
        n_cand = max(len(prompts), 0 if visual_prompts is None else len(visual_prompts))
        limits = (await self.model_info()).limits
        limit = self.request_candidates or limits.max_candidates
        n_img = len(indices) if indices is not None else (len(labels) if labels is not None else n_images)
        if visual_prompts is not None:
            if n_img is None:
                raise ValueError("visual prompts need the number of images scored: give labels, indices or n_images")
            limit = min(limit, max(1, limits.max_image_forwards_per_request // n_img))
        label_list = None if labels is None else [int(y) for y in labels]

        def part(tensor: np.ndarray, start: int) -> np.ndarray:
            """A request's candidates of ``tensor``; one prompt for all goes whole to every request."""
            return tensor if len(tensor) == 1 < n_cand else tensor[start : start + limit]

        async def one(start: int) -> LogitsResponse:
            text = part(prompts, start)
            visual = None if visual_prompts is None else part(visual_prompts, start)
            body = LogitsRequest(
                image_set=image_set,
                class_names=class_names,
                prompts=Tensor.from_numpy(text),
                visual_prompts=None if visual is None else Tensor.from_numpy(visual),
                indices=indices,
                labels=label_list,
                return_logits=return_logits or labels is None,
            )
            answer = await self._send("POST", "/logits", body, None if on_written is None else part_written)
            response = LogitsResponse.model_validate_json(answer.content)
            candidates = max(len(text), 0 if visual is None else len(visual))
            check_usage(response.usage, candidates, n_img, 0 if visual is None else len(visual))
            self.exchanges.append(Exchange(answer.extensions[_SECONDS],
                                           server_seconds(answer.headers.get(SERVER_TIMING_HEADER)),
                                           response.usage.image_evals))
            if on_charge is not None:
                on_charge(response.usage)
            return response

        starts = range(0, n_cand, limit)
        unwritten = len(starts)

        def part_written() -> None:
            nonlocal unwritten
            unwritten -= 1
            if unwritten == 0 and on_written is not None:
                on_written()

        responses = await asyncio.gather(*(one(start) for start in starts))
        return Scored(
            loss=None if labels is None else np.concatenate([r.loss for r in responses]),
            accuracy=None if labels is None else np.concatenate([r.accuracy for r in responses]),
            logits=None if responses[0].logits is None
            else np.concatenate([r.logits.to_numpy() for r in responses if r.logits is not None]),
        )


def _trusting(ca_bundle: str) -> ssl.SSLContext:
    """TLS that trusts the certificates of ``ca_bundle`` (a PEM file or a folder of them), e.g. a private CA."""
    try:
        if Path(ca_bundle).is_dir():
            return ssl.create_default_context(capath=ca_bundle)
        return ssl.create_default_context(cafile=ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"--ca-bundle {ca_bundle}: not a readable PEM bundle ({exc})") from None


def _error(response: httpx.Response) -> tuple[str, str | None]:
    """The error body's ``detail`` and ``code`` (None when the body has none, as from an older server)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500], None
    if not isinstance(body, dict):
        return response.text[:500], None
    detail = body.get("detail")
    code = body.get("code")
    return (str(detail) if detail is not None else response.text[:500]), (code if isinstance(code, str) else None)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return min(float(value), 60.0) if value is not None else None
    except ValueError:
        return None
