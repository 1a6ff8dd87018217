"""Every user file is read through here: missing, a directory, not UTF-8, or corrupt is a one-line PrunekitError.

`what` names the file's role in the message ("recipe", "calibration text", "corpus"), so the user knows which
argument to fix.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prunekit.errors import PrunekitError


def temporary_sibling(out: Path, kind: str = "partial") -> Path:
    """A fresh name next to `out` for writing it before a rename (`.NAME.KIND-PID-XXXX`): unique per process and
    call, so two processes filling the same cache entry at once never rename each other's file away."""
    out = Path(out)
    return out.with_name(f".{out.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def first_line(error: BaseException) -> str:
    """An exception's message as one line (its type when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def existing_file(path: Path, what: str) -> Path:
    """`path` when it is a readable regular file; otherwise a one-line error naming `what`."""
    path = Path(path).expanduser()
    if not path.exists():
        raise PrunekitError(f"{what} {path} not found")
    if path.is_dir():
        raise PrunekitError(f"{what} {path} is a directory: give a file")
    return path


def _not_utf8(path: Path, what: str, error: UnicodeDecodeError, line: int | None = None) -> PrunekitError:
    where = f"{path}:{line}" if line is not None else str(path)
    return PrunekitError(f"{what} {where} is not UTF-8 text (byte 0x{error.object[error.start]:02x}): "
                         "save it as UTF-8")


def read_text(path: Path, what: str) -> str:
    """The whole file as text."""
    path = existing_file(path, what)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(path, what, e) from None
    except OSError as e:
        raise PrunekitError(f"cannot read {what} {path}: {e.strerror or e}") from None


def text_lines(path: Path, what: str) -> Iterator[tuple[int, str]]:
    """(line number, line) for every line, read lazily; a bad byte names its line."""
    path = existing_file(path, what)
    try:
        with open(path, "rb") as handle:  # bytes, decoded line by line, so an error knows its line
            for number, raw in enumerate(handle, 1):
                try:
                    yield number, raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise _not_utf8(path, what, e, number) from None
    except OSError as e:
        raise PrunekitError(f"cannot read {what} {path}: {e.strerror or e}") from None


def json_lines(path: Path, what: str = "JSON-lines file") -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for every non-blank line; a line that is not JSON is a one-line error."""
    for number, line in text_lines(path, what):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as e:
            raise PrunekitError(f"{what} {path}:{number} is not valid JSON ({e.msg}): one JSON object per line"
                                ) from None
        except (ValueError, RecursionError) as e:
            raise PrunekitError(f"{what} {path}:{number} is not valid JSON ({first_line(e)})") from None


def read_json(path: Path, what: str) -> Any:
    """A JSON document."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise PrunekitError(f"{what} {path} is not valid JSON ({e.msg}, line {e.lineno})") from None
    except (ValueError, RecursionError) as e:  # integers of thousands of digits, absurdly deep nesting
        raise PrunekitError(f"{what} {path} is not valid JSON ({first_line(e)})") from None


def read_yaml(path: Path, what: str) -> Any:
    """A YAML document (safe loader: no Python objects)."""
    import yaml

    text = read_text(path, what)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise PrunekitError(f"{what} {path} is not valid YAML: {first_line(e)}") from None


def parquet_file(path: Path, what: str) -> Any:
    """An opened pyarrow ParquetFile (its footer checked)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = existing_file(path, what)
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError, UnicodeDecodeError) as e:  # damaged metadata decodes badly too
        raise PrunekitError(f"{what} {path} is not a readable Parquet file ({first_line(e)})") from None


def load_safetensors(path: Path, what: str) -> dict:
    """Every tensor of a safetensors file (on the CPU)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = existing_file(path, what)
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise PrunekitError(f"{what} {path} is not a readable safetensors file ({first_line(e)})") from None
