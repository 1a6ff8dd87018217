"""`prunekit report`: one self-contained HTML page comparing runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunekit.cli.common import OverwriteOption, stdout


def report(
    runs: Annotated[list[Path], typer.Argument(help="Run directories: sweeps (sweep.json), prune or recover outputs "
                                               "(prunekit.json).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write.")] = Path("report.html"),
    title: Annotated[str | None, typer.Option(help="Page title.  [default: from the runs]")] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Write one self-contained HTML page (inline SVG plots, no network) comparing RUNS: perplexity and zero-shot
    accuracy vs sparsity per method, per-layer sparsity, size and time, recoveries, and every recipe.

      prunekit report out/sweep out/smol-wanda50-lora --out report.html
    """
    from prunekit.report import write_report

    path = write_report(runs, out, title, overwrite=overwrite)
    stdout.print(f"saved: {path}")
