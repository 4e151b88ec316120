"""Choosing hyperparameters on the validation set (never the held-out set), queries counted.

    python bench/selection.py --dataset groceries --seeds 100 --budget 3000 \
        --config zo-lr1e-3=zo-sgd:lr=1e-3 --config zo-lr1e-2=zo-sgd:lr=1e-2 ...

Runs each candidate config on selection seeds (disjoint from the evaluation seeds, so the
few-shot draws differ) and ranks the configs of each method by the validation accuracy of
the prompt each run returns (result.json's ``val_accuracy``: the better on validation of
zero-shot and the final prompt, as evaluations come only at the start and the end here; ties,
common on a 300-image validation set at small budgets, broken by the lower final validation
loss); configs of one method that tune different prompt kinds (prompt=...) compete apart. With
more than one seed the table gives each config's SE over seeds and its difference from its method's
chosen config, paired by seed (± SE), so a tie can be told from a lead.
Every query the selection spent, method and monitoring, is summed into the report, because a
user tuning hyperparameters would pay for them too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from aggregate import final_budget, markdown_table, se
from grid import RunConfig, run_grid


def final_val_loss(run_dir: Path) -> float:
    """Validation loss of the final prompt (the log's last line, written after the budget ran out)."""
    last = json.loads((run_dir / "log.jsonl").read_text().splitlines()[-1])
    return float(last.get("val_loss", float("nan")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="groceries")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[100])
    parser.add_argument("--budget", type=int, default=3000)
    parser.add_argument("--config", action="append", type=RunConfig.parse, required=True)
    parser.add_argument("--parallel", type=int, default=3)
    parser.add_argument("--server")
    parser.add_argument("--out", type=Path, default=Path("bench/results/select"))
    args = parser.parse_args()
    dirs = asyncio.run(run_grid(args.config, args.dataset, args.seeds, args.budget, args.out, args.shots,
                                eval_every=args.budget, parallel=args.parallel, server=args.server))
    by_config: dict[str, list[dict]] = defaultdict(list)
    for run_dir in dirs:
        by_config[run_dir.parent.name].append({**final_budget(run_dir), "val_loss": final_val_loss(run_dir)})
    methods = {c.name: c for c in args.config}
    best: dict[str, tuple[str, tuple[float, float]]] = {}
    spent = 0
    val: dict[str, np.ndarray] = {}
    val_loss: dict[str, float] = {}
    for name, results in by_config.items():
        val[name] = np.array([r["val_accuracy"] for r in results])
        val_loss[name] = float(np.mean([r["val_loss"] for r in results]))
        spent += sum(r["budget"]["total_queries"] for r in results)
        group, key = methods[name].group, (float(val[name].mean()), -val_loss[name])
        if group not in best or key > best[group][1]:
            best[group] = (name, key)
    chosen = {group: name for group, (name, _) in best.items()}
    several = len(args.seeds) > 1
    rows: list[list[str]] = []
    for name in by_config:
        pick = chosen[methods[name].group]
        paired = 100 * (val[name] - val[pick])
        rows.append([name, methods[name].group, f"{100 * val[name].mean():.1f}",
                     f"{100 * se(val[name]):.1f}" if several else "", f"{val_loss[name]:.4f}",
                     f"{paired.mean():+.1f} ± {se(paired):.1f}" if several and name != pick else "",
                     "chosen" if name == pick else ""])
    text = "\n\n".join([
        f"### Selection on {args.dataset} validation, seeds {args.seeds}, {args.budget} queries per run",
        markdown_table(["config", "method (prompt)", "val acc %", "SE", "val loss", "− chosen, paired", ""], rows),
        f"Queries spent on selection, all runs and monitoring included: {spent}.",
    ])
    out = args.out / args.dataset
    out.mkdir(parents=True, exist_ok=True)
    (out / "selection.md").write_text(text + "\n")
    (out / "selection.json").write_text(json.dumps({"chosen": chosen, "queries": spent}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
