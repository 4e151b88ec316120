"""Accuracy against queries, one line per run directory, with the returned prompt starred.

A finished run (one with result.json) stars the prompt it returned (``selected``) and, where
that is not the final iterate, marks the final one with a cross.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.typing import ColorType  # noqa: E402


def read_curve(run_dir: Path) -> tuple[list[int], list[float]]:
    """(queries, test accuracy) at every logged test evaluation of a run."""
    queries, accuracy = [], []
    for line in (Path(run_dir) / "log.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if "test_accuracy" in entry:
            queries.append(entry["queries"])
            accuracy.append(entry["test_accuracy"])
    return queries, accuracy


def run_label(run_dir: Path) -> str:
    try:
        config = json.loads((Path(run_dir) / "config.json").read_text())
        return f"{config['settings']['method']} (seed {config['settings']['seed']})"
    except (OSError, ValueError, KeyError):
        return Path(run_dir).name


def read_result(run_dir: Path) -> dict[str, Any] | None:
    try:
        result: dict[str, Any] = json.loads((Path(run_dir) / "result.json").read_text())
        return result
    except (OSError, ValueError):
        return None


def _mark_choice(ax: Axes, result: dict[str, Any], color: ColorType) -> None:
    ax.plot(result["selected_queries"], 100 * result["test_accuracy"], marker="*", markersize=13, color=color,
            linestyle="none", label=f"returned ({result['selected']})")
    if result["selected"] != "final":
        ax.plot(result["queries"], 100 * result["final_test_accuracy"], marker="x", markersize=9, color=color,
                linestyle="none", label="final iterate (not returned)")


def plot_runs(run_dirs: list[Path], out: Path, title: str = "Test accuracy against queries") -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run_dir in run_dirs:
        queries, accuracy = read_curve(run_dir)
        (line,) = ax.plot(queries, [100 * a for a in accuracy], marker="o", markersize=3, label=run_label(run_dir))
        result = read_result(run_dir)
        if result is not None and "selected" in result:
            _mark_choice(ax, result, line.get_color())
    ax.set_xlabel("queries (loss evaluations on the k-shot set)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
