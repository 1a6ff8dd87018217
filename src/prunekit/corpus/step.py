"""The contract every corpus step follows.

A step turns Arrow record batches into record batches: it adds columns (an embedding, a perplexity, a cluster...) and
may drop rows by filling `drop_reason` (and `drop_score`, `drop_detail`) for them. The executor routes rows with a
reason into the exclusion log and passes the others on without those three columns.

- `partition`: None when every batch can be processed alone; a column name when all rows sharing that column's value
  must reach `run` together (semantic dedup works within a cluster). A call then receives whole groups, possibly
  several.
- `fit_columns`: columns the step learns from over all rows before `run` (a k-means fit, a quantile); `fit` gets
  batches of those columns only, so it stays cheap however wide the rows are.

Steps must not depend on row order (sort within a group by a key and the id), so the local and the Ray executor keep
the same ids.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa

from prunekit.errors import PrunekitError

ID = "id"
TEXT = "text"
EMBEDDING = "embedding"
DROP_REASON = "drop_reason"
DROP_SCORE = "drop_score"
DROP_DETAIL = "drop_detail"
DROP_COLUMNS = (DROP_REASON, DROP_SCORE, DROP_DETAIL)


@dataclass
class Step:
    """Base class; subclasses are dataclasses whose fields are their settings."""

    name: ClassVar[str] = "step"
    partition: ClassVar[str | None] = None
    fit_columns: ClassVar[tuple[str, ...]] = ()

    def fit(self, batches: Iterable[pa.RecordBatch]) -> None:  # noqa: B027 - most steps learn nothing
        """Learn from all rows (only `fit_columns`) before `run`."""

    def run(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        raise NotImplementedError

    def settings(self) -> dict:
        return {"step": self.name, **{k: v for k, v in asdict(self).items() if not k.startswith("_")}}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.settings(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def embeddings_of(batch: pa.RecordBatch | pa.Table, column: str = EMBEDDING) -> np.ndarray:
    """[rows, dim] float32 view of a fixed-size-list column."""
    values = batch.column(column)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if len(values) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    flat = values.flatten().to_numpy(zero_copy_only=False)
    if len(flat) % len(values):
        raise PrunekitError(f"column {column!r} holds vectors of different lengths: embeddings must share one size")
    return flat.reshape(len(values), -1).astype(np.float32, copy=False)


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
