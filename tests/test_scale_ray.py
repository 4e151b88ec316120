"""The real thing: `sharpzo serve --engine ray` with 2 replicas on a local Ray cluster on loopback, a real PostgreSQL
for the ledger and the image features, requests through Ray's proxy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from sharpzo.client.embedded import free_port

from .conftest import TINY
from .test_scale_replicas import KEYS, auth, score_body, upload_body

pytest.importorskip("ray.serve", reason="the scale extra: pip install '.[scale]'")
from sharpzo.server.ray_serve import REPLICA_HEADER  # noqa: E402  (imports Ray)

START_TIMEOUT_S = 600  # Ray's head, two replicas and their models, on 2 shared cores


def _processes_under(folder: Path) -> list[int]:
    """Ray's processes for one cluster name its temporary folder; their workers are their children."""
    found = subprocess.run(["pgrep", "-f", str(folder)], capture_output=True, text=True).stdout.split()
    children = [subprocess.run(["pgrep", "-P", pid], capture_output=True, text=True).stdout.split() for pid in found]
    return sorted({int(pid) for pid in found + [c for group in children for c in group]})


def _healthy_replicas(url: str, probes: int = 8) -> set[str]:
    """The replicas that answered a burst of concurrent health probes: the proxy answers as soon as one replica has
    its model, while the other may still be loading."""

    def probe(_: int) -> str | None:
        try:
            answer = httpx.get(f"{url}/v1/health", timeout=5)
        except httpx.HTTPError:
            return None
        return answer.headers.get(REPLICA_HEADER) if answer.status_code == 200 else None

    with ThreadPoolExecutor(probes) as pool:
        return {name for name in pool.map(probe, range(probes)) if name}


@pytest.fixture
def ray_server(postgres_url: str) -> Iterator[str]:
    folder = Path(tempfile.mkdtemp(prefix="sharpzo-ray-"))
    port = free_port()
    env = {**os.environ, "RAY_TMPDIR": str(folder), "SHARPZO_MODEL": TINY["model"],
           "SHARPZO_PRETRAINED": TINY["pretrained"],
           "SHARPZO_API_KEYS": ",".join(f"{name}:{key}:1000" for name, key in KEYS.items())}
    log = open(folder / "serve.log", "wb")
    driver = subprocess.Popen(
        [sys.executable, "-m", "sharpzo.server", "--engine", "ray", "--replicas", "2", "--replica-cpus", "0.5",
         "--proxy-location", "HeadOnly", "--port", str(port), "--ledger", postgres_url, "--auth", "on"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        ready: set[str] = set()
        while time.monotonic() < deadline and driver.poll() is None:
            ready |= _healthy_replicas(url)
            if len(ready) == 2:
                break
            time.sleep(2)
        else:
            pytest.fail(f"Ray Serve did not bring up 2 replicas (ready: {sorted(ready)}):\n"
                        f"{(folder / 'serve.log').read_text()[-3000:]}")
        yield url
    finally:
        driver.send_signal(signal.SIGTERM)  # as docker stop does: the driver shuts down the cluster it started
        try:
            code = driver.wait(60)
        except subprocess.TimeoutExpired:
            driver.kill()
            code = None
        for pid in _processes_under(folder):
            os.kill(pid, signal.SIGKILL)
        log.close()
        subprocess.run(["rm", "-rf", str(folder)], check=False)
    assert code == 0, f"sharpzo serve --engine ray did not stop cleanly on SIGTERM within 60 s (exit status {code})"


def test_two_ray_replicas_share_image_sets_and_the_ledger(ray_server: str) -> None:
    with httpx.Client(base_url=ray_server, timeout=120) as http:
        created = http.post("/v1/image-sets", headers=auth("alice"), json=upload_body())
        assert created.status_code == 200, created.text
        set_id = created.json()["id"]

        def score(n_cand: int) -> httpx.Response:
            return http.post("/v1/logits", headers=auth("alice"), json=score_body(set_id, n_cand))

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(score, [1 + i % 3 for i in range(48)]))
        assert [a.status_code for a in answers] == [200] * len(answers), answers[0].text
        replicas = {a.headers["sharpzo-replica"] for a in answers}
        assert len(replicas) == 2, replicas  # each scored a set uploaded on one of them
        spent = sum(1 + i % 3 for i in range(48))
        assert http.get("/v1/usage", headers=auth("alice")).json()["queries"] == spent
        bad = http.post("/v1/logits", headers=auth("alice"), json={**score_body(set_id, 1), "labels": [0, 1, 9]})
        assert bad.status_code == 422, bad.text
        assert http.get(f"/v1/image-sets/{set_id}", headers=auth("bob")).status_code == 404
        metrics = http.get("/metrics")
        assert metrics.status_code == 200 and "sharpzo-replica" in metrics.headers
