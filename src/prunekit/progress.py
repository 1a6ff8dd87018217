"""One console and one progress-bar style for every long step (download, convert, calibrate, prune, eval)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

console = Console(stderr=True)


def progress_bar(download: bool = False) -> Progress:
    """A bar counting steps, or bytes with a transfer speed when `download`."""
    counters = (DownloadColumn(), TransferSpeedColumn()) if download else (MofNCompleteColumn(),)
    return Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        *counters,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
