"""One console and one progress-bar style for every long step (download, convert, calibrate, prune, eval)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

console = Console(stderr=True)
LOG_EVERY = 30.0  # seconds between the progress lines written when the output is not a terminal


class _Progress(Progress):
    """A rich Progress that, when the console is not a terminal (a log file, CI), where rich shows only the final
    state, also writes one plain line per task every LOG_EVERY seconds of work."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._logged: dict[TaskID, float] = {}

    def update(self, task_id: TaskID, **kwargs: Any) -> None:  # type: ignore[override]
        super().update(task_id, **kwargs)
        self._log(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log(task_id)

    def _log(self, task_id: TaskID) -> None:
        if self.console.is_terminal:
            return
        now = time.monotonic()
        last = self._logged.setdefault(task_id, now)
        if now - last < LOG_EVERY:
            return
        self._logged[task_id] = now
        task = self._tasks[task_id]
        total = f"/{task.total:g}" if task.total is not None else ""
        self.console.print(f"{task.description}: {task.completed:g}{total} ({task.elapsed or 0:.0f} s)",
                           markup=False, highlight=False)


def progress_bar(download: bool = False) -> Progress:
    """A bar counting steps, or bytes with a transfer speed when `download`."""
    counters = (DownloadColumn(), TransferSpeedColumn()) if download else (MofNCompleteColumn(),)
    return _Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        *counters,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
