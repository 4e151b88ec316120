"""The ``sharpzo`` command: serve, tune, eval, plot, keys."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sharpzo.data.catalog import DATASETS
from .optim import OPTIMIZERS
from .prompt import DEFAULT_ALPHA

console = Console()


def _option_help() -> str:
    lines = ["optimiser options (--opt NAME=VALUE, repeatable):"]
    for name, cls in OPTIMIZERS.items():
        lines.append(f"  {name}:")
        for f in dataclasses.fields(cls.config_type):
            default = f.default if f.default is not dataclasses.MISSING else "?"
            lines.append(f"    {f.name} (default {default!r}): {f.metadata.get('help', '')}")
    return "\n".join(lines)


def _parse_option(text: str) -> tuple[str, Any]:
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


def _add_server_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server", default=os.environ.get("SHARPZO_SERVER"),
        help="URL of a SharpZO server (env SHARPZO_SERVER). Without it, an embedded server with the stand-in "
        "model starts on loopback for this command.",
    )
    parser.add_argument("--api-key", default=os.environ.get("SHARPZO_API_KEY"), help="API key (env SHARPZO_API_KEY)")


def _add_data_args(parser: argparse.ArgumentParser, own_data: bool = False) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", choices=DATASETS, help="a built-in dataset (leak-free few-shot protocol)")
    if own_data:
        source.add_argument(
            "--data", type=Path, metavar="PATH",
            help="your own images: a folder with one sub-folder per class, or a CSV file with a 'path,label' header "
            "(paths relative to the CSV's folder)",
        )
        parser.add_argument(
            "--test-data", type=Path, metavar="PATH",
            help="test images in the same forms as --data; by default a seeded part of what the k-shot draw leaves",
        )
        parser.add_argument("--allow-fewer", action="store_true",
                            help="let classes with fewer than --shots images train on all they have")
    parser.add_argument("--shots", type=int, default=16, help="images per class in the training set (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the few-shot draw, projection and optimiser")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sharpzo",
        description="Black-box prompt tuning for CLIP through an inference API: SharpZO and its baselines.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("serve", help="run the inference server (see `sharpzo serve --help`)", add_help=False)
    sub.add_parser("keys", help="manage API keys in the server's ledger (see `sharpzo keys --help`)", add_help=False)

    tune = sub.add_parser(
        "tune",
        help="tune a soft prompt within a query budget",
        description="Tune a soft text prompt for a labelled image set through the server's API alone. "
        "Writes a run directory with config.json, log.jsonl (one line per iteration), checkpoint.pkl, "
        "prompt.npz, result.json and accuracy.png.",
        epilog=_option_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_server_args(tune)
    _add_data_args(tune, own_data=True)
    tune.add_argument("--method", choices=sorted(OPTIMIZERS), default="sharpzo", help="optimiser (default sharpzo)")
    tune.add_argument("--budget", type=int, default=8000, help="most queries the method may spend (default 8000)")
    tune.add_argument("--out", type=Path, help="run directory (default runs/<data>-<method>-s<seed>)")
    tune.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    tune.add_argument("--dim", type=int, default=512, help="dimension d of the tuned vector w (default 512)")
    tune.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                      help=f"projection scale in token-embedding spreads per unit of w (default {DEFAULT_ALPHA})")
    tune.add_argument("--eval-every", type=int, default=1000,
                      help="queries between test/validation evaluations of the current prompt (default 1000; "
                      "these are charged by the server but not against --budget)")
    tune.add_argument("--augment", action="store_true", help="encode training images with one random augmented view")
    tune.add_argument("--concurrency", type=int, default=4, help="requests in flight at once (default 4)")
    tune.add_argument("--opt", action="append", type=_parse_option, default=[], metavar="NAME=VALUE",
                      help="an optimiser option (see below)")
    tune.add_argument("--no-progress", action="store_true", help="no progress bar")

    evaluate = sub.add_parser("eval", help="test accuracy of a tuned prompt (or zero-shot)",
                              description="Evaluate a prompt.npz from a run (or zero-shot with no --prompt) on a "
                              "dataset's held-out evaluation set.")
    _add_server_args(evaluate)
    _add_data_args(evaluate)
    evaluate.add_argument("--prompt", type=Path, help="prompt.npz written by `sharpzo tune`; omit for zero-shot")

    plot = sub.add_parser("plot", help="plot test accuracy against queries for run directories")
    plot.add_argument("runs", nargs="+", type=Path, help="run directories written by `sharpzo tune`")
    plot.add_argument("-o", "--output", type=Path, default=Path("accuracy.png"), help="PNG to write")
    plot.add_argument("--title", default="Test accuracy against queries")
    return parser


def _forward(module: str, argv: list[str]) -> None:
    os.execv(sys.executable, [sys.executable, "-m", module, *argv])


def _print_result(result: Any) -> None:
    table = Table(title=f"{result.method}: {result.run_dir}")
    for column in ("zero-shot test acc", "tuned test acc", "queries used", "monitor queries", "wall time"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{result.zero_shot_test_accuracy:.1%}",
        f"{result.test_accuracy:.1%}",
        f"{result.budget['queries']} / {result.budget['max_queries']}",
        str(result.budget["monitor_queries"]),
        f"{result.wall_seconds:.0f} s",
    )
    console.print(table)


def cmd_tune(args: argparse.Namespace) -> None:
    from .plot import plot_runs
    from .runner import tune

    result = tune(
        args.dataset or args.data, test_data=args.test_data, allow_fewer=args.allow_fewer, server=args.server,
        api_key=args.api_key, method=args.method, budget=args.budget,
        shots=args.shots, seed=args.seed, out=args.out, resume=args.resume, progress=not args.no_progress,
        dim=args.dim, alpha=args.alpha, eval_every=args.eval_every, augment=args.augment,
        concurrency=args.concurrency, options=dict(args.opt),
    )
    plot_runs([result.run_dir], result.run_dir / "accuracy.png")
    _print_result(result)
    console.print(f"tuned prompt: {result.run_dir / 'prompt.npz'}; curve: {result.run_dir / 'accuracy.png'}")


def cmd_eval(args: argparse.Namespace) -> None:
    from .evaluate import evaluate_prompt

    accuracy = asyncio.run(
        evaluate_prompt(args.dataset, args.prompt, args.server, args.api_key, args.shots, args.seed)
    )
    print(json.dumps(accuracy))


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C, so an embedded server is stopped too


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, _terminate)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        _forward("sharpzo.server", argv[1:])
    if argv and argv[0] == "keys":
        _forward("sharpzo.server.keys", argv[1:])
    args = build_parser().parse_args(argv)
    try:
        {"tune": cmd_tune, "eval": cmd_eval, "plot": cmd_plot}[args.command](args)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; a tuning run continues with the same command plus --resume[/]")
        raise SystemExit(130) from None
    except (ValueError, RuntimeError) as exc:
        console.print(f"[red]sharpzo {args.command}: {exc}[/]")
        raise SystemExit(1) from exc


def cmd_plot(args: argparse.Namespace) -> None:
    from .plot import plot_runs

    console.print(f"wrote {plot_runs(args.runs, args.output, args.title)}")


if __name__ == "__main__":
    main()
