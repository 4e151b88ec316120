"""The returned prompt is the best evaluated on validation; monitor queries when asked; monitoring overlaps training.

Runs in-process against a tiny-model server. Where a test needs a given validation
ranking it rescripts the validation accuracy of each evaluated prompt (zero-shot, monitor,
final); everything else (the requests, the charges, the log) is the real thing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from rich.console import Console

from sharpzo.client import cli
from sharpzo.client.checkpoint import Evaluated, MonitorPoint, trim_log
from sharpzo.client.embedded import EmbeddedServer
from sharpzo.client.runner import tune
from sharpzo.client.tune import Scorer, TuneResult

from .conftest import TINY
from .test_client_e2e import UNBATCHED  # trajectories here are compared bit for bit

tune_module = importlib.import_module("sharpzo.client.tune")  # the package's `tune` attribute is the function

COMMON: dict[str, Any] = dict(method="zo-sgd", dim=8, shots=2, seed=3, progress=False)
GUARD_S = 120  # only so that a loop that waits where it must not fails instead of hanging




@pytest.fixture(scope="module")
def tiny_server() -> Iterator[EmbeddedServer]:
    """The tiny model, unbatched, with the default limits (the session's tiny_server caps image sets below animals')."""
    with EmbeddedServer(**TINY, env=UNBATCHED) as server:
        yield server


def log_lines(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def script_validation(monkeypatch: pytest.MonkeyPatch, val_of: Callable[[Evaluated], float]) -> None:
    """Every evaluated prompt's validation accuracy becomes ``val_of(it)``; its test accuracy stays the server's."""
    real = Scorer.score_point

    async def scripted(self: Scorer, point: MonitorPoint, kind: Any) -> Evaluated:
        return dataclasses.replace(evaluated := await real(self, point, kind), val_accuracy=val_of(evaluated))

    monkeypatch.setattr(Scorer, "score_point", scripted)


def monitored(server: str, run: Path, **options: Any) -> TuneResult:
    return tune("animals", server=server, out=run, **{**COMMON, "budget": 60, "eval_every": 20, **options})


def saved_w(run: Path) -> tuple[np.ndarray, np.ndarray]:
    prompt = np.load(run / "prompt.npz")
    return prompt["w"], prompt["final_w"]


def test_zero_shot_is_returned_when_the_final_prompt_validates_worse(tiny_server, tmp_path, monkeypatch) -> None:
    script_validation(monkeypatch, lambda e: 0.9 if e.kind == "zero-shot" else 0.5)
    result = monitored(tiny_server.url, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "result.json").read_text())
    assert summary["selected"] == result.selected == "zero-shot"
    assert summary["val_accuracy"] == summary["zero_shot_val_accuracy"] == 0.9 and summary["final_val_accuracy"] == 0.5
    assert summary["test_accuracy"] == summary["zero_shot_test_accuracy"]
    w, final_w = saved_w(tmp_path / "run")
    assert not w.any() and final_w.any()  # the returned prompt is w = 0; the optimiser did move
    console = Console(record=True, width=200)
    monkeypatch.setattr(cli, "console", console)
    cli._print_result(result)
    table = console.export_text()
    assert "returned: the zero-shot prompt" in table and "final iterate, not returned" in table


def test_a_tie_goes_to_zero_shot(tiny_server, tmp_path, monkeypatch) -> None:
    script_validation(monkeypatch, lambda e: 0.5)
    assert monitored(tiny_server.url, tmp_path / "run").selected == "zero-shot"


def test_the_best_monitored_prompt_is_returned(tiny_server, tmp_path, monkeypatch) -> None:
    script_validation(monkeypatch, lambda e: 0.9 if (e.kind, e.point.queries) == ("monitor", 20) else 0.5)
    result = monitored(tiny_server.url, tmp_path / "run")
    assert (result.selected, result.selected_queries, result.val_accuracy) == ("best-validation", 20, 0.9)
    at_20 = [line for line in log_lines(tmp_path / "run") if line["stage"] == "monitor" and line["queries"] == 20]
    assert len(at_20) == 1 and result.test_accuracy == at_20[0]["test_accuracy"]
    w, final_w = saved_w(tmp_path / "run")
    assert w.any() and not np.array_equal(w, final_w) and np.array_equal(w, result.w)


def test_the_final_prompt_is_returned_when_it_validates_best(tiny_server, tmp_path, monkeypatch) -> None:
    script_validation(monkeypatch, lambda e: 0.9 if e.kind == "final" else 0.5)
    # a budget off the monitoring grid, so that the final prompt is scored as such (not a monitor's, reused)
    result = monitored(tiny_server.url, tmp_path / "run", budget=58)
    assert result.selected == "final" and result.test_accuracy == result.final_test_accuracy
    w, final_w = saved_w(tmp_path / "run")
    assert np.array_equal(w, final_w)


def test_early_stop_after_n_evaluations_without_improvement(tiny_server, tmp_path, monkeypatch) -> None:
    script_validation(monkeypatch, lambda e: 0.5)
    sequential = {"options": {"pipeline": 1}}
    result = monitored(tiny_server.url, tmp_path / "run", budget=200, eval_every=10, early_stop=2, **sequential)
    # monitors at 10 and 20 do not beat zero-shot; at the point due at 30 the run stops, and that is the final
    assert result.queries == 30
    assert [line["queries"] for line in log_lines(tmp_path / "run") if "val_accuracy" in line] == [0, 10, 20, 30]
    # pipelined (8 steps in flight), the stop is decided at the same tell, and the 7 steps in flight are told
    pipelined = monitored(tiny_server.url, tmp_path / "pipelined", budget=200, eval_every=10, early_stop=2)
    assert pipelined.queries == 30 + 2 * 7
    with pytest.raises(ValueError, match="early_stop needs eval_every"):
        tune("animals", server=tiny_server.url, out=tmp_path / "x", **COMMON, budget=20, eval_every=0, early_stop=1)


def test_eval_every_zero_charges_exactly_the_zero_shot_and_final_evaluations(tmp_path) -> None:
    ledger = {"SHARPZO_LEDGER": str(tmp_path / "ledger.sqlite3")}  # a fresh ledger: its count is this run's alone
    with EmbeddedServer(**TINY, env={**UNBATCHED, **ledger}) as server:
        result = tune("animals", server=server.url, out=tmp_path / "run", **COMMON, budget=20, eval_every=0)
        usage = httpx.get(f"{server.url}/v1/usage", timeout=30).json()
    spend = result.budget
    assert (spend.queries, spend.monitor_queries, spend.total_queries) == (20, 4, 24)  # val + test of w = 0 and final
    assert usage["queries"] == spend.total_queries and usage["image_evals"] == spend.image_evals
    assert result.sharpness == {}
    assert [line["stage"] for line in log_lines(tmp_path / "run") if "val_accuracy" in line] == ["zero-shot", "final"]


def test_sharpness_probes_only_when_asked(tiny_server, tmp_path) -> None:
    options = dict(COMMON, method="sharpzo", budget=60, eval_every=0,
                   options={"popsize": 6, "switch_iterations": 1, "mask_fraction": 1.0})
    plain = tune("animals", server=tiny_server.url, out=tmp_path / "plain", **options)
    probed = tune("animals", server=tiny_server.url, out=tmp_path / "probed", probe_sharpness=True, **options)
    assert plain.sharpness == {} and plain.budget.monitor_queries == 4
    assert set(probed.sharpness) == {"switch", "final"}
    assert all(m["queries"] == 17 for m in probed.sharpness.values())
    assert probed.budget.monitor_queries == 4 + 2 * 17
    config = json.loads((tmp_path / "probed" / "config.json").read_text())
    assert config["settings"]["probe_sharpness"] is True


class Overlap:
    """Holds each monitor evaluation until training has told ``ahead`` more batches, and every validation request
    until its test request is in flight: a loop that waited for either would never get there."""

    def __init__(self, ahead: int) -> None:
        self.ahead = ahead
        self.trained = 0
        self.progress = asyncio.Condition()
        self.test_started: dict[bytes, asyncio.Event] = {}

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        evaluate, score_point = Scorer.evaluate, Scorer.score_point
        overlap = self

        async def held_evaluate(scorer: Scorer, points: np.ndarray, split: str, on_written: Any = None) -> Any:
            if split == "train":
                result = await evaluate(scorer, points, split, on_written)
                async with overlap.progress:
                    overlap.trained += 1
                    overlap.progress.notify_all()
                return result
            started = overlap.test_started.setdefault(points.tobytes(), asyncio.Event())
            if split == "test":
                started.set()
            else:
                await asyncio.wait_for(started.wait(), GUARD_S)
            return await evaluate(scorer, points, split)

        async def held_score_point(scorer: Scorer, point: MonitorPoint, kind: Any) -> Evaluated:
            if kind == "monitor":
                async with overlap.progress:
                    target = overlap.trained + overlap.ahead
                    await asyncio.wait_for(overlap.progress.wait_for(lambda: overlap.trained >= target), GUARD_S)
            return await score_point(scorer, point, kind)

        monkeypatch.setattr(Scorer, "evaluate", held_evaluate)
        monkeypatch.setattr(Scorer, "score_point", held_score_point)


def test_monitoring_overlaps_training_and_leaves_the_trajectory_alone(tiny_server, tmp_path, monkeypatch) -> None:
    budget = 58  # the last monitor point is at 50, and 4 steps follow it
    # one step at a time: Overlap counts training results as they land, which pipelined steps do before their tells
    sequential = {"options": {"pipeline": 1}}
    plain = tune("animals", server=tiny_server.url, out=tmp_path / "plain", **COMMON, budget=budget, eval_every=0,
                 **sequential)
    Overlap(ahead=3).install(monkeypatch)
    watched = monitored(tiny_server.url, tmp_path / "watched", budget=budget, eval_every=10, **sequential)
    lines = log_lines(tmp_path / "watched")
    monitors = [i for i, line in enumerate(lines) if line["stage"] == "monitor"]
    assert [lines[i]["queries"] for i in monitors] == [10, 20, 30, 40, 50]  # at most one in flight, in order
    for i in monitors:  # written when it landed, after steps taken since its prompt was
        assert sum(1 for line in lines[:i] if "n" in line and line["tells"] > lines[i]["tells"]) >= 3
    assert np.array_equal(saved_w(tmp_path / "watched")[1], saved_w(tmp_path / "plain")[1])
    assert watched.budget.queries == plain.budget.queries
    assert watched.budget.monitor_queries == plain.budget.monitor_queries + 2 * 5


class Interrupted(Exception):
    pass


def test_a_checkpoint_with_a_monitor_in_flight_resumes_it(tiny_server, tmp_path, monkeypatch) -> None:
    reference = monitored(tiny_server.url, tmp_path / "reference", eval_every=10)
    real_save = tune_module.save_checkpoint
    saved_in_flight = []

    def save_then_die(path: Path, settings: dict[str, Any], state: Any) -> None:
        real_save(path, settings, state)
        if state.pending is not None and state.pending.queries == 30:
            saved_in_flight.append(state.pending.tells)
            raise Interrupted

    run = tmp_path / "run"
    monkeypatch.setattr(tune_module, "save_checkpoint", save_then_die)
    with pytest.raises(Interrupted):
        monitored(tiny_server.url, run, eval_every=10)
    monkeypatch.setattr(tune_module, "save_checkpoint", real_save)
    resumed = monitored(tiny_server.url, run, eval_every=10, resume=True)
    assert saved_in_flight, "no checkpoint was saved with a monitor in flight"
    def evaluations(path: Path) -> list[tuple[str, int]]:
        return [(line["stage"], line["queries"]) for line in log_lines(path) if "val_accuracy" in line]

    expected = [("zero-shot", 0), *(("monitor", q) for q in range(10, 70, 10)), ("final", 60)]
    assert evaluations(run) == evaluations(tmp_path / "reference") == expected  # each once: none lost, none twice
    assert np.array_equal(saved_w(run)[1], saved_w(tmp_path / "reference")[1])
    assert (resumed.selected, resumed.selected_queries) == (reference.selected, reference.selected_queries)


def test_trim_log_drops_the_line_of_a_monitor_that_landed_after_the_checkpoint(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    lines = [{"tells": 0, "stage": "zero-shot"}, {"tells": 1, "stage": "zo"}, {"tells": 2, "stage": "zo"},
             {"tells": 3, "stage": "zo"}, {"tells": 2, "stage": "monitor"}, {"tells": 1, "stage": "monitor"}]
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    trim_log(log, 3, MonitorPoint(np.zeros(2), tells=2, iteration=2, queries=4))
    kept = [json.loads(line) for line in log.read_text().splitlines()]
    assert kept == [line for line in lines if line != {"tells": 2, "stage": "monitor"}]
