"""The one output guard: every command that writes checks its target here and writes through here.

- `check_output` refuses, before any work, an output that is an input or lies inside or around one, one inside or
  around prunekit's cache, and an existing file or directory without `overwrite`.
- `atomic_directory` / `atomic_file` write into a temporary sibling named `.NAME.partial-PID-XXXX` and rename it
  into place at the end. The temporary directory holds an `INCOMPLETE` marker until the rename, so nothing (prunekit
  or a person) takes it for an output; ones left by killed processes are removed by the next run on that target.
- `work_directory` makes or reuses a resumable work folder (recover checkpoints, corpus steps, sweep points) that
  carries a marker naming its owner; `remove_work_directory` deletes only such a folder, so a mistyped
  `--work-dir` never costs the user a directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from prunekit.assets.cache import cache_dir
from prunekit.errors import PrunekitError
from prunekit.files import temporary_sibling

INCOMPLETE = "INCOMPLETE"  # inside a temporary output until it is renamed into place
WORK_MARKER = ".prunekit-work"  # inside every work folder prunekit made: {"kind": ...}
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?:partial|old)-(?:(?P<pid>\d+)-)?[0-9a-f]{8}$")


def _resolved(path: Path) -> Path:
    return Path(path).expanduser().resolve()


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def _local_inputs(inputs: Iterable[Path | str | None]) -> list[Path]:
    """The inputs that are paths: every Path, and the strings that name an existing file (not hub ids)."""
    paths = []
    for item in inputs:
        if item is None or str(item) == "":
            continue
        path = Path(str(item)).expanduser()
        if isinstance(item, Path) or path.exists():
            paths.append(path)
    return paths


def _refuse_overlaps(path: Path, flag: str, inputs: Iterable[Path | str | None], cache: bool, input_message: str
                     ) -> Path:
    """The resolved `path`, unless it lies inside or around prunekit's cache (allowed with `cache`) or an input;
    `input_message` (with {source} and {flag}) says why an input must not be touched."""
    target = _resolved(path)
    cache_root = _resolved(cache_dir())
    if not cache and _overlaps(target, cache_root):
        raise PrunekitError(f"{flag} {path} is inside prunekit's cache {cache_root} (or holds it), whose models "
                            f"every later run reads: choose another {flag}")
    for source in _local_inputs(inputs):
        if _overlaps(target, _resolved(source)):
            raise PrunekitError(f"{flag} {path} " + input_message.format(source=source, flag=flag))
    return target


def check_output(out: Path, overwrite: bool = False, inputs: Iterable[Path | str | None] = (),
                 kind: str = "directory", flag: str = "--out", cache: bool = False) -> Path:
    """Fail before any work when `out` cannot be written safely; returns it with `~` expanded.

    `inputs` are what the command reads (paths that do not exist, such as hub ids, are ignored); `kind` is
    "directory" or "file"; `cache` is for prunekit's own cache writers, the only ones allowed inside it."""
    out = Path(out).expanduser()
    target = _refuse_overlaps(out, flag, inputs, cache, "would overwrite the input {source} (or lies inside or "
                              "around it): choose another {flag}")
    if out.exists() or out.is_symlink():
        if kind == "directory" and not out.is_dir():
            raise PrunekitError(f"{flag} {out} exists and is not a directory: choose another {flag}")
        if kind == "file" and out.is_dir():
            raise PrunekitError(f"{flag} {out} is a directory: give a file name, e.g. {out / 'report.html'}")
        if not overwrite:
            raise PrunekitError(f"{flag} {out} already exists: choose another {flag} or pass --overwrite")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise PrunekitError(f"{flag} {out}: {parent} is a file, not a directory")
            break
    return out


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Remove the temporary siblings of `out` that processes no longer running left behind; returns them."""
    from prunekit.progress import console

    out = Path(out).expanduser()
    parent = out.parent
    if not parent.is_dir():
        return []
    removed = []
    for entry in parent.iterdir():
        match = _TEMPORARY.match(entry.name)
        if match is None or match["name"] != out.name:
            continue
        pid = int(match["pid"]) if match["pid"] else None
        if pid is not None and _alive(pid):
            continue  # another run is writing it right now
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
        by = f" (process {pid})" if pid else ""
        console.print(f"removed {entry}, left by an interrupted run{by}", soft_wrap=True)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _temporary_name(out: Path, kind: str) -> Path:
    return temporary_sibling(out, kind)


def _replace(tmp: Path, out: Path) -> None:
    """Move `tmp` to `out`; an existing `out` (allowed by the caller) is moved aside first, then deleted."""
    old = None
    if out.exists() or out.is_symlink():
        old = _temporary_name(out, "old")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


@contextmanager
def atomic_directory(out: Path, overwrite: bool = False, inputs: Iterable[Path | str | None] = (),
                     cache: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; rename it to `out` only when the block finishes without error."""
    out = check_output(out, overwrite, inputs, cache=cache)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    tmp = _temporary_name(out, "partial")
    tmp.mkdir()
    (tmp / INCOMPLETE).write_text("prunekit is still writing this directory; it is not an output\n")
    try:
        yield tmp
        (tmp / INCOMPLETE).unlink()
        _replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(out: Path, overwrite: bool = False, inputs: Iterable[Path | str | None] = ()) -> Iterator[Path]:
    """Yield a temporary sibling file path; rename it to `out` only when the block finishes without error."""
    out = check_output(out, overwrite, inputs, kind="file")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    tmp = _temporary_name(out, "partial")
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        _replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def is_incomplete(directory: Path) -> bool:
    """Whether `directory` is an output prunekit has not finished writing."""
    return (Path(directory) / INCOMPLETE).exists()


def check_work_directory(work: Path, kind: str, inputs: Iterable[Path | str | None] = (),
                         output: Path | None = None, flag: str = "--work-dir") -> Path:
    """Fail unless `work` can be prunekit's work folder of `kind`: new, empty, or one prunekit made for `kind`;
    never an input, around one, around or inside the `output`, or in the cache."""
    work = Path(work).expanduser()
    target = _refuse_overlaps(work, flag, inputs, False, "is the input {source} or lies inside or around it: "
                              "prunekit deletes its work folder at the end, so choose a new folder for {flag}")
    if output is not None and _overlaps(target, _resolved(output)):
        raise PrunekitError(f"{flag} {work} and --out {output} must not lie inside one another: choose another "
                            f"{flag}")
    if work.exists():
        if not work.is_dir():
            raise PrunekitError(f"{flag} {work} exists and is not a directory: choose a new folder")
        owner = _work_kind(work)
        if owner is None and any(work.iterdir()):
            raise PrunekitError(f"{flag} {work} is a folder prunekit did not make (it holds other files, and "
                                f"prunekit deletes its work folder at the end): choose a new or empty folder")
        if owner not in (None, kind):
            raise PrunekitError(f"{flag} {work} is the work folder of a {owner} run, not of {kind}: choose another")
    return work


def work_directory(work: Path, kind: str, inputs: Iterable[Path | str | None] = (),
                   output: Path | None = None, flag: str = "--work-dir") -> Path:
    """`check_work_directory`, then create it (with its marker) if needed."""
    work = check_work_directory(work, kind, inputs, output, flag)
    work.mkdir(parents=True, exist_ok=True)
    if _work_kind(work) is None:
        (work / WORK_MARKER).write_text(json.dumps({"kind": kind}) + "\n")
    return work


def _work_kind(work: Path) -> str | None:
    try:
        return str(json.loads((work / WORK_MARKER).read_text())["kind"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remove_work_directory(work: Path) -> None:
    """Delete a work folder, but only one that prunekit made."""
    if _work_kind(work) is not None:
        shutil.rmtree(work, ignore_errors=True)
