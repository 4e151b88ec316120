"""SharpZO against its peers at equal query budgets, over seeds, on the leak-free protocol.

    python bench/compare.py --dataset groceries --seeds 0 1 2 --budget 20000 \
        --config sharpzo=sharpzo:switch_queries=6000 --config bbt=bbt --config zo-sgd=zo-sgd \
        --config spsa-gc=spsa-gc --out bench/results/compare

Each run is a real `tune` against one embedded stand-in server (or --server URL), several
at once so that the server is kept busy. Finished runs are kept and an
interrupted grid resumes. Writes, under OUT/DATASET: curves.png (mean ± SE test accuracy
against queries), summary.md (accuracy at fixed budgets, queries to reach given
accuracies, paired differences against --reference) and summary.json.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
from pathlib import Path

import numpy as np
from aggregate import (
    config_curves,
    final_budget,
    markdown_table,
    pct,
    plot_curves,
    plot_sharpness,
    queries_to_reach,
    se,
    sharpness_at,
)
from grid import RunConfig, run_grid
from scipy import stats


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="groceries")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", type=int, default=20000)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--config", action="append", type=RunConfig.parse, required=True,
                        help="NAME=METHOD[:option=json,...], e.g. sharpzo-es=sharpzo:sharpness=\"es\"")
    parser.add_argument("--reference", action="append", default=[],
                        help="config to pair the others against (repeatable; default: the first config)")
    parser.add_argument("--reach-of", action="append", default=[],
                        help="also report queries to reach this config's final mean accuracy (repeatable)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[1000, 5000, 20000], help="table columns")
    parser.add_argument("--whitebox", type=Path, help="bench/whitebox.py output, drawn as the white-box reference")
    parser.add_argument("--equivalence", type=float, metavar="POINTS",
                        help="also test each pair against --reference for equivalence within ±POINTS (TOST, 5%%)")
    parser.add_argument("--parallel", type=int, default=3, help="runs in flight at once")
    parser.add_argument("--server", help="server URL; default: an embedded stand-in server")
    parser.add_argument("--out", type=Path, default=Path("bench/results/compare"))
    return parser.parse_args()


def equivalence_row(label: str, diff: np.ndarray, margin: float) -> list[str]:
    """Paired difference in points against ±``margin`` points: two one-sided t-tests at 5% each.

    "equivalent" when the 90% interval lies inside (-margin, margin), which rules an effect of that size out;
    "effect beyond the margin" when it lies wholly outside, which shows one; else "inconclusive". The 95%
    interval says whether the difference is nonzero at all.
    """
    points = 100 * diff
    mean, error, df = points.mean(), se(points), len(points) - 1
    low90, high90 = mean + np.array([-1, 1]) * stats.t.ppf(0.95, df) * error
    low95, high95 = mean + np.array([-1, 1]) * stats.t.ppf(0.975, df) * error
    if -margin < low90 and high90 < margin:
        verdict = f"equivalent within ±{margin:g}"
    elif low90 > margin or high90 < -margin:
        verdict = f"effect beyond ±{margin:g}"
    else:
        verdict = "inconclusive"
    nonzero = "yes" if low95 > 0 or high95 < 0 else "no"
    return [label, f"{mean:+.1f} ± {error:.1f}", f"[{low90:+.1f}, {high90:+.1f}]", f"[{low95:+.1f}, {high95:+.1f}]",
            nonzero, verdict]


def model_line(runs: dict[str, list[Path]]) -> str:
    """The served model of the first run, with the checkpoint's sha256 when the file is readable here."""
    first = next(iter(runs.values()))[0]
    model = json.loads((first / "config.json").read_text()).get("model") or {}
    line = f"Model: `{model.get('name')}`, weights `{model.get('pretrained')}`"
    weights = Path(model.get("pretrained") or "")
    if weights.is_file():
        line += f" (sha256 {hashlib.sha256(weights.read_bytes()).hexdigest()[:16]}…)"
    return line + "."


def summarise(args: argparse.Namespace, runs: dict[str, list[Path]]) -> str:
    grid = np.arange(0, args.budget + 1, args.eval_every or args.budget)  # --eval-every 0: zero-shot and final
    curves = config_curves(runs, grid)
    finals = {name: np.array([final_budget(r)["test_accuracy"] for r in dirs]) for name, dirs in runs.items()}
    zero_shot = np.mean([final_budget(r)["zero_shot_test_accuracy"] for dirs in runs.values() for r in dirs])
    references = {f"zero-shot {zero_shot:.1%}": zero_shot}
    if args.whitebox and args.whitebox.exists():
        whitebox = json.loads(args.whitebox.read_text())
        label = {"text": "CoOp", "visual": "VPT-shallow", "joint": "CoOp + VPT"}[whitebox.get("prompt", "text")]
        accuracy = whitebox["tuned_test_mean"]
        references[f"white-box {label} {accuracy:.1%} (backprop, server side)"] = accuracy
    out = args.out / args.dataset
    plot_curves(curves, grid, out / "curves.png", f"{args.dataset} {args.shots}-shot, seeds {args.seeds}", references)

    budgets = [b for b in args.budgets if b <= args.budget]
    columns = [int(np.flatnonzero(grid <= b)[-1]) for b in budgets]
    rows = []
    for name, values in curves.items():
        spent = np.mean([final_budget(r)["queries"] for r in runs[name]])
        rows.append([name, *[pct(values[:, c]) for c in columns], pct(finals[name]), f"{spent:.0f}"])
    table = markdown_table(["config", *[f"test % @ {b}" for b in budgets], "final test %", "queries used"], rows)

    pair_with = [r for r in args.reference if r in curves] or [next(iter(runs))]
    reference = pair_with[0]
    targets = [(f"to {100 * (zero_shot + d):.1f}% (zero-shot + {100 * d:.0f})", zero_shot + d) for d in (0.02, 0.05)]
    for name in [reference, *[r for r in args.reach_of if r != reference and r in curves]]:
        final = curves[name][:, -1].mean()
        targets.append((f"to {name}'s final {100 * final:.1f}%", final))
    reach_rows = []
    for name, values in curves.items():
        mean_curve = values.mean(0)
        cells = []
        for _, target in targets:
            hit = queries_to_reach(mean_curve, grid, target - 1e-9)
            cells.append("not reached" if hit is None else str(hit))
        reach_rows.append([name, *cells])
    reach = markdown_table(["config (mean curve over seeds)", *[label for label, _ in targets]], reach_rows)

    paired_rows = []
    zs = {name: np.array([final_budget(r)["zero_shot_test_accuracy"] for r in runs[name]]) for name in curves}

    def paired(label: str, diff: np.ndarray) -> list[str]:
        error = se(diff)
        verdict = "yes" if abs(diff.mean()) > 2 * error else "no"
        return [label, f"{100 * diff.mean():+.1f}", f"{100 * error:.1f}", verdict]

    pairs_done: set[frozenset[str]] = set()
    for ref in pair_with:
        for name, values in curves.items():
            if name != ref and frozenset((name, ref)) not in pairs_done:
                pairs_done.add(frozenset((name, ref)))
                paired_rows.append(paired(f"{name} − {ref}", values[:, -1] - curves[ref][:, -1]))
    for name, values in curves.items():
        paired_rows.append(paired(f"{name} − zero-shot", values[:, -1] - zs[name]))
    paired = markdown_table(
        [f"paired difference at {args.budget} queries (same seeds)", "mean (points)", "SE", "abs(mean) > 2 SE"],
        paired_rows,
    )

    equivalence = ""
    if args.equivalence is not None:
        equivalence = markdown_table(
            [f"returned prompt, paired (n = {len(args.seeds)})", "mean ± SE (points)", "90% CI", "95% CI",
             "nonzero (95%)", "verdict (TOST)"],
            [equivalence_row(f"{name} − {ref}", finals[name] - finals[ref], args.equivalence)
             for ref in pair_with for name in finals if name != ref],
        )

    sharp = {when: sharpness_at(runs, when) for when in ("switch", "final")}
    if sharp["final"]:
        plot_sharpness(sharp["final"], finals, sharp["switch"], out / "sharpness.png",
                       f"{args.dataset} {args.shots}-shot, {args.budget} queries: flatness against accuracy")

    def sharp_cell(name: str, when: str) -> str:
        values = sharp[when].get(name)
        if values is None:
            return "—"
        return f"{values[:, 0].mean():.2e} ± {se(values[:, 0]):.1e} (loss {values[:, 1].mean():.3f})"

    sharpness = markdown_table(
        ["config", "sharpness at the stage switch (mean ± SE)", "sharpness at the end (mean ± SE)"],
        [[name, sharp_cell(name, "switch"), sharp_cell(name, "final")] for name in runs],
    )

    text = "\n\n".join([
        f"### {args.dataset}, {args.shots}-shot, seeds {args.seeds}, budget {args.budget}",
        f"Zero-shot test accuracy: {zero_shot:.1%}. " + model_line(runs),
        table, reach, paired, *([equivalence] if equivalence else []), sharpness,
        "Configs: " + "; ".join(c.describe() for c in args.config),
    ])
    (out / "summary.md").write_text(text + "\n")
    (out / "summary.json").write_text(json.dumps({
        "grid": grid.tolist(), "curves": {k: v.tolist() for k, v in curves.items()}, "zero_shot": zero_shot,
        "sharpness": {when: {k: v.tolist() for k, v in by_config.items()} for when, by_config in sharp.items()},
    }))
    return text


def main() -> None:
    args = parse_args()
    dirs = asyncio.run(run_grid(args.config, args.dataset, args.seeds, args.budget, args.out, args.shots,
                                args.eval_every, args.parallel, args.server))
    runs: dict[str, list[Path]] = {}
    for run_dir in dirs:
        runs.setdefault(run_dir.parent.name, []).append(run_dir)
    print(summarise(args, runs))


if __name__ == "__main__":
    main()
