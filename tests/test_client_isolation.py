"""Which package may import which, checked in fresh interpreters by what lands in ``sys.modules``.

``FORBIDDEN`` is the one rule set, package by package (README "Architecture"):

- ``shared`` (the wire protocol) imports no other ``sharpzo`` package and no model code.
- ``data`` is used by every side: it imports ``shared`` only, no model code.
- ``client`` is strictly black-box: no torch, open_clip or torchvision, no ``server`` or ``tools``.
- ``server`` is served alone: no ``client`` and no ``tools``.
- ``tools`` (offline model work) uses ``server`` and ``data``, never ``client``.

pyarrow (needed only to read the groceries dataset) is not imported by ``shared``, ``data`` or
``client`` either, so a plain client install imports without it. Each package's ruff.toml bans the
same imports statically (flake8-tidy-imports banned-api); a test below keeps the two lists equal.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import pkgutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

PACKAGES = ("shared", "data", "client", "server", "tools")
MODEL_CODE = ("torch", "open_clip", "torchvision")
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "shared": (*MODEL_CODE, "sharpzo.data", "sharpzo.client", "sharpzo.server", "sharpzo.tools"),
    "data": (*MODEL_CODE, "sharpzo.client", "sharpzo.server", "sharpzo.tools"),
    "client": (*MODEL_CODE, "sharpzo.server", "sharpzo.tools"),
    "server": ("sharpzo.client", "sharpzo.tools"),
    "tools": ("sharpzo.client",),
}
# Not forbidden, but not imported at module level either: only the groceries reader needs it.
LAZY: dict[str, tuple[str, ...]] = {"shared": ("pyarrow",), "data": ("pyarrow",), "client": ("pyarrow",)}
SRC = Path(__file__).resolve().parents[1] / "src" / "sharpzo"


def submodules(package: ModuleType) -> list[str]:
    found = [info.name for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")]
    # ray_serve, an optional deployment front, needs ray
    has_ray = importlib.util.find_spec("ray") is not None
    return [package.__name__, *(m for m in found if has_ray or not m.endswith(".ray_serve"))]


# Two fresh interpreters import the packages in these orders; each package is charged with the modules that first
# appear while it is imported. That is all it imports: a package forbidden something is imported before anything
# that may load it (client before server and tools), and the packages before it are checked clean themselves.
ORDERS = (("shared", "data", "client"), ("server", "tools"))


def imported_in_order(packages: tuple[str, ...]) -> subprocess.Popen[str]:
    modules = [submodules(importlib.import_module(f"sharpzo.{p}")) for p in packages]
    code = (
        "import importlib, json, sys\n"
        "new = []\n"
        f"for group in {modules!r}:\n"
        "    before = set(sys.modules)\n"
        "    for name in group:\n"
        "        importlib.import_module(name)\n"
        "    new.append(sorted(set(sys.modules) - before))\n"
        "print(json.dumps(new))\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def first_imported_by() -> dict[str, list[str]]:
    running = [(order, imported_in_order(order)) for order in ORDERS]  # side by side
    found: dict[str, list[str]] = {}
    for order, process in running:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output
        found.update(zip(order, json.loads(output.splitlines()[-1]), strict=True))
    return found


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(f"{p}.") for p in prefixes)


def test_every_package_has_rules_and_modules() -> None:
    on_disk = {p.parent.name for p in SRC.glob("*/*.py")}  # tools is a namespace package: no __init__.py
    assert on_disk == set(PACKAGES) == set(FORBIDDEN) == {p for order in ORDERS for p in order}
    assert "sharpzo.client.optim.base" in submodules(importlib.import_module("sharpzo.client"))
    assert "sharpzo.tools.agreement" in submodules(importlib.import_module("sharpzo.tools"))


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_what_it_may(package: str, first_imported_by: dict[str, list[str]]) -> None:
    loaded = first_imported_by[package]
    assert set(submodules(importlib.import_module(f"sharpzo.{package}"))) <= set(loaded)
    bad = [m for m in loaded if within(m, FORBIDDEN[package] + LAZY.get(package, ()))]
    assert not bad, bad


@pytest.mark.parametrize("package", PACKAGES)
def test_ruff_bans_the_same_imports(package: str) -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((SRC / package / "ruff.toml").read_text())
    tidy = config["lint"]["flake8-tidy-imports"]
    assert sorted(tidy["banned-api"]) == sorted(FORBIDDEN[package])
    assert sorted(tidy.get("banned-module-level-imports", [])) == sorted(LAZY.get(package, ()))
