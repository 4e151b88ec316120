"""A far-away server, simulated on loopback: the delaying proxy itself, the same result through it and without it,
faults that must not charge twice, gzip bodies, TLS with a private CA, and one clear line for a wrong URL."""

from __future__ import annotations

import asyncio
import gzip
import http.server
import importlib
import json
import os
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from sharpzo.client.api import ApiClient, ApiRequestError
from sharpzo.client.embedded import EmbeddedServer, free_port
from sharpzo.client.runner import tune_async
from sharpzo.shared.protocol import LogitsRequest
from sharpzo.shared.tensors import Tensor

from .conftest import TINY, b64, encoded_image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from wan_proxy import Faults, WanProxy  # noqa: E402

SHARPZO = str(Path(sys.executable).parent / "sharpzo")
tune_module = importlib.import_module("sharpzo.client.tune")  # the package exports a function of that name
# zo-sgd with q = 4: every step is one request of 8 candidates, 3 steps in flight
RUN: dict[str, Any] = dict(shots=2, method="zo-sgd", budget=48, dim=8, seed=3, eval_every=16, progress=False,
                           options={"directions": 4, "pipeline": 3})


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture(scope="module")
def echo_port() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """A tiny-model server with its own ledger, so that usage deltas are this module's runs alone."""
    ledger = tmp_path_factory.mktemp("remote") / "ledger.sqlite3"
    with EmbeddedServer(**TINY, env={"SHARPZO_LEDGER": str(ledger), "SHARPZO_MAX_BODY_BYTES": "2000000"}) as started:
        yield started


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def exchange(port: int, payload: bytes) -> tuple[bytes, float]:
    """Send ``payload`` on a fresh connection and read as many bytes back; the bytes and the seconds it took."""
    import socket

    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(payload)
        back = b""
        while len(back) < len(payload):
            back += sock.recv(65536)
    return back, time.perf_counter() - started


def test_the_proxy_adds_the_round_trip_and_keeps_every_byte_in_order(echo_port: int) -> None:
    payload = np.random.default_rng(0).bytes(300_000)
    with WanProxy(echo_port, rtt_ms=80) as proxy:
        back, seconds = exchange(proxy.port, payload)
        assert back == payload
        assert proxy.traffic.up == proxy.traffic.down == len(payload)
    # a fresh connection: the handshake's round trip, then the data's, as over a real network
    assert seconds >= 0.16


def test_the_bandwidth_cap_spaces_the_bytes(echo_port: int) -> None:
    payload = b"x" * 200_000
    with WanProxy(echo_port, rtt_ms=0, mbit_per_s=8) as proxy:
        back, seconds = exchange(proxy.port, payload)
    assert back == payload
    # 200 KB at 1 MB/s; each direction has its own link, so the echo overlaps the upload
    assert seconds >= 0.2


def test_the_proxy_drops_and_stalls_as_told(server: EmbeddedServer) -> None:
    faults = Faults(drop_responses=1, stall_responses=1)
    with WanProxy(port_of(server.url), rtt_ms=10, faults=faults) as proxy, httpx.Client(base_url=proxy.url,
                                                                                      timeout=1.0) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            http.get("/v1/health")
        with pytest.raises(httpx.ReadTimeout):
            http.get("/v1/health")
        assert http.get("/v1/health", timeout=60).status_code == 200  # the 1 s was for the stall, not this one
        assert proxy.traffic.faults == {"drop_responses": 1, "stall_responses": 1}


async def tuned(server_url: str, out: Path, **extra: Any) -> tuple[np.ndarray, dict[str, Any]]:
    result = await tune_async("animals", server=server_url, out=out, **{**RUN, **extra})
    return result.w, result.summary()["budget"]


def usage(server: EmbeddedServer) -> dict[str, int]:
    body = httpx.get(f"{server.url}/v1/usage", timeout=30).json()
    return {name: body[name] for name in ("queries", "image_evals", "requests")}


def charged_between(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before[name] for name in before}


def client_count(spent: dict[str, Any]) -> dict[str, int]:
    return {"queries": spent["total_queries"], "image_evals": spent["image_evals"], "requests": spent["requests"]}


def test_the_same_run_through_a_wan_and_on_loopback_gives_the_same_prompt_bit_for_bit(
    server: EmbeddedServer, tmp_path: Path
) -> None:
    direct_w, direct_spent = asyncio.run(tuned(server.url, tmp_path / "direct"))
    with WanProxy(port_of(server.url), rtt_ms=40) as proxy:
        remote_w, remote_spent = asyncio.run(tuned(proxy.url, tmp_path / "remote"))
    assert remote_w.tobytes() == direct_w.tobytes()
    assert remote_spent == direct_spent
    losses = [[line.get("loss") for line in map(json.loads, (tmp_path / run / "log.jsonl").read_text().splitlines())]
              for run in ("direct", "remote")]
    assert losses[0] == losses[1]


@pytest.mark.parametrize("pipeline", [1, 4, 16])
def test_the_tune_loop_keeps_the_pipeline_in_flight(server: EmbeddedServer, tmp_path: Path, pipeline: int) -> None:
    """Scoring requests in flight at once, seen by the proxy: the zero-shot's val and test requests go together, and
    training's first ``pipeline`` steps go beside them instead of waiting for the zero-shot's round trip; more steps
    in flight than the default's 8 widen the client's gate unless --concurrency is given."""
    with WanProxy(port_of(server.url), rtt_ms=250) as proxy:  # long enough for all 18 to be out on a slow machine
        asyncio.run(tuned(proxy.url, tmp_path / "run", eval_every=0, options={"pipeline": pipeline}))
        assert proxy.traffic.most_open["POST /v1/logits"] == 2 + pipeline


def test_a_tells_checkpoint_is_written_once_the_asks_it_made_are_on_their_way(
    server: EmbeddedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log line and checkpoint of tell t come after the requests of steps up to t + pipeline have reached the
    network (seen by the proxy), so the client's bookkeeping does not hold the next request back."""
    pipeline, steps = RUN["options"]["pipeline"], RUN["budget"] // (2 * RUN["options"]["directions"])
    seen: list[tuple[int, int]] = []
    real_save = tune_module.save_checkpoint

    def save(path: Path, settings: dict[str, Any], state: Any) -> None:
        if 0 < state.tells < steps:  # training's checkpoints (the last tell's and the final's come with no new ask)
            want = 2 + min(state.tells + pipeline, steps)  # the zero-shot's val and test requests, and the steps'
            deadline = time.monotonic() + 2  # the loop is blocked here: nothing more is sent while this waits
            while proxy.traffic.requests.get("POST /v1/logits", 0) < want and time.monotonic() < deadline:
                time.sleep(0.005)
            seen.append((proxy.traffic.requests.get("POST /v1/logits", 0), want))
        real_save(path, settings, state)

    monkeypatch.setattr(tune_module, "save_checkpoint", save)
    with WanProxy(port_of(server.url), rtt_ms=100) as proxy:
        asyncio.run(tuned(proxy.url, tmp_path / "run", eval_every=0))
    assert len(seen) == steps - 1
    assert all(got >= want for got, want in seen), seen


def test_an_early_stop_tells_the_steps_in_flight_and_charges_what_it_counts(
    server: EmbeddedServer, tmp_path: Path
) -> None:
    before = usage(server)
    result = asyncio.run(tune_async("animals", server=server.url, out=tmp_path / "run", **{
        **RUN, "budget": 400, "eval_every": 8, "early_stop": 1, "options": {"pipeline": 6}}))
    spent = result.summary()["budget"]
    assert spent["queries"] < 400  # it stopped early
    assert charged_between(before, usage(server)) == client_count(spent)
    steps = [line for line in map(json.loads, (tmp_path / "run" / "log.jsonl").read_text().splitlines())
             if line["stage"] == "sgd"]
    assert len(steps) * 2 == spent["queries"]  # every step asked was told and logged


def test_requests_that_find_the_image_sets_gone_together_upload_them_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server restarted without its image sets answers every step in flight 404: one upload serves them all."""
    gone, uploaded = object(), []

    async def upload(*args: Any) -> object:
        uploaded.append(args)
        await asyncio.sleep(0.01)  # the upload's round trips, while the other 404s come in
        return object()

    async def score(scorer: Any, prompts: Any, split: str, on_written: Any = None) -> str:
        sets = scorer.remote
        await asyncio.sleep(0)
        if sets is gone:
            raise ApiRequestError(404, "unknown image set", "unknown_image_set")
        return split

    monkeypatch.setattr(tune_module, "upload_task", upload)
    monkeypatch.setattr(tune_module.Scorer, "_score", score)

    async def main() -> list[Any]:
        scorer = tune_module.Scorer(None, None, None, None, gone, None, False)
        return await asyncio.gather(*(scorer.score(None, "train") for _ in range(4)))

    assert asyncio.run(main()) == ["train"] * 4
    assert len(uploaded) == 1


def test_dropped_and_stalled_connections_are_retried_and_charged_once(server: EmbeddedServer, tmp_path: Path) -> None:
    reference_w, _ = asyncio.run(tuned(server.url, tmp_path / "reference"))
    faults = Faults(drop_responses=3, drop_requests=2, stall_responses=1, only=b"POST /v1/logits")
    before = usage(server)
    with WanProxy(port_of(server.url), rtt_ms=20, faults=faults) as proxy:
        w, spent = asyncio.run(tuned(proxy.url, tmp_path / "faulty", timeout=2.0))
        happened = dict(proxy.traffic.faults)
    assert happened == {"drop_responses": 3, "drop_requests": 2, "stall_responses": 1}
    # every dropped response was of a request the server had done (and charged): its retry was replayed, not recharged
    assert charged_between(before, usage(server)) == client_count(spent)
    assert w.tobytes() == reference_w.tobytes()


def logits_body(server: EmbeddedServer) -> bytes:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        set_id = http.post("/v1/image-sets", json={"images": [b64(encoded_image(i)) for i in range(3)]}).json()["id"]
        width = http.get("/v1/model").json()["width"]
    prompts = np.random.default_rng(0).standard_normal((5, 2, width)).astype(np.float32) * 0.02
    return LogitsRequest(image_set=set_id, class_names=["cat", "dog"], prompts=Tensor.from_numpy(prompts),
                         labels=[0, 1, 0], return_logits=False).model_dump_json().encode()


def test_on_written_fires_when_the_body_is_out_before_any_answer(server: EmbeddedServer) -> None:
    """httpcore's trace event, not the request's end: at the callback the server has sent nothing back yet (the
    proxy holds the request for half the round trip before the server even sees it)."""
    request = LogitsRequest.model_validate_json(logits_body(server))
    answered_at_write: list[int] = []

    async def main(url: str, proxy: WanProxy) -> None:
        async with ApiClient(url) as api:
            await api.model_info()  # the connection is open and idle: the next request's bytes go straight out
            down = proxy.traffic.down
            await api.score(request.image_set, request.class_names, request.prompts.to_numpy(), labels=np.array(
                request.labels), on_written=lambda: answered_at_write.append(proxy.traffic.down - down))
        assert proxy.traffic.down > down

    with WanProxy(port_of(server.url), rtt_ms=400) as proxy:
        asyncio.run(main(proxy.url, proxy))
    assert answered_at_write == [0]


def test_a_gzip_body_scores_and_charges_as_the_plain_one(server: EmbeddedServer) -> None:
    body = logits_body(server)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        assert http.get("/v1/model").json()["request_encodings"] == ["gzip"]
        plain = http.post("/v1/logits", content=body, headers={"Content-Type": "application/json"})
        packed = http.post("/v1/logits", content=gzip.compress(body),
                           headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert plain.status_code == packed.status_code == 200
    assert packed.json() == plain.json()


@pytest.mark.parametrize(("encoding", "content", "status", "code"), [
    ("gzip", b"not gzip at all", 422, "invalid_request"),
    ("gzip", gzip.compress(b"{" * 100)[:-8], 422, "invalid_request"),  # truncated
    ("gzip", gzip.compress(b" " * 2_000_001), 413, "body_too_large"),  # 2 KB that inflate past the limit
    ("br", b"{}", 415, "invalid_request"),
])
def test_bad_encodings_get_a_clear_4xx(server: EmbeddedServer, encoding: str, content: bytes, status: int,
                                       code: str) -> None:
    before = usage(server)
    response = httpx.post(f"{server.url}/v1/logits", content=content, timeout=60,
                          headers={"Content-Type": "application/json", "Content-Encoding": encoding})
    assert response.status_code == status, response.text
    assert response.json()["code"] == code and response.json()["detail"].startswith(("body", "Content-Encoding"))
    assert usage(server) == before


def test_the_client_compresses_when_offered_and_the_charge_is_unchanged(server: EmbeddedServer, tmp_path: Path) -> None:
    sent = {}
    for compress in (False, True):
        async def run(compress: bool) -> tuple[np.ndarray, int]:
            with WanProxy(port_of(server.url)) as proxy:
                async with ApiClient(proxy.url, compress=compress) as api:
                    ctx = np.random.default_rng(1).standard_normal((40, 2, (await api.model_info()).width)) * 0.02
                    set_id = (await api.create_image_set([encoded_image(i) for i in range(4)])).id
                    before = proxy.traffic.up
                    scored = await api.score(set_id, ["cat", "dog"], ctx, labels=np.array([0, 1, 1, 0]))
                    return scored.loss, proxy.traffic.up - before

        loss, sent[compress] = asyncio.run(run(compress))
        sent[f"loss {compress}"] = loss
    np.testing.assert_array_equal(sent["loss True"], sent["loss False"])
    assert sent[True] < 0.85 * sent[False]


@pytest.fixture(scope="module")
def private_ca(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A private CA and a certificate it signed for 127.0.0.1 (openssl, as an operator would make them)."""
    d = tmp_path_factory.mktemp("tls")
    run = lambda *args: subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=SharpZO test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
        "server.pem", "-days", "2", "-extfile", "ext.cnf")
    return {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}


@pytest.fixture(scope="module")
def https_server(private_ca: dict[str, Path]) -> Iterator[str]:
    """The real app under uvicorn serving HTTPS with the privately signed certificate."""
    port = free_port()
    env = {**os.environ, "SHARPZO_MODEL": TINY["model"], "SHARPZO_PRETRAINED": TINY["pretrained"],
           "SHARPZO_AUTH": "off"}
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "sharpzo.server.app:create_app", "--factory", "--port", str(port),
         "--ssl-keyfile", str(private_ca["key"]), "--ssl-certfile", str(private_ca["cert"]), "--log-level", "warning"],
        env=env,
    )
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None and time.monotonic() < deadline, "the HTTPS server did not start"
            try:
                httpx.get(f"{url}/v1/health", verify=False, timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def model_name(url: str, **options: Any) -> str:
    async def ask() -> str:
        async with ApiClient(url, **options) as api:
            return (await api.model_info()).name
    return asyncio.run(ask())


def test_tls_with_a_private_ca_by_option_or_ssl_cert_file(
    https_server: str, private_ca: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ApiRequestError, match="not trusted.*--ca-bundle"):
        model_name(https_server, retries=0)
    assert model_name(https_server, ca_bundle=str(private_ca["ca"])) == TINY["model"]
    monkeypatch.setenv("SSL_CERT_FILE", str(private_ca["ca"]))
    assert model_name(https_server) == TINY["model"]


class _NotSharpZO(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(b"<html>nothing here</html>")

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


def cli_error(url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SHARPZO, "tune", "--server", url, "--dataset", "animals", "--shots", "2", "--budget", "8", "--dim", "8",
         "--no-progress", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120,
    )


def test_an_unreachable_url_gives_one_clear_line(tmp_path: Path) -> None:
    done = cli_error(f"http://127.0.0.1:{free_port()}", tmp_path)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "cannot reach the server at http://127.0.0.1:" in done.stderr


def test_a_url_that_is_not_a_sharpzo_server_gives_one_clear_line(tmp_path: Path) -> None:
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotSharpZO)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        done = cli_error(f"http://127.0.0.1:{other.server_address[1]}", tmp_path)
    finally:
        other.shutdown()
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "is http://127.0.0.1:" in done.stderr and "the URL of a SharpZO server?" in done.stderr


def auto_command(url: str, out: Path, *extra: str) -> list[str]:
    return [SHARPZO, "tune", "--server", url, "--out", str(out), "--dataset", "animals", "--shots", "2", "--method",
            "zo-sgd", "--budget", "320", "--dim", "8", "--seed", "3", "--eval-every", "0", "--no-progress", *extra]


AUTO = ("--pipeline", "auto", "--directions", "auto")


def test_auto_choices_are_made_once_recorded_and_kept_by_a_resume_on_another_network(
    server: EmbeddedServer, tmp_path: Path
) -> None:
    from .test_client_e2e import wait_for_tells

    with WanProxy(port_of(server.url), rtt_ms=200) as proxy:
        done = subprocess.run(auto_command(proxy.url, tmp_path / "whole", *AUTO),
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        chosen = json.loads((tmp_path / "whole" / "config.json").read_text())["auto_chosen"]
        assert chosen["pipeline"] == 8 and chosen["q"] > 1 and chosen["rtt_ms"] >= 200
        interrupted = subprocess.Popen(auto_command(proxy.url, tmp_path / "resumed", *AUTO))
        wait_for_tells(tmp_path / "resumed", 2, interrupted)
        interrupted.kill()
        interrupted.wait()
    first = json.loads((tmp_path / "resumed" / "config.json").read_text())["auto_chosen"]
    # resumed on loopback, where a fresh choice would be made from a round trip of about a millisecond
    done = subprocess.run(auto_command(server.url, tmp_path / "resumed", *AUTO, "--resume"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "resumed" / "config.json").read_text())["auto_chosen"] == first
    assert (first["pipeline"], first["q"]) == (chosen["pipeline"], chosen["q"])
    # the recorded values, given explicitly, repeat the run bit for bit on any network
    done = subprocess.run(auto_command(server.url, tmp_path / "explicit", "--pipeline", str(chosen["pipeline"]),
                                       "--directions", str(chosen["q"])), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "auto_chosen" not in json.loads((tmp_path / "explicit" / "config.json").read_text())
    w = {run: np.load(tmp_path / run / "prompt.npz")["w"] for run in ("whole", "resumed", "explicit")}
    assert w["whole"].tobytes() == w["resumed"].tobytes() == w["explicit"].tobytes()
