"""``sharpzo tune`` / ``sharpzo eval`` flags generated from ``TuneSettings``' fields, and back.

Every flag defaults to "not given" (``argparse.SUPPRESS``), so that a field's default, a
``--preset`` and an explicit flag apply in that order; the help shows the field's default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from collections.abc import Iterable
from typing import Any

from .optim import OPTIMIZERS
from .settings import TuneSettings, presets

ROLE_TITLES = {"run": "the run", "data": "the images", "session": "server and output"}


def parse_option(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` with VALUE read as None, a bool, an int, a float or else a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--opt {text!r}: expected NAME=VALUE")
    name, raw = text.split("=", 1)
    lowered = raw.strip().lower()
    if lowered in ("none", "null"):
        return name.strip(), None
    if lowered in ("true", "false"):
        return name.strip(), lowered == "true"
    for cast in (int, float):
        try:
            return name.strip(), cast(raw)
        except ValueError:
            pass
    return name.strip(), raw


def optimizer_help() -> str:
    lines = ["optimiser options (--opt NAME=VALUE, repeatable):"]
    for name, cls in OPTIMIZERS.items():
        lines.append(f"  {name}:")
        for f in dataclasses.fields(cls.config_type):
            default = f.default if f.default is not dataclasses.MISSING else "?"
            lines.append(f"    {f.name} (default {default!r}): {f.metadata.get('help', '')}")
    return "\n".join(lines)


def preset_help() -> str:
    lines = ["presets (--preset NAME; explicit flags override them):"]
    for name, preset in presets().items():
        values = " ".join(f"{key}={value}" for key, value in preset["settings"].items())
        lines.append(f"  {name}: {preset['help']}\n    {values}")
    return "\n".join(lines)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_setting_flags(parser: argparse.ArgumentParser, names: Iterable[str] | None = None) -> None:
    """One flag per field of ``TuneSettings`` (or of ``names``), in one argument group per role."""
    wanted = None if names is None else set(names)
    hints = typing.get_type_hints(TuneSettings)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(TuneSettings):
        if wanted is not None and f.name not in wanted:
            continue
        role = f.metadata["role"]
        if role not in groups:
            groups[role] = parser.add_argument_group(ROLE_TITLES[role])
        group = groups[role]
        cli = dict(f.metadata["cli"])
        env = cli.pop("env", None)
        help_text = f.metadata["help"]
        common: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        if f.name == "options":
            group.add_argument(
                "--opt", action="append", type=parse_option, metavar="NAME=VALUE", help=help_text, **common
            )
        elif hints[f.name] is bool and f.default is True:
            group.add_argument(_flag(f"no_{f.name}"), action="store_false", help=f"do not {help_text}", **common)
        elif hints[f.name] is bool:
            group.add_argument(_flag(f.name), action="store_true", help=help_text, **common)
        else:
            if env is not None:
                help_text += f" (env {env})"
            elif f.default is not None:
                help_text += f" (default {f.default!r})" if isinstance(f.default, str) else f" (default {f.default})"
            kind = cli.pop("type", None) or _value_type(hints[f.name])
            group.add_argument(_flag(f.name), type=kind, help=help_text, **cli, **common)


def _value_type(hint: Any) -> type:
    """``int`` for ``int``, ``str`` for ``str | None``."""
    return next((arg for arg in typing.get_args(hint) if arg is not type(None)), hint)


def settings_from_args(args: argparse.Namespace) -> TuneSettings:
    """The settings the parsed flags give: defaults, then ``--preset``, then the flags given."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TuneSettings) if hasattr(args, f.name)}
    if "options" in given:
        given["options"] = dict(given["options"])
    for f in dataclasses.fields(TuneSettings):
        env = f.metadata["cli"].get("env")
        if env is not None and f.name not in given and os.environ.get(env):
            given[f.name] = os.environ[env]
    return TuneSettings.build(getattr(args, "preset", None), **given)
