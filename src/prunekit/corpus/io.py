"""Reading a corpus into id-keyed record batches and writing the kept rows.

Inputs: JSONL (`.jsonl`, `.json` lines), Parquet (a file or a folder of them), a Hugging Face dataset saved with
`save_to_disk`, or `hf:NAME[:CONFIG][@SPLIT]` (needs the network). Rows get the id from `id_column` when given (it
must be unique), else their position in the input, which is stable for the same input.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from prunekit.corpus.step import ID, TEXT
from prunekit.errors import PrunekitError
from prunekit.files import json_lines

SUFFIXES = (".jsonl", ".json", ".parquet")


def read_corpus(source: str | Path, text_column: str = TEXT, id_column: str | None = None,
                batch_size: int = 4096) -> Iterator[pa.RecordBatch]:
    """Record batches with `id` and `text` first, the input's other columns after; validated as they stream."""
    seen: set = set()
    offset = 0
    for batch in _raw_batches(str(source), batch_size):
        names = batch.schema.names
        if text_column not in names:
            raise PrunekitError(f"{source}: no text column {text_column!r} (columns: {', '.join(names)}): "
                                "pass --text-column")
        if id_column is not None and id_column not in names:
            raise PrunekitError(f"{source}: no id column {id_column!r} (columns: {', '.join(names)}): pass "
                                "--id-column, or leave it out to number the rows")
        ids = batch.column(id_column) if id_column else pa.array(range(offset, offset + len(batch)), pa.int64())
        if id_column:
            if ids.null_count:
                raise PrunekitError(f"{source}: column {id_column!r} has empty ids: every row needs one")
            for value in ids.to_pylist():
                if value in seen:
                    raise PrunekitError(f"{source}: id {value!r} appears more than once in {id_column!r}: ids must "
                                        "be unique (leave --id-column out to number the rows)")
                seen.add(value)
        texts = pc.cast(batch.column(text_column), pa.string())
        rest = [(n, batch.column(n)) for n in names if n not in (text_column, id_column, ID, TEXT)]
        offset += len(batch)
        yield pa.RecordBatch.from_arrays([ids, pc.fill_null(texts, ""), *(c for _, c in rest)],
                                         names=[ID, TEXT, *(n for n, _ in rest)])
    if offset == 0:
        raise PrunekitError(f"{source}: the corpus is empty (no rows)")


def _raw_batches(source: str, batch_size: int) -> Iterator[pa.RecordBatch]:
    if source.startswith("hf:"):
        yield from _hf_batches(source[3:], batch_size)
        return
    path = Path(source).expanduser()
    if not path.exists():
        raise PrunekitError(f"corpus {source!r} not found: pass a .jsonl or .parquet file, a folder of them, a "
                            "datasets save_to_disk folder, or hf:NAME[:CONFIG][@SPLIT]")
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        yield from _hf_batches(str(path), batch_size)
        return
    files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise PrunekitError(f"no {'/'.join(SUFFIXES)} files in folder {path}")
    for file in files:
        if file.suffix == ".parquet":
            yield from pq.ParquetFile(file).iter_batches(batch_size=batch_size)
        elif file.suffix in (".jsonl", ".json"):
            yield from _json_batches(file, batch_size)
        else:
            raise PrunekitError(f"{file}: unsupported file type; use {'/'.join(SUFFIXES)}")


def _json_batches(path: Path, batch_size: int) -> Iterator[pa.RecordBatch]:
    """Two passes: the first settles one schema for the whole file (every key, types unified: an int column that
    later holds floats becomes float), the second yields batches in it (missing keys are null)."""
    schema = None
    for rows in _json_rows(path, batch_size):
        try:
            found = pa.RecordBatch.from_pylist(rows).schema
            schema = found if schema is None else pa.unify_schemas([schema, found], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise PrunekitError(f"{path}: a field holds values of incompatible types ({e}): make each field one "
                                "type") from None
    for rows in _json_rows(path, batch_size):
        yield pa.RecordBatch.from_pylist(rows, schema=schema)


def _json_rows(path: Path, batch_size: int) -> Iterator[list[dict]]:
    rows: list[dict] = []
    for number, row in json_lines(path):
        if not isinstance(row, dict):
            raise PrunekitError(f"{path}:{number}: a JSON line must be an object with a text field")
        rows.append(row)
        if len(rows) == batch_size:
            yield rows
            rows = []
    if rows:
        yield rows


def _hf_batches(spec: str, batch_size: int) -> Iterator[pa.RecordBatch]:
    try:
        import datasets
    except ImportError:
        raise PrunekitError("HF datasets need the `datasets` package: pip install 'prunekit[datasets]'") from None
    split = "train"
    if "@" in spec:
        spec, split = spec.rsplit("@", 1)
    try:
        if Path(spec).expanduser().is_dir():
            loaded = datasets.load_from_disk(str(Path(spec).expanduser()))
            dataset = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        else:
            name, _, config = spec.partition(":")
            dataset = datasets.load_dataset(name, config or None, split=split)
    except Exception as e:  # noqa: BLE001 - network, missing splits and bad names surface as many types
        raise PrunekitError(f"could not load dataset {spec!r}: {str(e).strip().splitlines()[0]}") from None
    yield from dataset.with_format("arrow").data.table.to_batches(max_chunksize=batch_size)


def write_rows(table_parts: Path, out: Path, fmt: str, drop: tuple[str, ...] = ()) -> int:
    """Write the Parquet parts under `table_parts` as one `kept.parquet` or `kept.jsonl`; returns the row count."""
    if not any(table_parts.glob("*.parquet")):  # every row was dropped: an empty file with the basic columns
        empty = pa.table({ID: pa.array([], pa.int64()), TEXT: pa.array([], pa.string())})
        if fmt == "parquet":
            pq.write_table(empty, out / "kept.parquet")
        else:
            (out / "kept.jsonl").write_text("")
        return 0
    dataset = ds.dataset(table_parts, format="parquet")
    columns = [n for n in dataset.schema.names if n not in drop]
    rows = 0
    if fmt == "parquet":
        with pq.ParquetWriter(out / "kept.parquet", dataset.schema.remove_metadata().empty_table()
                              .select(columns).schema) as writer:
            for batch in dataset.to_batches(columns=columns):
                writer.write_batch(batch)
                rows += len(batch)
    elif fmt == "jsonl":
        with open(out / "kept.jsonl", "w", encoding="utf-8") as f:
            for batch in dataset.to_batches(columns=columns):
                for row in batch.to_pylist():
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                rows += len(batch)
    else:
        raise PrunekitError(f"unknown output format {fmt!r}: use parquet or jsonl")
    return rows
