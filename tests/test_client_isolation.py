"""Which package may import which, checked in fresh interpreters by what lands in ``sys.modules``.

- The client (every module of ``sharpzo.client``) and ``sharpzo.data`` import no torch, open_clip or
  torchvision, and no ``sharpzo.server`` module: the client is strictly black-box.
- pyarrow (needed only to read the groceries dataset) is not imported either, so a plain client
  install imports without it.
- The serving package ``sharpzo.server`` (every module) imports no ``sharpzo.client`` module.
"""

from __future__ import annotations

import importlib.util
import json
import pkgutil
import subprocess
import sys

import sharpzo.client
import sharpzo.data
import sharpzo.server


def submodules(package: object) -> list[str]:
    return [info.name for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")]  # type: ignore[attr-defined]


def imported_after(modules: list[str]) -> list[str]:
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_the_lists_of_modules_are_not_empty() -> None:
    assert "sharpzo.client.optim.base" in submodules(sharpzo.client)
    assert "sharpzo.data.fewshot" in submodules(sharpzo.data)
    assert "sharpzo.server.app" in submodules(sharpzo.server)


def test_client_and_data_import_no_torch_and_no_server() -> None:
    loaded = imported_after(["sharpzo.client", *submodules(sharpzo.client), "sharpzo.data", *submodules(sharpzo.data)])
    assert "sharpzo.client.tune" in loaded and "sharpzo.data.groceries" in loaded
    bad = [m for m in loaded if m.split(".")[0] in ("torch", "open_clip", "torchvision", "pyarrow")
           or m == "sharpzo.server" or m.startswith("sharpzo.server.")]
    assert not bad, bad


def test_server_imports_no_client_module() -> None:
    # ray_serve, an optional deployment front, needs ray
    has_ray = importlib.util.find_spec("ray") is not None
    modules = [m for m in ["sharpzo.server", *submodules(sharpzo.server)] if has_ray or not m.endswith(".ray_serve")]
    loaded = imported_after(modules)
    assert "sharpzo.server.app" in loaded and "torch" in loaded
    bad = [m for m in loaded if m == "sharpzo.client" or m.startswith("sharpzo.client.")]
    assert not bad, bad
