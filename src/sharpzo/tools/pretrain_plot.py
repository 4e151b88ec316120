"""A pretraining run's curves (training loss and logit scale per step) from its ``log.jsonl``, as a PNG.

    python -m sharpzo.tools.pretrain_plot runs/pretrain/sharpzo-standin-v2/log.jsonl out.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_log(log: Path, out: Path, title: str) -> None:
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in rows]
    fig, loss_axis = plt.subplots(figsize=(8, 4.5))
    loss_axis.plot(steps, [r["loss"] for r in rows], color="tab:blue", linewidth=0.8)
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("training loss", color="tab:blue")
    scale_axis = loss_axis.twinx()
    scale_axis.plot(steps, [r["logit_scale"] for r in rows], color="tab:red")
    scale_axis.set_ylabel("logit scale", color="tab:red")
    minutes = rows[-1]["train_seconds"] / 60 if rows else 0.0
    loss_axis.set_title(f"{title}: {len(rows)} steps, {minutes:.1f} min of training")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Plot a pretraining run's loss and logit scale from its log.jsonl.")
    parser.add_argument("log", type=Path, help="the run's log.jsonl (runs/pretrain/MODEL/log.jsonl)")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--title", default="pretraining", help="the plot's title (default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.log.exists():
        raise SystemExit(f"no log at {args.log}: is it a run directory's log.jsonl?")
    plot_log(args.log, args.out, args.title)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
