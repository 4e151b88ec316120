"""Step latency of a sequential ZO step: where one request of 2 candidates spends its time.

ZO-SGD and SharpZO's stage 2 send one request of 2 candidates, wait, and send the next, so a
tuning run lasts (steps x step latency). This script sends that load to real servers on
loopback, one request at a time, and reports per request (median and p99):

* client encode: building the LogitsRequest and serialising it, once;
* wire + HTTP: the client's round trip less the server's own time ("app" in Server-Timing);
* the server's stages, from its Server-Timing header: accept (body receive, JSON parse,
  pydantic, API key, usage and replay lookups), idempotency (the replay lookup on its own, in
  servers before it joined the usage lookup in one thread hop), validate (prompts, class
  suffixes, image set, indices, labels), queue (wait for the batch to start), model (text
  encoder + scoring), encode (the response body), ledger (the commit), and what is left of "app";
* client decode + usage check.

Next to it, in the same run, the model alone in this process (the same encoder and scoring
call on the same 2 candidates), so that the model's share of a step carries over between
machines; and the transport floor (`bench/transport_floor.py`): the same request bytes, posted
by the same client to uvicorn serving a bare ASGI app that only reads them and waits, once
for nothing and once as long as the server's median model time. No server that speaks HTTP
through this stack can spend less outside its model than the second one's round trip less
the bare app's own time.

Before/after: with ``--baseline-ref REF`` a second server runs the code of that git commit (a
temporary ``git worktree``, imported first through PYTHONPATH), and rounds alternate
(current, baseline, baseline, current, ...) so that background load hits both alike. A server
without Server-Timing (older code) is broken down from its /metrics deltas instead: mean model
and queue time per request. Every comparison is a ratio of figures taken in the same run.

``--device cuda`` runs both servers and the in-process model on the GPU as they are.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from sharpzo.client.embedded import EmbeddedServer
from sharpzo.shared.protocol import IDEMPOTENCY_HEADER, SERVER_TIMING_HEADER, LogitsRequest, LogitsResponse
from sharpzo.shared.tensors import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transport_floor import FloorServer

REPO = Path(__file__).resolve().parent.parent
CLASSES = [
    "apple", "banana", "carrot", "cucumber", "garlic", "ginger", "lemon", "lime", "mango", "onion", "orange",
    "pear", "potato", "tomato",
]  # 14 classes, as groceries
SERVER_STAGES = ("accept", "idempotency", "validate", "queue", "model", "encode", "ledger")
_TIMING = re.compile(r"([a-z_]+);dur=([0-9.]+)")
API_KEY = "step-latency-bench-key-0123456789"
FLOOR_IDLE = "no wait"
FLOOR_WAITING = "waiting the model's median time"


@dataclass
class Side:
    """One server under test and everything timed against it."""

    name: str
    server: EmbeddedServer
    set_id: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)  # ms per request, by part
    metrics_means: dict[str, float] = field(default_factory=dict)

    def add(self, part: str, ms: float) -> None:
        self.samples.setdefault(part, []).append(ms)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sharpzo-standin-v1", help="served model (default: the shipped stand-in v1)")
    parser.add_argument(
        "--pretrained", default=None, help="pretrained tag or file (default: the model's shipped weights)"
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--images", type=int, default=224, help="images per request (groceries 16-shot: 224)")
    parser.add_argument("--candidates", type=int, default=2)
    parser.add_argument("--m", type=int, default=4, help="context vectors per prompt")
    parser.add_argument("--requests", type=int, default=100, help="requests per round and server")
    parser.add_argument(
        "--rounds", type=int, default=4, help="rounds per server (alternating when there is a baseline)"
    )
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--baseline-ref", default=None, help="git commit whose server to compare against")
    parser.add_argument("--auth", action="store_true",
                        help="serve with auth on (one configured API key, as a deployment has) and send the key")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for every figure")
    return parser.parse_args(argv)


def _worktree(stack: ExitStack, ref: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix="sharpzo-baseline-"))
    git = ["git", "-C", str(REPO), "worktree"]
    subprocess.run([*git, "add", "--detach", str(path), ref], check=True, capture_output=True)
    stack.callback(subprocess.run, [*git, "remove", "--force", str(path)], capture_output=True)
    return path


def _server(stack: ExitStack, args: argparse.Namespace, source: Path | None) -> EmbeddedServer:
    env = {"SHARPZO_DEVICE": args.device, "SHARPZO_LEDGER": tempfile.mktemp(suffix=".sqlite3")}
    if args.auth:
        env |= {"SHARPZO_AUTH": "on", "SHARPZO_API_KEYS": f"bench:{API_KEY}:{10**12}"}
    if source is not None:
        env["PYTHONPATH"] = str(source / "src")  # before the editable install's path
    return stack.enter_context(EmbeddedServer(model=args.model, pretrained=args.pretrained, env=env))


def _client(url: str, args: argparse.Namespace, timeout: float) -> httpx.Client:
    headers = {"Authorization": f"Bearer {API_KEY}"} if args.auth else {}
    return httpx.Client(base_url=url, timeout=timeout, headers=headers)


def _png(seed: int) -> str:
    import base64
    import io

    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _metric_sums(http: httpx.Client) -> dict[str, float]:
    text = http.get("/metrics").text
    sums = {}
    for name in ("sharpzo_batch_seconds", "sharpzo_queue_wait_seconds"):
        for part in ("sum", "count"):
            found = re.search(rf"^{name}_{part} (\S+)$", text, re.M)
            sums[f"{name}_{part}"] = float(found.group(1)) if found else 0.0
    return sums


def _request(set_id: str, prompts: np.ndarray, labels: list[int]) -> LogitsRequest:
    return LogitsRequest(
        image_set=set_id, class_names=CLASSES, prompts=Tensor.from_numpy(prompts), labels=labels, return_logits=False
    )


def _headers() -> dict[str, str]:
    return {"content-type": "application/json", IDEMPOTENCY_HEADER: uuid.uuid4().hex}


def _one_request(http: httpx.Client, side: Side, prompts: np.ndarray, labels: list[int], record: bool) -> None:
    started = time.perf_counter()
    content = _request(side.set_id, prompts, labels).model_dump_json().encode()
    encoded = time.perf_counter()
    response = http.post("/v1/logits", content=content, headers=_headers())
    answered = time.perf_counter()
    response.raise_for_status()
    result = LogitsResponse.model_validate_json(response.content)
    if (result.usage.queries, result.usage.image_evals, result.usage.requests) != (
        len(prompts), len(prompts) * len(labels), 1
    ):
        raise RuntimeError(f"usage {result.usage} does not match the request")
    done = time.perf_counter()
    if not record:
        return
    server = {name: float(ms) for name, ms in _TIMING.findall(response.headers.get(SERVER_TIMING_HEADER, ""))}
    side.add("step", (done - started) * 1000.0)
    side.add("client encode", (encoded - started) * 1000.0)
    side.add("client decode + usage check", (done - answered) * 1000.0)
    round_trip = (answered - encoded) * 1000.0
    if "app" in server:
        side.add("wire + HTTP", round_trip - server["app"])
        for stage in SERVER_STAGES:
            side.add(f"server {stage}", server.get(stage, 0.0))
        side.add("server other", server["app"] - sum(server.get(stage, 0.0) for stage in SERVER_STAGES))
    else:
        side.add("wire + HTTP + server", round_trip)


def _round(side: Side, args: argparse.Namespace, rng: np.random.Generator, labels: list[int], width: int) -> None:
    with _client(side.server.url, args, 120) as http:
        before = _metric_sums(http)
        for _ in range(args.requests):
            prompts = rng.normal(0, 0.02, (args.candidates, args.m, width)).astype(np.float32)
            _one_request(http, side, prompts, labels, record=True)
        after = _metric_sums(http)
    for key, name in (("sharpzo_batch_seconds", "metrics model"), ("sharpzo_queue_wait_seconds", "metrics queue")):
        side.add(name, (after[f"{key}_sum"] - before[f"{key}_sum"]) * 1000.0 / args.requests)  # a round's mean


def _floor_round(url: str, set_id: str, args: argparse.Namespace, rng: np.random.Generator, labels: list[int],
                 width: int, wait_ms: float, samples: list[float]) -> None:
    """The same requests' bytes to the transport floor, which waits ``wait_ms``; records round trip less its app time
    (ms), as "wire + HTTP" is for the real server."""
    with _client(url, args, 120) as http:
        for _ in range(args.requests):
            prompts = rng.normal(0, 0.02, (args.candidates, args.m, width)).astype(np.float32)
            content = _request(set_id, prompts, labels).model_dump_json().encode()
            started = time.perf_counter()
            response = http.post(f"/v1/logits?wait_ms={wait_ms:.3f}", content=content, headers=_headers())
            round_trip = (time.perf_counter() - started) * 1000.0
            response.raise_for_status()
            samples.append(round_trip - float(_TIMING.findall(response.headers[SERVER_TIMING_HEADER])[0][1]))


class InProcessModel:
    """The server's encoder and scoring on the same candidates, timed in this process."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        from sharpzo.server.model import load_model
        from sharpzo.server.settings import ServerSettings
        from sharpzo.server.text import PromptedTextEncoder

        self.torch = torch
        settings = ServerSettings(model=args.model, pretrained=args.pretrained, device=args.device)
        self.loaded = load_model(settings)
        chunk = 65_536 if self.loaded.device.type == "cuda" else 4096
        self.encoder = PromptedTextEncoder(self.loaded, chunk)
        self.args = args
        gen = torch.Generator().manual_seed(0)
        embed = self.loaded.embed_dim
        self.images = torch.nn.functional.normalize(torch.randn(args.images, embed, generator=gen), dim=-1)
        self.images = self.images.to(self.loaded.device)
        self.labels = torch.arange(args.images, device=self.loaded.device) % len(CLASSES)
        self.samples: list[float] = []

    def time_block(self, n: int, record: bool = True) -> None:
        from sharpzo.server.scoring import score

        torch = self.torch
        rng = np.random.default_rng(1)
        for _ in range(n):
            prompts = torch.from_numpy(rng.normal(0, 0.02, (self.args.candidates, self.args.m, self.loaded.width)))
            prompts = prompts.float().to(self.loaded.device)
            started = time.perf_counter()
            with torch.inference_mode():
                features = self.encoder.encode(prompts, self.encoder.suffixes(CLASSES, self.args.m))
                scores = score(features, self.images, self.loaded.logit_scale, self.labels, False)
                scores.loss.cpu()  # waits for the device, as the server's answer does
            if record:
                self.samples.append((time.perf_counter() - started) * 1000.0)

    def flops(self) -> float:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from server_throughput import flops_per_candidate, text_dims

        lengths = [len(self.encoder.token_ids(f"{name}.")) + 1 for name in CLASSES]
        fast, _ = flops_per_candidate(text_dims(self.loaded.model), self.args.m, len(CLASSES), lengths)
        return fast * self.args.candidates


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return {"median_ms": statistics.median(ordered), "p99_ms": p99, "mean_ms": statistics.fmean(ordered)}


def _report(sides: list[Side], alone: InProcessModel, floors: dict[str, list[float]]) -> dict:
    alone_median = statistics.median(alone.samples)
    floor_median = statistics.median(floors[FLOOR_WAITING])
    report: dict = {
        "model_alone_in_process": _summary(alone.samples),
        "transport_floor": {name: _summary(samples) for name, samples in floors.items()},
        "sides": {},
    }
    for side in sides:
        parts = {part: _summary(values) for part, values in side.samples.items()}
        step = parts["step"]["median_ms"]
        model = parts.get("server model", parts["metrics model"])["median_ms"]
        client = parts["client encode"]["median_ms"] + parts["client decode + usage check"]["median_ms"]
        floor_and_client = floor_median + client
        report["sides"][side.name] = {
            "parts": parts,
            "model_share_of_step": model / step,
            "non_model_share_of_step": 1.0 - model / step,
            # a step of this model and nothing but the floor (waiting as long) beside it, then with the client's own
            # encode and decode added; 10% allows model / 9 outside the model
            "floor_share_of_step": floor_median / (floor_median + model),
            "floor_and_client_share_of_step": floor_and_client / (floor_and_client + model),
            "outside_model_allowed_at_10_percent_ms": model / 9.0,
            "model_alone_share_of_step": alone_median / step,
            "mean_model_share_from_metrics": parts["metrics model"]["mean_ms"] / parts["step"]["mean_ms"],
        }
    if len(sides) == 2:
        current, baseline = (report["sides"][s.name]["parts"] for s in sides)
        report["step_median_ratio_current_over_baseline"] = current["step"]["median_ms"] / baseline["step"]["median_ms"]
        report["step_mean_ratio_current_over_baseline"] = current["step"]["mean_ms"] / baseline["step"]["mean_ms"]
    return report


def _print(report: dict) -> None:
    alone = report["model_alone_in_process"]
    print(f"model alone in process: median {alone['median_ms']:.2f} ms, p99 {alone['p99_ms']:.2f} ms")
    for name, floor in report["transport_floor"].items():
        print(f"transport floor, {name} (round trip less the bare app's time): median {floor['median_ms']:.3f} ms, "
              f"p99 {floor['p99_ms']:.3f} ms")
    for name, side in report["sides"].items():
        print(f"\n{name}: model share of the step {side['model_share_of_step']:.1%} (median model / median step), "
              f"{side['mean_model_share_from_metrics']:.1%} from the metrics' means; model alone / step "
              f"{side['model_alone_share_of_step']:.1%}")
        print(f"  the floor alone beside this model would be {side['floor_share_of_step']:.1%} of a step, "
              f"{side['floor_and_client_share_of_step']:.1%} with the client's own encode and decode; a 10% non-model "
              f"share allows {side['outside_model_allowed_at_10_percent_ms']:.2f} ms outside the model")
        print(f"  {'part':32s} {'median ms':>10s} {'p99 ms':>10s} {'mean ms':>10s}")
        for part, s in side["parts"].items():
            print(f"  {part:32s} {s['median_ms']:10.3f} {s['p99_ms']:10.3f} {s['mean_ms']:10.3f}")
    if "step_median_ratio_current_over_baseline" in report:
        print(f"\nstep latency, current / baseline: median {report['step_median_ratio_current_over_baseline']:.3f}, "
              f"mean {report['step_mean_ratio_current_over_baseline']:.3f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers and drop the worktree on the way out
    labels = [i % len(CLASSES) for i in range(args.images)]
    images = [_png(i) for i in range(args.images)]
    with ExitStack() as stack:
        floor_server = stack.enter_context(FloorServer())
        floors: dict[str, list[float]] = {FLOOR_IDLE: [], FLOOR_WAITING: []}
        sides = [Side("current", _server(stack, args, None))]
        if args.baseline_ref:
            baseline = _server(stack, args, _worktree(stack, args.baseline_ref))
            sides.append(Side(f"baseline {args.baseline_ref}", baseline))
        rng = np.random.default_rng(0)
        width = 0
        for side in sides:
            with _client(side.server.url, args, 600) as http:
                width = http.get("/v1/model").json()["width"]
                side.set_id = http.post("/v1/image-sets", json={"images": images}).json()["id"]
                for _ in range(args.warmup):
                    prompts = rng.normal(0, 0.02, (args.candidates, args.m, width)).astype(np.float32)
                    _one_request(http, side, prompts, labels, record=False)
        print("servers up, image sets uploaded; loading the model in process", file=sys.stderr, flush=True)
        alone = InProcessModel(args)
        alone.time_block(args.warmup, record=False)
        for r in range(args.rounds):
            order = sides if r % 2 == 0 else sides[::-1]  # ABBA: drifting load hits both alike
            for side in order:
                print(f"round {r + 1}/{args.rounds}: {side.name}", file=sys.stderr, flush=True)
                _round(side, args, rng, labels, width)
                alone.time_block(max(args.requests // 4, 5))
            model_ms = statistics.median(sides[0].samples.get("server model", sides[0].samples["metrics model"]))
            for name, wait_ms in ((FLOOR_IDLE, 0.0), (FLOOR_WAITING, model_ms)):
                _floor_round(floor_server.url, sides[0].set_id, args, rng, labels, width, wait_ms, floors[name])
        report = _report(sides, alone, floors)
    report["settings"] = {k: str(v) for k, v in vars(args).items()}
    report["fast_path_flops_per_request"] = alone.flops()
    report["samples"] = {side.name: side.samples for side in sides} | {"model alone": alone.samples} | {
        f"transport floor, {name}": samples for name, samples in floors.items()
    }
    _print(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
