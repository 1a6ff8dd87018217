"""Reading a corpus into id-keyed record batches and writing the kept rows.

Inputs: JSONL (`.jsonl`, `.json` lines), Parquet (a file or a folder of them), a Hugging Face dataset saved with
`save_to_disk`, or `hf:NAME[:CONFIG][@SPLIT]` (needs the network). Rows get the id from `id_column` when given (it
must be unique), else their position in the input, which is stable for the same input. An input field named `id` or
`text` that is not the id or text column is kept under another name (`source_id`, `source_text`), never dropped.

`inspect_corpus` reads the whole input once before a run writes anything, so a bad byte, a duplicate id or a ragged
embedding late in the file is a one-line error with nothing written; it also finds whether the input's own `id`
field can serve as the id column.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from prunekit.corpus.step import DROP_COLUMNS, ID, TEXT, check_vectors, is_vector_type
from prunekit.errors import PrunekitError
from prunekit.files import json_lines, parquet_file

SUFFIXES = (".jsonl", ".json", ".parquet")
WHAT = "corpus"  # how prunekit.files names the input in its messages


@dataclass
class CorpusInfo:
    """What a full pass over the input found."""

    rows: int
    schema: pa.Schema  # of the batches `read_corpus` yields (id, text, the rest)
    id_column: str | None  # the id column to read with (the input's own `id` when it is usable)
    id_note: str  # where the ids come from, for the summary


def inspect_corpus(source: str | Path, text_column: str = TEXT, id_column: str | None = None,
                   vector_column: str | None = None, batch_size: int = 4096) -> CorpusInfo:
    """Read everything once and validate it (readable, columns, unique ids, vectors of one length)."""
    own_id = id_column is None and text_column != ID  # may the input's own `id` field become the id column?
    usable, found = True, False
    seen: set = set()
    raw_schema = None
    rows, length = 0, None
    for raw in _raw_batches(str(source), batch_size):
        batch = _normalized(raw, source, text_column, id_column, rows)
        if id_column:
            _check_unique(batch.column(0), seen, source, id_column)
        elif own_id and ID in raw.schema.names:
            found = True
            usable = usable and _still_unique(raw.column(ID), seen)
        raw_schema = _unified(raw_schema, raw.schema, source)
        if vector_column in batch.schema.names and is_vector_type(batch.schema.field(vector_column).type):
            # Name a bad row by the input's own id when it has one (it becomes the id column when unique).
            named = raw if own_id and ID in raw.schema.names and vector_column in raw.schema.names else batch
            length = check_vectors(named, vector_column, length, str(source))
        rows += len(batch)
    if rows == 0 or raw_schema is None:
        raise PrunekitError(f"{source}: the corpus is empty (no rows)")
    chosen, note = id_column, id_column or "row numbers"
    if found and usable:
        chosen, note = ID, f"{ID} (found in the input)"
    elif found:
        kept_as = _renamed(raw_schema.names, text_column, None)[ID]
        note = (f"row numbers (the input's own {ID!r} field is not unique or has empty values: kept as "
                f"{kept_as!r})")
    empty = pa.RecordBatch.from_pylist([], schema=raw_schema)
    return CorpusInfo(rows, _normalized(empty, source, text_column, chosen).schema, chosen, note)


def _still_unique(values: pa.Array, seen: set) -> bool:
    """Whether `values` (ints or strings, no nulls) add only ids not in `seen`; adds them."""
    if values.null_count or not (pa.types.is_integer(values.type) or pa.types.is_string(values.type)
                                 or pa.types.is_large_string(values.type)):
        return False
    fresh = values.to_pylist()
    before = len(seen)
    seen.update(fresh)
    return len(seen) == before + len(fresh)


def _unified(schema: pa.Schema | None, found: pa.Schema, source: str | Path) -> pa.Schema:
    if schema is None or schema.equals(found):
        return found
    try:
        return pa.unify_schemas([schema, found], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise PrunekitError(f"{source}: the files hold one field with incompatible types "
                            f"({str(e).splitlines()[0]}): make each field one type") from None


def read_corpus(source: str | Path, text_column: str = TEXT, id_column: str | None = None,
                batch_size: int = 4096, schema: pa.Schema | None = None) -> Iterator[pa.RecordBatch]:
    """Record batches with `id` and `text` first, the input's other columns after; validated as they stream.
    With `schema` (from `inspect_corpus`) every batch gets it, so files of a folder that differ agree."""
    seen: set = set()
    offset = 0
    for raw in _raw_batches(str(source), batch_size):
        batch = _normalized(raw, source, text_column, id_column, offset)
        if id_column:
            _check_unique(batch.column(0), seen, source, id_column)
        offset += len(batch)
        yield batch if schema is None else _conformed(batch, schema, source)
    if offset == 0:
        raise PrunekitError(f"{source}: the corpus is empty (no rows)")


def _normalized(batch: pa.RecordBatch, source: str | Path, text_column: str, id_column: str | None,
                offset: int = 0) -> pa.RecordBatch:
    """`id`, `text`, then the rest (an `id`/`text` field that is neither column is renamed, not lost)."""
    names = batch.schema.names
    if text_column not in names:
        raise PrunekitError(f"{source}: no text column {text_column!r} (columns: {', '.join(names)}): "
                            "pass --text-column")
    if id_column is not None and id_column not in names:
        raise PrunekitError(f"{source}: no id column {id_column!r} (columns: {', '.join(names)}): pass "
                            "--id-column, or leave it out to number the rows")
    reserved = [n for n in names if n in DROP_COLUMNS]
    if reserved:
        raise PrunekitError(f"{source}: column {reserved[0]!r} is reserved for the rows steps drop: rename it")
    ids = batch.column(id_column) if id_column else pa.array(range(offset, offset + len(batch)), pa.int64())
    if id_column and (pa.types.is_nested(ids.type) or pa.types.is_null(ids.type)):
        raise PrunekitError(f"{source}: id column {id_column!r} holds {ids.type} values: ids must be strings or "
                            "numbers")
    if id_column and ids.null_count:
        raise PrunekitError(f"{source}: column {id_column!r} has empty ids: every row needs one")
    try:
        texts = pc.cast(batch.column(text_column), pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise PrunekitError(f"{source}: text column {text_column!r} holds {batch.column(text_column).type} values, "
                            "not text: pass --text-column naming the column of strings") from None
    renamed = _renamed(names, text_column, id_column)
    rest_names = [n for n in names if n not in (text_column, id_column)]
    return pa.RecordBatch.from_arrays([ids, pc.fill_null(texts, ""), *(batch.column(n) for n in rest_names)],
                                      names=[ID, TEXT, *(renamed.get(n, n) for n in rest_names)])


def _renamed(names: list[str], text_column: str, id_column: str | None) -> dict[str, str]:
    """New names for input fields called `id` or `text` that are not the id / text column (`source_id`, ...)."""
    rest = [n for n in names if n not in (text_column, id_column)]
    taken = {ID, TEXT, *rest}
    return {n: _free_name(f"source_{n}", taken) for n in rest if n in (ID, TEXT)}


def _free_name(base: str, taken: set[str]) -> str:
    name, number = base, 2
    while name in taken:
        name, number = f"{base}_{number}", number + 1
    return name


def _check_unique(ids: pa.Array, seen: set, source: str | Path, id_column: str) -> None:
    for value in ids.to_pylist():
        if value in seen:
            raise PrunekitError(f"{source}: id {value!r} appears more than once in {id_column!r}: ids must "
                                "be unique (leave --id-column out to number the rows)")
        seen.add(value)


def _conformed(batch: pa.RecordBatch, schema: pa.Schema, source: str | Path) -> pa.RecordBatch:
    if batch.schema.equals(schema):
        return batch
    columns = []
    for field in schema:
        if field.name not in batch.schema.names:
            columns.append(pa.nulls(len(batch), field.type))
            continue
        try:
            columns.append(batch.column(field.name).cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise PrunekitError(f"{source}: field {field.name!r} holds values that do not fit {field.type}: make "
                                "each field one type") from None
    return pa.RecordBatch.from_arrays(columns, schema=schema)


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
    files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file()) if path.is_dir() else [path]
    if not files:
        raise PrunekitError(f"no {'/'.join(SUFFIXES)} files in folder {path}")
    for file in files:
        if file.suffix == ".parquet":
            yield from _parquet_batches(file, batch_size)
        elif file.suffix in (".jsonl", ".json"):
            yield from _json_batches(file, batch_size)
        else:
            raise PrunekitError(f"{file}: unsupported corpus file type {file.suffix or '(none)'!r}: use "
                                f"{'/'.join(SUFFIXES)} (a .txt file: one JSON object per line, "
                                '{"text": ...}, in a .jsonl file)')


def _parquet_batches(path: Path, batch_size: int) -> Iterator[pa.RecordBatch]:
    """A damaged page deep in the file fails while reading, not when opening: both are one-line errors."""
    handle = parquet_file(path, WHAT)
    try:
        yield from handle.iter_batches(batch_size=batch_size)
    except (pa.ArrowException, OSError, ValueError) as e:  # ValueError covers UnicodeDecodeError too
        raise PrunekitError(f"{WHAT} {path} is not a readable Parquet file ({str(e).splitlines()[0]}): "
                            "write it again") from None


def _json_batches(path: Path, batch_size: int) -> Iterator[pa.RecordBatch]:
    """Two passes: the first settles one schema for the whole file (every key, types unified: an int column that
    later holds floats becomes float), the second yields batches in it (missing keys are null)."""
    schema = None
    for rows in _json_rows(path, batch_size):
        try:
            found = pa.RecordBatch.from_pylist(rows).schema
            schema = found if schema is None else pa.unify_schemas([schema, found], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            raise PrunekitError(f"{path}: a field holds values of incompatible types ({str(e).splitlines()[0]}): "
                                "make each field one type") from None
    for rows in _json_rows(path, batch_size):
        try:
            yield pa.RecordBatch.from_pylist(rows, schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            raise PrunekitError(f"{path}: a field holds values of incompatible types ({str(e).splitlines()[0]}): "
                                "make each field one type") from None


def _json_rows(path: Path, batch_size: int) -> Iterator[list[dict]]:
    rows: list[dict] = []
    for number, row in json_lines(path, WHAT):
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
