"""`sharpzo tune` against real server processes over HTTP: budget, counts, resume and a server crash."""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import httpx
import numpy as np
import pytest

from sharpzo.client.embedded import EmbeddedServer
from sharpzo.client.optim.sharpzo import SharpZOConfig

from .conftest import TINY

SHARPZO = str(Path(sys.executable).parent / "sharpzo")
# For runs compared bit for bit (or nearly): each job scored alone. The text tower's fp32 results depend on which
# jobs share its batch, and a run's monitor requests overlap its training requests, so merged they would move the
# training losses' last bits, differently from run to run.
UNBATCHED = {"SHARPZO_BATCH_MAX_CANDIDATES": "1"}
BUDGET = 160
# The paper's version, d = 8, S = 6: stage-1 iterations cost 2d + S = 22 queries, the mask refresh 2d = 16, steps 2
TUNE = ["--dataset", "animals", "--shots", "2", "--method", "sharpzo", "--budget", str(BUDGET), "--dim", "8",
        "--opt", "sharpness=cge", "--opt", "popsize=6", "--opt", "switch_iterations=2", "--opt", "mask_interval=20",
        "--eval-every", "60", "--seed", "3", "--no-progress"]


def tune_command(server: str, out: Path, *extra: str) -> list[str]:
    return [SHARPZO, "tune", "--server", server, "--out", str(out), *TUNE, *extra]


def log_lines(run: Path) -> list[dict]:
    path = run / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not {what} within {timeout} s"
        time.sleep(0.05)


def port_free(port: int) -> bool:
    """Whether a server could listen on ``port`` again (as uvicorn binds it, with SO_REUSEADDR)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def gone(pid: str) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "zombie" in status.read_text().lower()
    except OSError:
        return True


def logged(run: Path) -> list[tuple[int, str]]:
    """Each log line's (tells, stage), sorted: a monitor's line is written when its evaluation lands, which varies."""
    return sorted((line["tells"], line["stage"]) for line in log_lines(run))


def wait_for_tells(run: Path, tells: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(line["tells"] >= tells for line in log_lines(run)):
            return
        assert process.poll() is None, "the tuning run ended too early"
        time.sleep(0.05)
    raise AssertionError(f"no {tells} tells within {timeout} s")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """One uninterrupted run on a fresh server: its result and the server's own count."""
    out = tmp_path_factory.mktemp("reference")
    ledger = out / "ledger.sqlite3"
    with EmbeddedServer(**TINY, env={"SHARPZO_LEDGER": str(ledger), **UNBATCHED}) as server:
        done = subprocess.run(tune_command(server.url, out / "run"), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        usage = httpx.get(f"{server.url}/v1/usage", timeout=30).json()
    return {"run": out / "run", "usage": usage, "stdout": done.stdout}


def test_tune_stays_within_budget(reference) -> None:
    run = reference["run"]
    result = json.loads((run / "result.json").read_text())
    lines = log_lines(run)
    assert result["queries"] <= BUDGET and result["budget"]["max_queries"] == BUDGET
    assert result["queries"] > BUDGET - 22  # it stopped only because the next batch did not fit
    assert max(line["queries"] for line in lines) <= BUDGET
    spent = sum(line["n"] for line in lines if "n" in line)
    assert spent == result["queries"]
    stages = [line["stage"] for line in lines]
    assert stages[0] == "zero-shot" and stages[-1] == "final" and "zo" in stages
    for name in ("prompt.npz", "accuracy.png", "config.json", "checkpoint.pkl"):
        assert (run / name).is_file(), name
    assert "returned test" in reference["stdout"] and "returned: the" in reference["stdout"]


def test_config_json_records_every_option_the_optimiser_runs_with(reference) -> None:
    recorded = json.loads((reference["run"] / "config.json").read_text())["optimizer"]
    given = {"sharpness": "cge", "popsize": 6, "switch_iterations": 2, "mask_interval": 20}  # TUNE's --opt
    assert recorded == asdict(SharpZOConfig(**given))
    assert (recorded["lr"], recorded["pipeline"], recorded["clip"]) == (17.5, 8, 5.0)  # defaults, not given


def test_client_counts_equal_the_servers(reference) -> None:
    budget = json.loads((reference["run"] / "result.json").read_text())["budget"]
    usage = reference["usage"]
    assert usage["queries"] == budget["total_queries"]
    assert usage["image_evals"] == budget["image_evals"]
    assert usage["requests"] >= budget["requests"]  # plus the uploads and model queries, which charge no query


def _final_w(run: Path) -> np.ndarray:
    """The optimiser's last iterate (prompt.npz's ``w`` is the returned prompt, the best on validation)."""
    return np.load(run / "prompt.npz")["final_w"]


def test_resume_ends_where_an_uninterrupted_run_ends(reference, tmp_path) -> None:
    with EmbeddedServer(**TINY, env=UNBATCHED) as server:
        run = tmp_path / "run"
        process = subprocess.Popen(tune_command(server.url, run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_tells(run, 5, process)
        process.kill()
        process.wait()
        assert not (run / "result.json").exists()
        done = subprocess.run(tune_command(server.url, run, "--resume"), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
    np.testing.assert_allclose(_final_w(run), _final_w(reference["run"]), rtol=1e-5, atol=1e-6)
    ours = json.loads((run / "result.json").read_text())["budget"]
    theirs = json.loads((reference["run"] / "result.json").read_text())["budget"]
    assert ours["queries"] == theirs["queries"]
    assert logged(run) == logged(reference["run"])


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("when", ["before the checkpoint", "after the checkpoint"])
def test_an_interruption_between_log_and_checkpoint_loses_no_line(reference, tmp_path, monkeypatch, when) -> None:
    """The kill the test above lands by chance, placed on purpose either side of one checkpoint write."""
    from sharpzo.client.runner import tune

    tune_module = importlib.import_module("sharpzo.client.tune")  # the package's `tune` attribute is the function

    real_save = tune_module.save_checkpoint

    def interrupted_save(path, settings, state) -> None:
        if state.tells == 7:
            if when == "after the checkpoint":
                real_save(path, settings, state)
            raise Interrupted
        real_save(path, settings, state)

    options = {"sharpness": "cge", "popsize": 6, "switch_iterations": 2, "mask_interval": 20}
    run = tmp_path / "run"
    with EmbeddedServer(**TINY, env=UNBATCHED) as server:
        common = dict(method="sharpzo", budget=BUDGET, dim=8, options=options, eval_every=60, seed=3, shots=2,
                      server=server.url, out=run, progress=False)
        monkeypatch.setattr(tune_module, "save_checkpoint", interrupted_save)
        with pytest.raises(Interrupted):
            tune("animals", **common)
        monkeypatch.setattr(tune_module, "save_checkpoint", real_save)
        tune("animals", resume=True, **common)
    np.testing.assert_allclose(_final_w(run), _final_w(reference["run"]), rtol=1e-5, atol=1e-6)
    assert logged(run) == logged(reference["run"])


def test_server_killed_mid_run_retries_finish_it(reference, tmp_path) -> None:
    env = {"SHARPZO_LEDGER": str(tmp_path / "ledger.sqlite3"), **UNBATCHED}
    server = EmbeddedServer(**TINY, env=env).start()
    try:
        run = tmp_path / "run"
        process = subprocess.Popen(
            tune_command(server.url, run), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        wait_for_tells(run, 6, process)
        server.kill()  # SIGKILL: image sets and all in-memory state are gone; the ledger stays
        wait_until(lambda: port_free(server.port), f"port {server.port} free")
        server = EmbeddedServer(**TINY, port=server.port, env=env).start()
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output
        usage = httpx.get(f"{server.url}/v1/usage", timeout=30).json()
    finally:
        server.stop()
    np.testing.assert_allclose(_final_w(run), _final_w(reference["run"]), rtol=1e-5, atol=1e-6)
    ours = json.loads((run / "result.json").read_text())["budget"]
    theirs = json.loads((reference["run"] / "result.json").read_text())["budget"]
    assert ours["queries"] == theirs["queries"] and ours["monitor_queries"] == theirs["monitor_queries"]
    # the ledger charged every query the client counted, once: nothing lost, nothing twice
    assert usage["queries"] == ours["total_queries"] and usage["image_evals"] == ours["image_evals"]


def test_eval_and_plot_commands(reference, tmp_path) -> None:
    run = reference["run"]
    result = json.loads((run / "result.json").read_text())
    with EmbeddedServer(**TINY) as server:
        data = ["--dataset", "animals", "--shots", "2", "--seed", "3", "--server", server.url]
        tuned = subprocess.run([SHARPZO, "eval", *data, "--prompt", str(run / "prompt.npz")],
                               capture_output=True, text=True, timeout=300)
        zero = subprocess.run([SHARPZO, "eval", *data], capture_output=True, text=True, timeout=300)
    assert tuned.returncode == 0 and zero.returncode == 0, tuned.stderr + zero.stderr
    assert json.loads(tuned.stdout)["test_accuracy"] == pytest.approx(result["test_accuracy"], abs=1e-6)
    assert json.loads(zero.stdout)["test_accuracy"] == pytest.approx(result["zero_shot_test_accuracy"], abs=1e-6)
    figure = tmp_path / "fig.png"
    plotted = subprocess.run([SHARPZO, "plot", str(run), str(run), "-o", str(figure)], capture_output=True, text=True)
    assert plotted.returncode == 0, plotted.stderr
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sigterm_stops_the_embedded_server_too(tmp_path) -> None:
    env = {**os.environ, "SHARPZO_MODEL": "sharpzo-tiny", "SHARPZO_PRETRAINED": "none"}
    run = tmp_path / "run"
    process = subprocess.Popen([SHARPZO, "tune", "--out", str(run), *TUNE, "--budget", "100000"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_tells(run, 1, process)
    children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    assert children, "no embedded server process"
    process.terminate()
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    wait_until(lambda: all(gone(pid) for pid in children), f"embedded server {children} stopped")


def test_monitor_queries_are_the_evaluations_alone_unless_sharpness_is_asked_for(reference) -> None:
    result = json.loads((reference["run"] / "result.json").read_text())
    assert result["sharpness"] == {}  # no --probe-sharpness: no probe at the switch or the end
    evaluated = [line for line in log_lines(reference["run"]) if "val_accuracy" in line]  # val + test each
    # a monitor evaluation at the last tell is the final one, scored once
    last = {line["tells"] for line in evaluated if line["stage"] == "monitor"} & {evaluated[-1]["tells"]}
    assert result["budget"]["monitor_queries"] == 2 * (len(evaluated) - len(last))
    assert result["queries"] <= BUDGET


def test_eval_every_zero_charges_only_the_zero_shot_and_final_evaluations(tmp_path) -> None:
    spent = {}
    with EmbeddedServer(**TINY) as server:
        for name, budget, every in (("short", 20, 0), ("long", 60, 0), ("monitored", 60, 10)):
            command = [SHARPZO, "tune", "--server", server.url, "--out", str(tmp_path / name), "--dataset", "animals",
                       "--shots", "2", "--method", "zo-sgd", "--dim", "8", "--budget", str(budget),
                       "--eval-every", str(every), "--seed", "3", "--no-progress"]
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, done.stdout + done.stderr
            spent[name] = json.loads((tmp_path / name / "result.json").read_text())["budget"]
    # three times the steps, the same monitor charge: nothing is evaluated per step
    assert spent["long"]["queries"] == 3 * spent["short"]["queries"] == 60
    assert spent["long"]["monitor_queries"] == spent["short"]["monitor_queries"]
    # while --eval-every 10 adds a validation and a test query at 10, 20, ..., 50 queries; the one at 60 is the final
    # evaluation, scored once
    assert spent["monitored"]["monitor_queries"] == spent["long"]["monitor_queries"] + 2 * 5
    stages = [line["stage"] for line in log_lines(tmp_path / "monitored") if "val_accuracy" in line]
    assert stages == ["zero-shot"] + ["monitor"] * 6 + ["final"]
    evaluated = [line["stage"] for line in log_lines(tmp_path / "long") if "val_accuracy" in line]
    assert evaluated == ["zero-shot", "final"]


@pytest.mark.parametrize("budget, warned", [(0, False), (5, True)])
def test_only_a_budget_too_small_for_the_first_batch_warns(tmp_path, caplog, budget, warned) -> None:
    """Budget 0 asks for zero-shot only (the load benches' warm-up): nothing to warn about."""
    from sharpzo.client.runner import tune

    with EmbeddedServer(**TINY) as server, caplog.at_level(logging.WARNING, logger="sharpzo.client.tune"):
        result = tune("animals", server=server.url, method="bbt", budget=budget, shots=2, dim=8,
                      eval_every=0, progress=False, out=tmp_path / "run")
    assert result.queries == 0
    assert ("nothing was tuned" in caplog.text) == warned
