"""Pairing configs that bench/compare.py ran in separate invocations (same seeds, budget and grid).

    python bench/pair_summaries.py bench/results/compare20k-v2/groceries/summary.json \
        bench/results/compare20k-v2-paper/groceries/summary.json

Reads each invocation's summary.json (per-seed curves on a common evaluation grid) and prints,
as markdown, the paired difference of every two configs at the last grid point with its SE, and
the queries each config's mean curve needs to reach every other config's final accuracy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from aggregate import markdown_table, queries_to_reach, se


def load(paths: list[Path]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    grid: np.ndarray | None = None
    curves: dict[str, np.ndarray] = {}
    for path in paths:
        summary = json.loads(path.read_text())
        this_grid = np.array(summary["grid"])
        if grid is not None and not np.array_equal(grid, this_grid):
            raise SystemExit(f"{path}: its evaluation grid differs from the first summary's; the runs cannot be paired")
        grid = this_grid
        for name, values in summary["curves"].items():
            if name in curves:
                raise SystemExit(f"{path}: config {name!r} appears in two summaries")
            curves[name] = np.array(values)
    seeds = {len(values) for values in curves.values()}
    if len(seeds) != 1:
        raise SystemExit(f"the summaries hold different numbers of seeds ({sorted(seeds)}); the runs cannot be paired")
    assert grid is not None
    return grid, curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("summaries", type=Path, nargs="+", help="summary.json files written by bench/compare.py")
    args = parser.parse_args()
    grid, curves = load(args.summaries)
    names = list(curves)
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            diff = curves[a][:, -1] - curves[b][:, -1]
            error = se(diff)
            rows.append([f"{a} − {b}", f"{100 * diff.mean():+.1f}", f"{100 * error:.1f}",
                         "yes" if abs(diff.mean()) > 2 * error else "no", " ".join(f"{100 * d:+.1f}" for d in diff)])
    print(markdown_table([f"paired difference at {grid[-1]} queries", "mean (points)", "SE", "abs(mean) > 2 SE",
                          "per seed"], rows))
    finals = {name: values[:, -1].mean() for name, values in curves.items()}
    reach = []
    for name, values in curves.items():
        hits = [queries_to_reach(values.mean(0), grid, target - 1e-9) for target in finals.values()]
        reach.append([name, *("not reached" if hit is None else str(hit) for hit in hits)])
    print()
    header = ["mean curve over seeds", *(f"to {n}'s final {100 * f:.1f}%" for n, f in finals.items())]
    print(markdown_table(header, reach))


if __name__ == "__main__":
    main()
