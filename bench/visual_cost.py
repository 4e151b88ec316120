"""Seconds per query of text, visual and joint prompts (issue 26), as ratios to text measured in the same run.

One embedded server on loopback (the default model, stand-in v2, unless --model), groceries at each --shots: the
training set is uploaded with its patch stems, then for each prompt kind requests of --candidates candidates
(prompts of the client's own prompt spaces at a random w, d = 512, the joint split at its default) are sent one at
a time, with labels, as a tuning run sends them. Seconds per query is the median request round trip over
--repeats, after one warm-up request, divided by the candidates. Text and visual requests alternate in each
repeat, so background load hits every kind alike; absolute times depend on the machine and its load, the ratios
much less.

It also reports, on the validation set, how far w = 0 of a visual space (m_v zero tokens) is from zero-shot: the
difference that makes a visual or joint run evaluate its zero-shot as the text prompt alone (client/prompt_map.py).

    python bench/visual_cost.py --shots 4 16 --out bench/results/visual_cost.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from sharpzo.client.api import ApiClient
from sharpzo.client.embedded import EmbeddedServer
from sharpzo.client.image_sets import RemoteSplit, upload_split
from sharpzo.client.prompt import DEFAULT_INIT_TEXT
from sharpzo.client.prompt_map import PROMPT_KINDS, PromptKind, PromptMap, Prompts
from sharpzo.data.fewshot import few_shot_task

DIM, VISUAL_TOKENS = 512, 4


def spaces(p0: np.ndarray, visual_width: int, spread: float) -> dict[PromptKind, PromptMap]:
    return {
        kind: PromptMap.create(kind, p0, DIM, seed=0, alpha=1.0, visual_tokens=VISUAL_TOKENS,
                               visual_width=visual_width, visual_spread=spread)
        for kind in PROMPT_KINDS
    }


async def seconds(api: ApiClient, remote: RemoteSplit, class_names: list[str], prompts: Prompts) -> float:
    began = time.perf_counter()
    await api.score(remote.set_id, class_names, prompts.text, labels=remote.labels, visual_prompts=prompts.visual)
    return time.perf_counter() - began


async def measure(api: ApiClient, shots: int, candidates: int, repeats: int) -> dict[str, Any]:
    task = few_shot_task("groceries", shots, 0)
    train = await upload_split(api, task.train, visual=True)
    assert train.stem_spread is not None
    model = await api.model_info()
    assert model.visual_width is not None
    maps = spaces(await api.token_embeddings(DEFAULT_INIT_TEXT), model.visual_width, train.stem_spread)
    w = np.random.default_rng(0).standard_normal((candidates, DIM))
    batches = {kind: space.prompts(w) for kind, space in maps.items()}
    for prompts in batches.values():  # warm-up: first-call costs (allocations, suffix caches) left out
        await seconds(api, train, task.class_names, Prompts(prompts.text[:1], None if prompts.visual is None
                                                            else prompts.visual[:1]))
    times: dict[str, list[float]] = {kind: [] for kind in batches}
    for _ in range(repeats):
        for kind, prompts in batches.items():
            times[kind].append(await seconds(api, train, task.class_names, prompts) / candidates)
    per_query = {kind: statistics.median(values) for kind, values in times.items()}
    return {
        "shots": shots, "train_images": len(task.train), "classes": len(task.class_names),
        "candidates": candidates, "repeats": repeats, "seconds_per_query": per_query,
        "ratio_to_text": {kind: per_query[kind] / per_query["text"] for kind in per_query},
        "stem_spread": train.stem_spread,
    }


async def zero_tokens_against_zero_shot(api: ApiClient) -> dict[str, float]:
    """Validation accuracy and loss of zero-shot (text alone) and of w = 0 of a visual space (zero tokens)."""
    task = few_shot_task("groceries", 16, 0)
    val = await upload_split(api, task.val, visual=True)
    model = await api.model_info()
    assert model.visual_width is not None and val.stem_spread is not None
    visual = spaces(await api.token_embeddings(DEFAULT_INIT_TEXT), model.visual_width, val.stem_spread)["visual"]
    out = {}
    for name, prompts in (("zero_shot", visual.zero_shot()), ("zero_tokens", visual.prompts(np.zeros(DIM)))):
        scored = await api.score(val.set_id, task.class_names, prompts.text, labels=val.labels,
                                 visual_prompts=prompts.visual)
        assert scored.accuracy is not None and scored.loss is not None
        out.update({f"{name}_val_accuracy": float(scored.accuracy[0]), f"{name}_val_loss": float(scored.loss[0])})
    return out


async def run(url: str, shots: list[int], candidates: int, repeats: int) -> dict[str, Any]:
    async with ApiClient(url, concurrency=1) as api:
        model = await api.model_info()
        rows = [await measure(api, k, candidates, repeats) for k in shots]
        return {"model": model.name, "device": model.device, "visual_tokens": VISUAL_TOKENS, "dim": DIM,
                "rows": rows, "w0": await zero_tokens_against_zero_shot(api)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shots", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--candidates", type=int, default=4, help="candidates per request (P)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default=None, help="server model (default: the server's, stand-in v2)")
    parser.add_argument("--out", type=Path, help="JSON file for the results")
    args = parser.parse_args()
    began = time.time()
    with tempfile.TemporaryDirectory() as home, EmbeddedServer(
        model=args.model, env={"SHARPZO_LEDGER": str(Path(home) / "ledger.sqlite3")}
    ) as server:
        result = asyncio.run(run(server.url, args.shots, args.candidates, args.repeats))
    result.update(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(began)), wall_s=round(time.time() - began, 1))
    for row in result["rows"]:
        ratios = ", ".join(f"{kind} {ratio:.1f}x" for kind, ratio in row["ratio_to_text"].items())
        print(f"{row['shots']:>2}-shot ({row['train_images']} images): {ratios}; "
              f"text {1000 * row['seconds_per_query']['text']:.1f} ms/query")
    print(json.dumps(result["w0"]))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
