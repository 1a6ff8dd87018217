"""Writing outputs so that an interrupted run never leaves something that looks complete."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prunekit.errors import PrunekitError


def check_output_free(out: Path, overwrite: bool, inputs: tuple[Path, ...] = ()) -> None:
    """Fail before any work when the output cannot be written."""
    resolved = out.expanduser().resolve()
    for source in inputs:
        src = source.expanduser().resolve()
        if resolved == src or src.is_relative_to(resolved) or resolved.is_relative_to(src):
            raise PrunekitError(f"output {out} would overwrite the input {source}: choose another --out")
    if out.exists() and not overwrite:
        raise PrunekitError(f"output {out} already exists: choose another --out or pass --overwrite")
    if out.exists() and not out.is_dir():
        raise PrunekitError(f"output {out} exists and is not a directory")


@contextmanager
def atomic_directory(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; rename it to `out` only when the block finishes without error."""
    out = out.expanduser()
    check_output_free(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
