"""Text sources for calibration and evaluation: the default Wikipedia corpus, local files, HF datasets.

The default corpus comes with two disjoint splits (by article), so calibration never sees evaluation text.
A user-supplied source is used whole for whatever it is passed for; give different files for the two roles.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from prunekit.assets.cache import cache_dir
from prunekit.assets.fetch import extract_member, fetch_package
from prunekit.assets.registry import TEXTS
from prunekit.errors import PrunekitError
from prunekit.files import first_line, json_lines, parquet_file, read_json, read_text

Split = Literal["calibration", "evaluation"]
DEFAULT_SOURCE = "wikipedia"
_FILE_SUFFIXES = (".txt", ".md", ".jsonl", ".json", ".parquet")
# The paragraph_segmentation task holds 1,000 articles in each of nine languages, in blocks; English is the second.
_ENGLISH_BLOCK = slice(1000, 2000)


def evaluation_article(text: str) -> bool:
    """Stable 1-in-10 split of articles by a hash of their first line."""
    return int(hashlib.sha1(text.split("\n", 1)[0].encode()).hexdigest()[:8], 16) % 10 == 0


def wikipedia_articles(split: Split) -> list[str]:
    asset = TEXTS["wikipedia"]
    path = cache_dir() / "text" / "wikipedia.json"
    if not path.exists():
        extract_member(fetch_package(asset.package), asset.member, path)
    examples = read_json(path, "cached text")["examples"][_ENGLISH_BLOCK]
    articles = list(dict.fromkeys(e["input"] for e in examples))
    return [a for a in articles if evaluation_article(a) == (split == "evaluation")]


def load_texts(source: str | None, split: Split, text_column: str = "text") -> list[str]:
    """Documents from `source`: 'wikipedia' (default), a file or folder (.txt, .md, .jsonl, .json, .parquet),
    or a Hugging Face dataset as 'hf:NAME[:CONFIG][@SPLIT]' (needs the network and the `datasets` package)."""
    source = source or DEFAULT_SOURCE
    if source == DEFAULT_SOURCE:
        texts = wikipedia_articles(split)
    elif source.startswith("hf:"):
        texts = _hf_texts(source[3:], split, text_column)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise PrunekitError(
                f"text source {source!r} not found: pass 'wikipedia', a file or folder of "
                f"{'/'.join(_FILE_SUFFIXES)} files, or hf:DATASET[:CONFIG][@SPLIT]"
            )
        files = sorted(p for p in path.rglob("*") if p.suffix in _FILE_SUFFIXES) if path.is_dir() else [path]
        if not files:
            raise PrunekitError(f"no {'/'.join(_FILE_SUFFIXES)} files in folder {path}")
        texts = [t for f in files for t in _file_texts(f, text_column)]
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise PrunekitError(f"text source {source!r} holds no text")
    return texts


def _file_texts(path: Path, column: str) -> list[str]:
    if path.suffix in (".txt", ".md"):
        return [read_text(path, "text file")]
    if path.suffix == ".parquet":
        import pyarrow as pa

        try:
            table = parquet_file(path, "text file").read()
        except (pa.ArrowException, OSError) as e:  # a damaged page, e.g. corrupt snappy data
            raise PrunekitError(f"text file {path} is not a readable Parquet file ({first_line(e)})") from None
        if column not in table.column_names:
            raise PrunekitError(
                f"{path} has no column {column!r}; its columns are {', '.join(table.column_names)} "
                "(choose one with --text-column)"
            )
        return [str(v) for v in table.column(column).to_pylist() if v is not None]
    rows = _json_rows(path)
    if not all(isinstance(r, dict) for r in rows):
        raise PrunekitError(f"{path}: expected one JSON object per record, with a {column!r} field")
    if rows and not any(column in r for r in rows):
        raise PrunekitError(
            f"{path} has no field {column!r}; its fields are {', '.join(rows[0])} (choose one with --text-column)"
        )
    return [str(r[column]) for r in rows if r.get(column) is not None]


def _json_rows(path: Path) -> list:
    if path.suffix == ".jsonl":
        return [row for _, row in json_lines(path, "text file")]
    data = read_json(path, "text file")
    return data if isinstance(data, list) else [data]


def _hf_texts(spec: str, split: Split, column: str) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise PrunekitError("hf: text sources need the datasets package: pip install 'prunekit[datasets]'") from None
    name, _, hf_split = spec.partition("@")
    name, _, config = name.partition(":")
    hf_split = hf_split or ("train" if split == "calibration" else "test")
    try:
        if Path(name).is_dir():  # a dataset saved with save_to_disk
            data = datasets.load_from_disk(name)
            data = data[hf_split] if isinstance(data, datasets.DatasetDict) else data
        else:
            data = datasets.load_dataset(name, config or None, split=hf_split)
    except Exception as e:  # noqa: BLE001 - any failure of the hub or the files is the user's to fix
        raise PrunekitError(f"could not load dataset {spec!r}: {str(e).splitlines()[0]}") from None
    if column not in data.column_names:
        raise PrunekitError(
            f"dataset {spec!r} has no column {column!r}; its columns are {', '.join(data.column_names)}"
        )
    return [str(t) for t in data[column] if t is not None]
