"""The contract every corpus step follows.

A step turns Arrow record batches into record batches: it adds columns (an embedding, a perplexity, a cluster...) and
may drop rows by filling `drop_reason` (and `drop_score`, `drop_detail`) for them. The executor routes rows with a
reason into the exclusion log and passes the others on without those three columns.

- `partition`: None when every batch can be processed alone; a column name when all rows sharing that column's value
  must reach `run` together (semantic dedup works within a cluster). A call then receives whole groups, possibly
  several.
- `fit_columns`: columns the step learns from over all rows before `run` (a k-means fit, a quantile); `fit` gets
  batches of those columns only, so it stays cheap however wide the rows are.
- `requires()` / `provides()`: the columns a step reads (with the kind of values it needs) and adds, so the pipeline
  checks a whole plan against the input's columns before it writes anything; `check_rows` refuses settings the row
  count rules out (more clusters than rows).
- Settings are checked against their type hints when a step is made (`epsilon: "abc"` is a one-line error).

Steps must not depend on row order (sort within a group by a key and the id), so the local and the Ray executor keep
the same ids.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import typing
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from prunekit.errors import PrunekitError

ID = "id"
TEXT = "text"
EMBEDDING = "embedding"
DROP_REASON = "drop_reason"
DROP_SCORE = "drop_score"
DROP_DETAIL = "drop_detail"
DROP_COLUMNS = (DROP_REASON, DROP_SCORE, DROP_DETAIL)
# Columns steps add, here so that every step (and the plan check) can name the step that computes one.
CLUSTER = "cluster"
CENTROID_DISTANCE = "centroid_distance"
DUP_SIMILARITY = "dup_similarity"
DUP_OF = "dup_of"
PERPLEXITY = "perplexity"
PRODUCED_BY = {EMBEDDING: "embed", CLUSTER: "cluster", CENTROID_DISTANCE: "cluster", DUP_SIMILARITY: "semdedup",
               DUP_OF: "semdedup", PERPLEXITY: "perplexity"}
Kind = Literal["vector", "number", "any"]
INT32_MAX = 2**31 - 1  # faiss and the tokenizers take C ints: larger settings overflow deep inside them


@dataclass
class Step:
    """Base class; subclasses are dataclasses whose fields are their settings."""

    name: ClassVar[str] = "step"
    partition: ClassVar[str | None] = None
    fit_columns: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        self._check_types()

    def _check_types(self) -> None:
        """Coerce each setting to its type hint ("0.5" -> 0.5) or fail in one line naming it."""
        from pydantic import ValidationError

        model = _settings_model(type(self))
        if model is None:
            return
        values = {name: getattr(self, name) for name in model.model_fields}
        try:
            checked = model.model_validate(values)
        except ValidationError as e:
            error = e.errors()[0]
            name = str(error["loc"][0]) if error["loc"] else "settings"
            raise PrunekitError(f"{name}={values.get(name)!r}: {error['msg'].lower()}") from None
        for name in model.model_fields:
            setattr(self, name, getattr(checked, name))

    def requires(self) -> dict[str, Kind]:
        """Columns `run` reads (beyond id and text) and what they must hold."""
        return {}

    def provides(self) -> tuple[str, ...]:
        """Columns `run` adds."""
        return ()

    def check_rows(self, rows: int) -> None:  # noqa: B027 - most steps work with any number of rows
        """Fail before the run when `rows` input rows cannot work with these settings."""

    def check(self) -> None:  # noqa: B027 - most steps need nothing outside their settings
        """Fail before the run on what needs no data, such as a model that cannot be found."""

    def fit(self, batches: Iterable[pa.RecordBatch]) -> None:  # noqa: B027 - most steps learn nothing
        """Learn from all rows (only `fit_columns`) before `run`."""

    def run(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        raise NotImplementedError

    def settings(self) -> dict:
        return {"step": self.name, **{k: v for k, v in asdict(self).items() if not k.startswith("_")}}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.settings(), sort_keys=True, default=str).encode()).hexdigest()[:16]


@functools.cache
def _settings_model(step_class: type[Step]) -> Any:
    """A pydantic model of the public dataclass fields of `step_class`, from their type hints (None when a step
    written elsewhere has hints that do not resolve: its settings are then taken as given)."""
    from pydantic import ConfigDict, create_model

    try:
        hints = typing.get_type_hints(step_class)
    except (NameError, TypeError):
        return None
    fields = {f.name: (hints.get(f.name, Any), ...) for f in dataclasses.fields(step_class)
              if not f.name.startswith("_")}
    config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    return create_model(f"{step_class.__name__}Settings", __config__=config, **fields)


def check_model_spec(spec: str, offline: tuple[str, ...], what: str) -> None:
    """Refuse a model that is neither an offline name, a local model folder (or .gguf), nor shaped like a hub id,
    without loading it: a typo fails before the first step runs, not after hours of embedding."""
    import re
    from pathlib import Path

    if spec.lower() in offline:
        return
    path = Path(spec).expanduser()
    if path.exists():
        if (path.is_dir() and (path / "config.json").exists()) or (path.is_file() and path.suffix == ".gguf"):
            return
        raise PrunekitError(f"{what} {spec!r} is neither a model folder (with config.json) nor a .gguf file")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", spec) or spec.startswith((".", "/", "~")):
        raise PrunekitError(f"{what} {spec!r} not found: give a model folder, a hub id (ORG/NAME) or an offline "
                            f"model ({', '.join(offline)})")


def is_vector_type(kind: pa.DataType) -> bool:
    return ((pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind))
            and (pa.types.is_integer(kind.value_type) or pa.types.is_floating(kind.value_type)))


def is_number_type(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)


def check_vectors(batch: pa.RecordBatch | pa.Table, column: str, length: int | None, where: str = "") -> int | None:
    """The vector length of `column` (`length` when given: the one earlier batches had); a null, a vector of
    another length (naming both lengths) or a NaN / infinite value is a one-line error naming its row's id."""
    values = batch.column(column)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not len(values):
        return length
    ids = batch.column(ID) if ID in batch.schema.names else None
    row_id = (lambda i: ids[i].as_py()) if ids is not None else (lambda i: i)  # noqa: E731
    prefix = f"{where}: " if where else ""
    if values.null_count:
        first = int(np.flatnonzero(~np.asarray(values.is_valid()))[0])
        raise PrunekitError(f"{prefix}row id {row_id(first)!r} has no {column!r} vector: every row needs one "
                            "(drop those rows or compute embeddings with an embed step)")
    lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
    length = int(lengths[0]) if length is None else length
    bad = np.flatnonzero(lengths != length)
    if len(bad) or length == 0:
        first = int(bad[0]) if len(bad) else 0
        raise PrunekitError(f"{prefix}column {column!r} holds vectors of different lengths: row id "
                            f"{row_id(first)!r} has {int(lengths[first])} values, earlier rows {length}: every "
                            "embedding must have the same (non-zero) size")
    flat = values.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    broken = np.flatnonzero(~np.isfinite(flat))
    if len(broken):  # k-means and cosine similarity fail (or go silently wrong) on NaN and infinity
        first = int(broken[0]) // length
        raise PrunekitError(f"{prefix}row id {row_id(first)!r} has a NaN or infinite value in {column!r}: "
                            "embeddings must be finite numbers")
    return length


def embeddings_of(batch: pa.RecordBatch | pa.Table, column: str = EMBEDDING) -> np.ndarray:
    """[rows, dim] float32 view of a list column whose vectors share one length (checked, never reshaped)."""
    values = batch.column(column)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if len(values) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    length = check_vectors(batch, column, None)
    flat = values.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(values), length).astype(np.float32, copy=False)


def embedding_array(vectors: np.ndarray) -> pa.FixedSizeListArray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])


def with_column(batch: pa.RecordBatch, name: str, values: pa.Array | np.ndarray | list) -> pa.RecordBatch:
    """`batch` with column `name` set (replaced when present)."""
    array = values if isinstance(values, pa.Array) else pa.array(values)
    names = list(batch.schema.names)
    columns = list(batch.columns)
    if name in names:
        columns[names.index(name)] = array
    else:
        names.append(name)
        columns.append(array)
    return pa.RecordBatch.from_arrays(columns, names=names)


def mark_dropped(batch: pa.RecordBatch, drop: np.ndarray, reason: str, score: np.ndarray,
                 detail: list[str | None] | None = None) -> pa.RecordBatch:
    """Fill the drop columns for rows where `drop` is true, keeping reasons earlier steps gave."""
    previous = batch.column(DROP_REASON).to_pylist() if DROP_REASON in batch.schema.names else [None] * len(batch)
    old_scores = batch.column(DROP_SCORE).to_pylist() if DROP_SCORE in batch.schema.names else [None] * len(batch)
    old_details = batch.column(DROP_DETAIL).to_pylist() if DROP_DETAIL in batch.schema.names else [None] * len(batch)
    detail = detail or [None] * len(batch)
    reasons, scores, details = [], [], []
    for i in range(len(batch)):
        fresh = bool(drop[i]) and previous[i] is None
        reasons.append(reason if fresh else previous[i])
        scores.append(float(score[i]) if fresh else old_scores[i])
        details.append(detail[i] if fresh else old_details[i])
    batch = with_column(batch, DROP_REASON, pa.array(reasons, pa.string()))
    batch = with_column(batch, DROP_SCORE, pa.array(scores, pa.float64()))
    return with_column(batch, DROP_DETAIL, pa.array(details, pa.string()))


def groups(table: pa.Table, column: str) -> Iterator[pa.Table]:
    """The rows of `table` sharing each value of `column`, one table per value, in value order."""
    if table.num_rows == 0:
        return
    table = table.sort_by([(column, "ascending"), (ID, "ascending")])
    keys = table.column(column).to_numpy()
    bounds = np.flatnonzero(np.diff(keys)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(keys)]])
    for start, end in zip(starts, ends, strict=True):
        yield table.slice(int(start), int(end - start))
