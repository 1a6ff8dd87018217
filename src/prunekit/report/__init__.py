"""A self-contained HTML report of prune, recover and sweep runs: plots as inline SVG, tables, recipes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from prunekit.outputs import atomic_file, check_output
from prunekit.report.runs import Run, layer_sparsity, load_run, load_runs, run_directory
from prunekit.runinfo import VERSION

__all__ = ["Run", "layer_sparsity", "load_run", "load_runs", "write_report"]


def _inputs(run_dirs: Sequence[Path]) -> list[Path]:
    """What the report reads: each path given and, where that names a prunekit.json or sweep.json, its directory."""
    paths = [Path(p).expanduser() for p in run_dirs]
    return list(dict.fromkeys([*paths, *(run_directory(p) for p in paths)]))


def write_report(run_dirs: Sequence[Path], out: Path, title: str | None = None, *, overwrite: bool = False) -> Path:
    """Write one HTML file describing `run_dirs` to `out` (atomically) and return its path.

    Raises PrunekitError, before anything is read or written, for an `out` inside or around a run directory, a
    directory, or an existing file without `overwrite`; and for a missing directory, one prunekit did not write, an
    unreadable file, or a report from another format version; nothing is written then."""
    from prunekit.report.page import render

    inputs = _inputs(run_dirs)
    out = check_output(out, overwrite, inputs=inputs, kind="file")
    runs = load_runs([Path(p) for p in run_dirs])
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    html = render(runs, title or "prunekit report", generated, VERSION)
    # A temporary file beside the target, then a rename: a reader never sees half a page, a crash leaves the old one.
    with atomic_file(out, overwrite, inputs) as temporary:
        temporary.write_text(html, encoding="utf-8")
    return out
