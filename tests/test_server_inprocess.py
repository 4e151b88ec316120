"""The app in process (create_app with settings, as a deployment calls it): a ledger outage is a 503 the client may
retry, never a 500; ``sharpzo serve`` flags become settings without touching the environment."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import fastapi.dependencies.utils
import numpy as np
import pytest
from fastapi.testclient import TestClient

from sharpzo.server.__main__ import parse_args, settings_from
from sharpzo.server.app import create_app
from sharpzo.server.ledger import LedgerUnavailable
from sharpzo.server.metering import REPLAYED_HEADER
from sharpzo.server.settings import ServerSettings
from sharpzo.shared.protocol import IDEMPOTENCY_HEADER
from sharpzo.shared.tensors import Tensor

from .conftest import TINY, b64, encoded_image


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = ServerSettings(**TINY, auth="off", ledger=str(tmp_path_factory.mktemp("inprocess") / "ledger.sqlite3"))
    with TestClient(create_app(settings)) as client:
        yield client


def _ledger_down(*args: object) -> None:
    raise LedgerUnavailable("connection refused")


def test_a_ledger_outage_is_a_503_with_retry_after(http: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    set_id = http.post("/v1/image-sets", json={"images": [b64(encoded_image(1))]}).json()["id"]
    prompts = Tensor.from_numpy(np.zeros((2, 2, 32), np.float32)).model_dump()
    body = {"image_set": set_id, "class_names": ["cat", "dog"], "prompts": prompts}
    assert http.post("/v1/logits", json=body).status_code == 200
    ledger = http.app.state.services.ledger
    monkeypatch.setattr(ledger, "commit", _ledger_down)  # down at the charge
    answers = [http.post("/v1/logits", json=body)]
    monkeypatch.setattr(ledger, "totals", _ledger_down)  # down already at the usage lookup
    answers += [http.post("/v1/logits", json=body), http.get("/v1/usage")]
    for response in answers:
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "unavailable" and response.json()["detail"].startswith("ledger:")
        assert int(response.headers["Retry-After"]) > 0


def test_the_scoring_path_resolves_its_dependencies_without_thread_hops(
    http: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FastAPI runs a plain-function dependency in its thread pool: a thread hop on every request of the hot path
    (two of them cost 0.2 ms of a 14 ms step: BENCHMARKS.md "Step latency")."""
    hops: list[str] = []
    pooled = fastapi.dependencies.utils.run_in_threadpool

    async def counted(call: object, *args: object, **kwargs: object) -> object:
        hops.append(getattr(call, "__name__", repr(call)))
        return await pooled(call, *args, **kwargs)

    monkeypatch.setattr(fastapi.dependencies.utils, "run_in_threadpool", counted)
    set_id = http.post("/v1/image-sets", json={"images": [b64(encoded_image(2))]}).json()["id"]
    prompts = Tensor.from_numpy(np.zeros((2, 2, 32), np.float32)).model_dump()
    body = {"image_set": set_id, "class_names": ["cat", "dog"], "prompts": prompts, "labels": [0]}
    answer = http.post("/v1/logits", json=body, headers={IDEMPOTENCY_HEADER: "hops-1"})
    assert answer.status_code == 200, answer.text
    assert hops == []


def test_a_scoring_request_reads_the_ledger_in_one_thread_hop(
    http: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before its work a scoring request reads its usage and looks up its idempotency key's response; in one hop, not
    two (a thread hop is about 0.15 ms here). The commit is the other hop; the model runs on its own thread."""
    set_id = http.post("/v1/image-sets", json={"images": [b64(encoded_image(3))]}).json()["id"]
    hops: list[str] = []
    threaded = asyncio.to_thread

    async def counted(call: Callable[..., object], *args: object, **kwargs: object) -> object:
        hops.append(call.__name__)
        return await threaded(call, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", counted)
    prompts = Tensor.from_numpy(np.zeros((2, 2, 32), np.float32)).model_dump()
    body = {"image_set": set_id, "class_names": ["cat", "dog"], "prompts": prompts, "labels": [0]}
    first = http.post("/v1/logits", json=body, headers={IDEMPOTENCY_HEADER: "one-hop-1"})
    assert first.status_code == 200, first.text
    assert hops == ["_arrival", "commit"]
    hops.clear()
    retried = http.post("/v1/logits", json=body, headers={IDEMPOTENCY_HEADER: "one-hop-1"})
    assert retried.content == first.content and retried.headers[REPLAYED_HEADER] == "true"
    assert hops == ["_arrival"]


def test_health_answers_while_the_model_thread_is_busy(http: TestClient) -> None:
    """A batch holds the model thread: health is answered on the event loop meanwhile, not after the batch."""
    busy, release = threading.Event(), threading.Event()

    def batch() -> None:
        busy.set()
        release.wait(30)  # bounded, so that a health route that waits for the model thread fails, not hangs

    held = http.app.state.services.executor.submit(batch)
    try:
        assert busy.wait(30)
        assert http.get("/v1/health").status_code == 200
        assert not held.done(), "health was answered only once the model thread was free"
    finally:
        release.set()
    held.result(30)


def test_serve_flags_override_settings_without_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHARPZO_MAX_CLASSES", "9")
    environment = dict(os.environ)
    args = parse_args(["--max-candidates", "7", "--auth", "off", "--ledger", str(tmp_path / "l.sqlite3")])
    settings = settings_from(args)
    assert (settings.max_candidates, settings.auth, settings.ledger) == (7, "off", str(tmp_path / "l.sqlite3"))
    assert settings.max_classes == 9  # the environment still counts where no flag is given
    assert dict(os.environ) == environment


def test_serve_flag_help_is_the_settings_description(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in ("max_candidates", "ledger", "auth"):
        assert " ".join(ServerSettings.model_fields[name].description.split()) in text
