"""The ``sharpzo`` command: serve, tune, eval, plot, keys."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from rich.console import Console
from rich.table import Table

from sharpzo.data.catalog import DATASETS
from sharpzo.data.locate import DatasetNotInstalledError

from .flags import add_setting_flags, optimizer_help, preset_help, settings_from_args
from .install_check import ServerNotInstalled, require_server
from .settings import presets

if TYPE_CHECKING:
    from .tune import TuneResult

console = Console()


def _add_source_args(parser: argparse.ArgumentParser, own_data: bool = False) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", choices=DATASETS, help="a built-in dataset (leak-free few-shot protocol)")
    if own_data:
        source.add_argument(
            "--data", type=Path, metavar="PATH",
            help="your own images: a folder with one sub-folder per class, or a CSV file with a 'path,label' header "
            "(paths relative to the CSV's folder)",
        )


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
        description="Tune a soft prompt (text, visual or both: --prompt) for a labelled image set through the "
        "server's API alone. "
        "Returns the evaluated prompt (zero-shot, each --eval-every point, the final iterate) that is best on "
        "validation accuracy; a tie goes to the earlier, so zero-shot wins ties and a run never returns a prompt "
        "that validates worse than zero-shot. Writes a run directory with config.json, log.jsonl (one line per "
        "iteration and per evaluation), checkpoint.pkl, prompt.npz (the returned prompt), result.json (which was "
        "returned: selected) and accuracy.png.",
        epilog=f"{preset_help()}\n\n{optimizer_help()}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_source_args(tune, own_data=True)
    tune.add_argument("--preset", choices=sorted(presets()), help="start from a named set of options (see below)")
    add_setting_flags(tune)

    evaluate = sub.add_parser("eval", help="test accuracy of a tuned prompt (or zero-shot)",
                              description="Evaluate a prompt.npz from a run (or zero-shot with no --prompt) on a "
                              "dataset's held-out evaluation set.")
    _add_source_args(evaluate)
    add_setting_flags(evaluate, ("shots", "seed", "server", "api_key", "ca_bundle"))
    # dest differs from the tune setting `prompt` (the prompt kind), which settings_from_args would read
    evaluate.add_argument("--prompt", type=Path, dest="prompt_file",
                          help="prompt.npz written by `sharpzo tune`; omit for zero-shot")

    plot = sub.add_parser("plot", help="plot test accuracy against queries for run directories")
    plot.add_argument("runs", nargs="+", type=Path, help="run directories written by `sharpzo tune`")
    plot.add_argument("-o", "--output", type=Path, default=Path("accuracy.png"), help="PNG to write")
    plot.add_argument("--title", default="Test accuracy against queries")
    return parser


def _forward(module: str, argv: list[str]) -> None:
    os.execv(sys.executable, [sys.executable, "-m", module, *argv])


def _print_result(result: TuneResult) -> None:
    table = Table(title=f"{result.method}: {result.run_dir}; returned: the {result.selected} prompt")
    for column in ("zero-shot test", "returned test", "returned val", "queries", "monitor", "wall"):
        table.add_column(column, justify="right")
    spend = result.budget
    table.add_row(
        f"{result.zero_shot_test_accuracy:.1%}",
        f"{result.test_accuracy:.1%}",
        f"{result.val_accuracy:.1%}",
        f"{spend.queries}/{spend.max_queries}",
        str(spend.monitor_queries),
        f"{result.wall_seconds:.0f} s",
    )
    if result.selected != "final":
        table.caption = (
            f"final iterate, not returned: test {result.final_test_accuracy:.1%}, val {result.final_val_accuracy:.1%}"
        )
    console.print(table)


def cmd_tune(args: argparse.Namespace) -> None:
    from .plot import plot_runs
    from .runner import run_tune

    result = asyncio.run(run_tune(args.dataset or args.data, settings_from_args(args)))
    plot_runs([result.run_dir], result.run_dir / "accuracy.png")
    _print_result(result)
    console.print(f"tuned prompt: {result.run_dir / 'prompt.npz'}; curve: {result.run_dir / 'accuracy.png'}")


def cmd_eval(args: argparse.Namespace) -> None:
    from .evaluate import evaluate_prompt

    settings = settings_from_args(args)
    accuracy = asyncio.run(
        evaluate_prompt(args.dataset, args.prompt_file, settings.server, settings.api_key, settings.shots,
                        settings.seed, settings.ca_bundle)
    )
    print(json.dumps(accuracy))


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C, so an embedded server is stopped too


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, _terminate)
    argv = list(sys.argv[1:] if argv is None else argv)
    forwarded = {"serve": "sharpzo.server", "keys": "sharpzo.server.keys"}
    if argv and argv[0] in forwarded:
        try:
            require_server(f"`sharpzo {argv[0]}`")
        except ServerNotInstalled as exc:
            _fail(argv[0], exc)
        _forward(forwarded[argv[0]], argv[1:])
    args = build_parser().parse_args(argv)
    try:
        {"tune": cmd_tune, "eval": cmd_eval, "plot": cmd_plot}[args.command](args)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; a tuning run continues with the same command plus --resume[/]")
        raise SystemExit(130) from None
    except (ValueError, RuntimeError, DatasetNotInstalledError) as exc:
        _fail(args.command, exc)


def _fail(command: str, exc: Exception) -> NoReturn:
    """One line on stderr, never a traceback: what went wrong and, where it is an install, the command that fixes it."""
    print(f"sharpzo {command}: {exc}", file=sys.stderr)
    raise SystemExit(1) from exc


def cmd_plot(args: argparse.Namespace) -> None:
    from .plot import plot_runs

    console.print(f"wrote {plot_runs(args.runs, args.output, args.title)}")


if __name__ == "__main__":
    main()
