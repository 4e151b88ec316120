"""Curves, tables and plots over seeds from tuning run directories."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sharpzo.client.plot import read_curve  # noqa: E402


def accuracy_at(run_dir: Path, grid: np.ndarray) -> np.ndarray:
    """Test accuracy of the run's prompt as it stood after q queries, for each q of ``grid``."""
    queries, accuracy = read_curve(run_dir)
    index = np.searchsorted(np.asarray(queries), grid, side="right") - 1
    return np.asarray(accuracy)[np.clip(index, 0, None)]


def config_curves(runs: dict[str, list[Path]], grid: np.ndarray) -> dict[str, np.ndarray]:
    """[seeds, len(grid)] accuracies per config."""
    return {name: np.stack([accuracy_at(r, grid) for r in dirs]) for name, dirs in runs.items()}


def queries_to_reach(curve: np.ndarray, grid: np.ndarray, target: float) -> int | None:
    hit = np.flatnonzero(curve >= target)
    return int(grid[hit[0]]) if hit.size else None


def final_budget(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def se(values: np.ndarray) -> float:
    """The standard error of the mean over seeds (NaN for one seed)."""
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")


def sharpness_at(runs: dict[str, list[Path]], when: str) -> dict[str, np.ndarray]:
    """[seeds, 2] (sharpness, training loss) per config from each run's result.json at ``when`` ("switch" or
    "final"), for the configs whose every run measured it there."""
    out = {}
    for name, dirs in runs.items():
        probes = [final_budget(r).get("sharpness", {}).get(when) for r in dirs]
        if probes and all(probes):
            out[name] = np.array([[p["sharpness"], p["loss"]] for p in probes])
    return out


def save_figure(fig: plt.Figure, out: Path, title: str | None = None) -> None:
    if title is not None:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _save(fig: plt.Figure, ax: plt.Axes, title: str, out: Path) -> None:
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, out)


def _error_bar(values: np.ndarray) -> float:
    return float(np.nan_to_num(se(values)))  # no bar for one seed


def plot_sharpness(finals: dict[str, np.ndarray], accuracy: dict[str, np.ndarray], switch: dict[str, np.ndarray],
                   out: Path, title: str) -> None:
    """Each config's sharpness at the end against its final test accuracy (mean ± SE over seeds), with its sharpness
    at SharpZO's stage switch drawn hollow at the same accuracy: does a flatter end point buy accuracy?"""
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, values in finals.items():
        acc = 100 * accuracy[name]
        line = ax.errorbar(values[:, 0].mean(), acc.mean(), xerr=_error_bar(values[:, 0]), yerr=_error_bar(acc),
                           fmt="o", capsize=3, label=f"{name} (n={len(values)})")
        if name in switch:
            ax.errorbar(switch[name][:, 0].mean(), acc.mean(), xerr=_error_bar(switch[name][:, 0]), fmt="o", mfc="none",
                        color=line[0].get_color(), capsize=3)
            ax.annotate("", (values[:, 0].mean(), acc.mean()), (switch[name][:, 0].mean(), acc.mean()),
                        arrowprops={"arrowstyle": "->", "color": line[0].get_color(), "alpha": 0.5})
    # symmetric log: a CMA mean can sit where random perturbations lower the loss (negative sharpness)
    ax.set_xscale("symlog", linthresh=1e-5)
    ax.axvline(0, color="gray", linewidth=1)
    ax.set_xlabel("sharpness: mean training-loss rise under random perturbations (symlog; hollow: at the stage switch)")
    ax.set_ylabel("final held-out test accuracy (%), mean ± SE")
    _save(fig, ax, title, out)


def plot_curves(
    curves: dict[str, np.ndarray], grid: np.ndarray, out: Path, title: str, references: dict[str, float]
) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, values in curves.items():
        mean = 100 * values.mean(0)
        error = 100 * np.array([_error_bar(column) for column in values.T])
        ax.plot(grid, mean, label=f"{name} (n={len(values)})")
        ax.fill_between(grid, mean - error, mean + error, alpha=0.15)
    for label, value in references.items():
        ax.axhline(100 * value, linestyle="--", linewidth=1, color="gray")
        ax.annotate(label, (grid[-1], 100 * value), ha="right", va="bottom", fontsize=8, color="gray")
    ax.set_xlabel("queries")
    ax.set_ylabel("held-out test accuracy (%), mean ± SE over seeds")
    _save(fig, ax, title, out)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def pct(values: np.ndarray) -> str:
    """Mean ± SE over seeds (± is always SE in BENCHMARKS.md)."""
    return f"{100 * values.mean():.1f} ± {100 * np.nan_to_num(se(values)):.1f}"
