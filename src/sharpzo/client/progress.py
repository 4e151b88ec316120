"""A rich progress bar for a tuning run: queries of the budget, stage, loss, accuracies."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .settings import TuneSettings


class TuneProgress:
    def __init__(self, settings: TuneSettings, enabled: bool = True) -> None:
        self.enabled = enabled
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("queries"),
            TextColumn("{task.fields[stage]}"),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("train acc {task.fields[acc]}"),
            TextColumn("best val {task.fields[val]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not enabled,
        )
        self._task = self._progress.add_task(
            settings.method, total=settings.budget, stage="", loss="-", acc="-", val="-"
        )

    def __enter__(self) -> TuneProgress:
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def update(self, queries: int, stage: str, loss: float | None, acc: float | None, best_val: float) -> None:
        self._progress.update(
            self._task,
            completed=queries,
            stage=stage,
            loss="-" if loss is None else f"{loss:.3f}",
            acc="-" if acc is None else f"{acc:.1%}",
            val="-" if best_val == float("-inf") else f"{best_val:.1%}",
        )
