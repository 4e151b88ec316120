"""ApiClient against a scripted transport: retries by error code, one gate per client, one serialisation."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx
import numpy as np
import pytest

from sharpzo.client.api import ApiClient, ApiRequestError, UsageMismatch, raise_first, should_retry
from sharpzo.shared.protocol import AccountUsage, Limits, LogitsRequest, LogitsResponse, ModelInfo, Usage
from sharpzo.shared.tensors import Tensor

LIMITS = Limits(max_candidates=2, max_classes=10, max_images_per_request=100, max_images_per_set=100,
                max_image_pixels=10**6, max_body_bytes=10**7)
MODEL = ModelInfo(name="scripted", pretrained=None, embed_dim=4, width=4, context_length=8, logit_scale=1.0,
                  device="cpu", precision="fp32", limits=LIMITS)
LABELS = np.array([0, 1, 0])


def client(handler: Callable[[httpx.Request], httpx.Response], **options: int) -> ApiClient:
    return ApiClient("http://scripted", transport=httpx.MockTransport(handler), backoff=0.0, max_backoff=0.0, **options)


def logits_answer(request: httpx.Request, image_evals: int | None = None) -> httpx.Response:
    body = LogitsRequest.model_validate_json(request.content)
    n = body.prompts.to_numpy().shape[0]
    usage = Usage(queries=n, image_evals=n * len(LABELS) if image_evals is None else image_evals, requests=1)
    answer = LogitsResponse(loss=[1.0] * n, accuracy=[0.5] * n, usage=usage)
    return httpx.Response(200, content=answer.model_dump_json(), headers={"Content-Type": "application/json"})


def error(status: int, code: str | None, retry_after: str | None = None) -> httpx.Response:
    body = {"detail": f"scripted {status}", **({"code": code} if code else {})}
    return httpx.Response(status, json=body, headers={"Retry-After": retry_after} if retry_after else {})


def scripted(*failures: httpx.Response) -> tuple[Callable[[httpx.Request], httpx.Response], list[httpx.Request]]:
    """A handler that answers /model, then fails the first /logits calls with ``failures``, then succeeds."""
    calls: list[httpx.Request] = []
    pending = list(failures)

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/model":
            return httpx.Response(200, content=MODEL.model_dump_json())
        calls.append(request)
        return pending.pop(0) if pending else logits_answer(request)

    return handle, calls


async def score(api: ApiClient, candidates: int = 1) -> None:
    async with api:
        await api.score("set", ["a", "b"], np.zeros((candidates, 2, 4)), labels=LABELS)


@pytest.mark.parametrize(("status", "code", "retried"), [
    (429, "quota_exhausted", False),
    (429, "rate_limited", True),
    (503, "unavailable", True),
    (422, "invalid_request", False),
    (404, "unknown_image_set", False),
    (500, None, True),
    (502, None, True),
    (429, None, True),  # an older server without codes: the status alone decides
    (400, None, False),
])
def test_retry_is_decided_by_the_error_code(status: int, code: str | None, retried: bool) -> None:
    assert should_retry(status, code) is retried
    handle, calls = scripted(error(status, code))
    if retried:
        asyncio.run(score(client(handle)))
        assert len(calls) == 2
    else:
        with pytest.raises(ApiRequestError) as raised:
            asyncio.run(score(client(handle)))
        assert (raised.value.status, raised.value.code, len(calls)) == (status, code, 1)


def test_quota_exhausted_is_not_retried_whatever_its_detail_says() -> None:
    response = httpx.Response(429, json={"detail": "rate: slow down", "code": "quota_exhausted"})
    handle, calls = scripted(response)
    with pytest.raises(ApiRequestError, match="slow down"):
        asyncio.run(score(client(handle)))
    assert len(calls) == 1


def test_retry_after_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    handle, calls = scripted(error(429, "rate_limited", "7"), error(503, "unavailable", "3"))
    asyncio.run(score(client(handle)))
    assert slept == [7.0, 3.0] and len(calls) == 3
    assert len({call.headers["Idempotency-Key"] for call in calls}) == 1  # a retry is the same request


def test_transport_errors_are_retried_then_reported() -> None:
    calls: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/model":
            return httpx.Response(200, content=MODEL.model_dump_json())
        calls.append(request)
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(ApiRequestError, match="failed after 3 attempts; last error: ConnectError") as raised:
        asyncio.run(score(client(handle, retries=2)))
    assert raised.value.status is None and len(calls) == 3


def test_concurrency_is_per_client_not_per_call() -> None:
    in_flight, peak = 0, 0
    full = asyncio.Event()  # made inside the test's event loop below, on first use

    async def handle(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        if request.url.path == "/v1/model":
            return httpx.Response(200, content=MODEL.model_dump_json())
        in_flight += 1
        peak = max(peak, in_flight)
        if in_flight == 3:
            full.set()
        await asyncio.wait_for(full.wait(), 30)  # the first requests are held until the gate has let three in
        in_flight -= 1
        return logits_answer(request)

    async def main() -> None:
        async with ApiClient("http://scripted", transport=httpx.MockTransport(handle), concurrency=3) as api:
            prompts = np.zeros((8, 2, 4))  # 4 requests of 2 candidates per call
            await asyncio.gather(*(api.score("set", ["a", "b"], prompts, labels=LABELS) for _ in range(4)))

    asyncio.run(main())
    assert peak == 3


def test_a_request_is_serialised_once_as_its_json() -> None:
    handle, calls = scripted()
    prompts = np.arange(16, dtype=np.float32).reshape(2, 2, 4)
    asyncio.run(score_prompts(client(handle), prompts))
    sent = calls[0]
    assert sent.headers["Content-Type"] == "application/json"
    expected = LogitsRequest(image_set="set", class_names=["a", "b"], prompts=Tensor.from_numpy(prompts),
                             labels=[0, 1, 0], return_logits=False)
    assert sent.content == expected.model_dump_json(exclude_defaults=True).encode()
    body = json.loads(sent.content)
    assert body["prompts"]["shape"] == [2, 2, 4]
    assert "visual_prompts" not in body  # a server older than visual prompts still takes a text request
    assert LogitsRequest.model_validate(body) == expected


async def score_prompts(api: ApiClient, prompts: np.ndarray) -> None:
    async with api:
        await api.score("set", ["a", "b"], prompts, labels=LABELS)


def test_each_charge_is_checked_and_reported_as_it_arrives() -> None:
    handle, _ = scripted()
    charges: list[Usage] = []

    async def main() -> None:
        async with client(handle) as api:
            await api.score("set", ["a", "b"], np.zeros((3, 2, 4)), labels=LABELS, on_charge=charges.append)

    asyncio.run(main())
    assert charges == [Usage(queries=2, image_evals=6, requests=1), Usage(queries=1, image_evals=3, requests=1)]

    def overcharging(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/model":
            return httpx.Response(200, content=MODEL.model_dump_json())
        return logits_answer(request, image_evals=999)

    with pytest.raises(UsageMismatch):
        asyncio.run(score(client(overcharging)))


@pytest.mark.parametrize("failure", [None, error(422, "invalid_request")])
def test_on_written_is_called_once_per_call_whatever_its_parts_and_its_end(failure: httpx.Response | None) -> None:
    """A transport without httpcore's trace events (this one) never reports a body written: each part counts as
    written when it ends, and the call's ``on_written`` fires once, after the last part."""
    handle, calls = scripted(*([] if failure is None else [failure]))
    written: list[int] = []

    async def main() -> None:
        async with client(handle) as api:
            await api.score("set", ["a", "b"], np.zeros((3, 2, 4)), labels=LABELS,
                            on_written=lambda: written.append(len(calls)))

    if failure is None:
        asyncio.run(main())
    else:
        with pytest.raises(ApiRequestError):
            asyncio.run(main())
    assert written == [2]  # the 3 candidates in requests of 2 and 1, both sent before it fired


def test_usage_is_an_account_usage() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"queries": 7, "image_evals": 21, "requests": 3, "quota": 10})

    async def main() -> AccountUsage:
        async with client(handle) as api:
            return await api.usage()

    usage = asyncio.run(main())
    assert isinstance(usage, AccountUsage) and usage.remaining == 3 and usage + Usage(queries=1) == Usage(
        queries=8, image_evals=21, requests=3)


def test_requests_sent_together_report_the_first_failure_in_argument_order_once_all_settle() -> None:
    finished: list[str] = []

    async def request(name: str, seconds: float, fails: bool) -> str:
        await asyncio.sleep(seconds)
        finished.append(name)
        if fails:
            raise ApiRequestError(404, f"{name} failed")
        return name

    async def together() -> list[str]:
        return raise_first(await asyncio.gather(
            request("model", 0.02, True), request("lookup", 0.0, True), request("tokens", 0.04, False),
            return_exceptions=True,
        ))

    with pytest.raises(ApiRequestError, match="model failed"):  # not the lookup's, though it failed first
        asyncio.run(together())
    assert sorted(finished) == ["lookup", "model", "tokens"]  # nothing left running
    assert raise_first(["a", "b"]) == ["a", "b"]
