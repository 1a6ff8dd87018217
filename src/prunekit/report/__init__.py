"""A self-contained HTML report of prune, recover and sweep runs: plots as inline SVG, tables, recipes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from prunekit.errors import PrunekitError
from prunekit.report.runs import Run, layer_sparsity, load_run, load_runs

__all__ = ["Run", "layer_sparsity", "load_run", "load_runs", "write_report"]


def write_report(run_dirs: Sequence[Path], out: Path, title: str | None = None) -> Path:
    """Write one HTML file describing `run_dirs` to `out` (atomically) and return its path.

    Raises PrunekitError for a missing directory, one prunekit did not write, or a report from another format
    version; nothing is written then."""
    import prunekit
    from prunekit.report.page import render

    out = Path(out).expanduser()
    if out.is_dir():
        raise PrunekitError(f"{out} is a directory; pass a file name for the report, e.g. {out / 'report.html'}")
    runs = load_runs([Path(p) for p in run_dirs])
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    html = render(runs, title or "prunekit report", generated, prunekit.__version__)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A temporary file beside the target, then a rename: a reader never sees half a page, a crash leaves the old one.
    handle, temporary = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(html)
        os.chmod(temporary, 0o644)  # mkstemp makes it private; a report is meant to be shared like any output
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return out
