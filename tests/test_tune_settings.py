"""Tune options declared once: CLI flags and tune()'s keywords come from TuneSettings; presets are validated data."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from pathlib import Path

import pytest

from sharpzo.client import tune, tune_async
from sharpzo.client.checkpoint import load_checkpoint
from sharpzo.client.cli import build_parser
from sharpzo.client.flags import settings_from_args
from sharpzo.client.settings import TuneSettings, presets

FIELDS = [f.name for f in dataclasses.fields(TuneSettings)]


def parse(*argv: str) -> TuneSettings:
    return settings_from_args(build_parser().parse_args(["tune", "--dataset", "animals", *argv]))


def test_every_setting_has_a_flag_and_a_keyword() -> None:
    tune_help = build_parser()._subparsers._group_actions[0].choices["tune"].format_help()  # type: ignore[union-attr]
    for f in dataclasses.fields(TuneSettings):
        name = f"no_{f.name}" if f.default is True else f.name  # a flag that turns off what is on by default
        flag = "--opt" if f.name == "options" else "--" + name.replace("_", "-")
        assert flag in tune_help, flag
    for function in (tune, tune_async):
        parameters = inspect.signature(function).parameters
        assert list(parameters) == ["data", "preset", *FIELDS]
        assert parameters["budget"].default == TuneSettings().budget
        assert "eval_every:" in (function.__doc__ or "")


def test_flags_give_the_defaults_and_what_was_given() -> None:
    assert parse() == TuneSettings()
    given = parse("--budget", "123", "--no-progress", "--opt", "lr=5", "--opt", "sharpness=cge", "--eval-every", "0",
                  "--out", "runs/x", "--augment")
    assert given == TuneSettings(budget=123, progress=False, options={"lr": 5, "sharpness": "cge"}, eval_every=0,
                                 out=Path("runs/x"), augment=True)


def test_eval_every_zero_is_documented_as_none_between() -> None:
    assert "0: none between the zero-shot and the final evaluation" in dict(
        (f.name, f.metadata["help"]) for f in dataclasses.fields(TuneSettings))["eval_every"]


def test_env_supplies_server_and_key_unless_a_flag_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARPZO_SERVER", "http://env")
    monkeypatch.setenv("SHARPZO_API_KEY", "k")
    assert (parse().server, parse().api_key) == ("http://env", "k")
    assert parse("--server", "http://flag").server == "http://flag"


def test_presets_are_valid_and_flags_override_them() -> None:
    assert presets(), "no presets shipped"
    for name, preset in presets().items():
        assert preset["help"]
        TuneSettings.build(name)  # validated: known fields, method and optimiser options
    demo = parse("--preset", "demo")
    assert demo.budget == presets()["demo"]["settings"]["budget"] and demo.eval_every == 250
    paper = parse("--preset", "sharpzo-paper")
    assert paper.options == presets()["sharpzo-paper"]["settings"]["options"]
    overridden = parse("--preset", "sharpzo-paper", "--budget", "50", "--opt", "lr=7")
    assert overridden.budget == 50 and overridden.options == {**paper.options, "lr": 7}


def test_bad_options_are_refused_with_the_known_names() -> None:
    with pytest.raises(ValueError, match="unknown tune option.*'budgett'.*budget"):
        TuneSettings.build(budgett=5)
    with pytest.raises(ValueError, match="unknown option.*for zo-sgd"):
        TuneSettings(method="zo-sgd", options={"popsize": 4})
    with pytest.raises(ValueError, match="unknown preset"):
        TuneSettings.build("no-such-preset")
    with pytest.raises(ValueError, match="eval_every must be at least 0"):
        TuneSettings(eval_every=-1)


def test_step_counts_are_refused_for_a_method_without_steps_and_widen_the_gate_otherwise() -> None:
    """--pipeline and --directions count random-direction steps: bbt, which has none, would ignore them silently."""
    for flag in ("pipeline", "directions"):
        with pytest.raises(ValueError, match=f"--{flag} counts the random-direction steps.*bbt has none"):
            TuneSettings(method="bbt", **{flag: "3"})
    assert TuneSettings(method="bbt", options={"pipeline": 3}).requests_in_flight() == 10
    assert TuneSettings(method="zo-sgd", pipeline="16").requests_in_flight() == 18
    assert TuneSettings(method="sharpzo", pipeline="auto", options={"stage1_pipeline": 12}).requests_in_flight() == 14
    assert TuneSettings(method="zo-sgd", pipeline="16", concurrency=3).requests_in_flight() == 3


def test_unreadable_checkpoint_says_why(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pkl"
    path.write_bytes(b"cnomodule\nGone\n)R.")  # a class that this version lacks
    with pytest.raises(RuntimeError, match=r"classes this one lacks \(No module named 'nomodule'\).*fresh --out"):
        load_checkpoint(path, TuneSettings().run_settings())
    # format 1, whose state held sharpzo.client.api.Budget, a class that is gone: refused with its reason
    budget = b"csharpzo.client.api\nBudget\n)\x81"
    path.write_bytes(b"\x80\x02}(X\x06\x00\x00\x00formatK\x01X\x05\x00\x00\x00state" + budget + b"u.")
    with pytest.raises(RuntimeError, match="written before the optimisers' constants moved"):
        load_checkpoint(path, TuneSettings().run_settings())
    path.write_bytes(pickle.dumps({"format": 99, "settings": {}, "state": None}))
    with pytest.raises(RuntimeError, match="unknown checkpoint format 99"):
        load_checkpoint(path, TuneSettings().run_settings())
