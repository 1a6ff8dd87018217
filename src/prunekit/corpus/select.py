"""Filters: steps that drop rows by a score an earlier step stored.

- `DuplicateFilter(epsilon)`: drops rows whose `dup_similarity` > 1 - epsilon (reason `duplicate`).
- `ScoreFilter(column, keep, keep_from)`: keeps a fraction of the rows by a score column: the lowest, the highest or
  the middle (reason `COLUMN-filter`). With `column="perplexity"` it is the reference-model perplexity filter; with
  `column="centroid_distance"` and `keep_from="highest"` the self-supervised prototype filter of Sorscher et al.
  (the second stage of D4). Ties break by id, so exactly round(keep x rows) rows stay, whatever the executor.
  Rows without a score (an empty document's perplexity) are dropped with reason `COLUMN-missing`.
- `ThresholdFilter(column, minimum, maximum)`: keeps rows whose score lies in [minimum, maximum].
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa

from prunekit.corpus.step import DUP_OF, DUP_SIMILARITY, ID, Kind, Step, mark_dropped
from prunekit.errors import PrunekitError


def _values(batch: pa.RecordBatch, column: str) -> np.ndarray:
    if column not in batch.schema.names:
        raise PrunekitError(f"no column {column!r} to filter on (columns: {', '.join(batch.schema.names)}): add "
                            "the step that computes it first")
    return batch.column(column).to_numpy(zero_copy_only=False).astype(np.float64)


@dataclass
class DuplicateFilter(Step):
    name = "dedup-filter"
    epsilon: float = 0.05

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.epsilon <= 1:
            raise PrunekitError(f"epsilon={self.epsilon} is outside [0, 1]: rows are duplicates when their cosine "
                                "similarity exceeds 1 - epsilon (e.g. 0.05)")

    def requires(self) -> dict[str, Kind]:
        return {DUP_SIMILARITY: "number", DUP_OF: "any"}

    def run(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            similarity = np.nan_to_num(_values(batch, DUP_SIMILARITY), nan=-np.inf)
            drop = similarity > 1 - self.epsilon
            detail = [f"duplicate of {d!r}" if d is not None else None for d in batch.column(DUP_OF).to_pylist()]
            yield mark_dropped(batch, drop, "duplicate", similarity, detail)


@dataclass
class ScoreFilter(Step):
    name = "score-filter"
    fit_columns = ()  # set per instance in __post_init__
    column: str = "perplexity"
    keep: float = 0.7
    keep_from: Literal["lowest", "highest", "middle"] = "lowest"
    _bounds: tuple | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.keep_from not in ("lowest", "highest", "middle"):  # before the type check: a clearer message
            raise PrunekitError(f"keep_from={self.keep_from!r}: use lowest, highest or middle")
        super().__post_init__()
        if not 0 < self.keep <= 1:
            raise PrunekitError(f"keep={self.keep} is outside (0, 1]: the fraction of rows kept")
        self.fit_columns = (ID, self.column)
        self.name = f"{self.column}-filter"

    def requires(self) -> dict[str, Kind]:
        return {self.column: "number"}

    def fit(self, batches: Iterable[pa.RecordBatch]) -> None:
        scores, ids = [], []
        for batch in batches:
            scores.append(_values(batch, self.column))
            ids.extend(batch.column(ID).to_pylist())
        values = np.concatenate(scores) if scores else np.zeros(0)
        present = ~np.isnan(values)
        ranked = sorted(zip(values[present].tolist(), np.asarray(ids, dtype=object)[present].tolist(), strict=True))
        count = round(self.keep * len(ranked))
        skip = {"lowest": 0, "highest": len(ranked) - count, "middle": (len(ranked) - count) // 2}[self.keep_from]
        kept = ranked[skip : skip + count]
        self._bounds = (kept[0], kept[-1]) if kept else None

    def run(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        reason = f"{self.column}-filter"
        for batch in batches:
            values = _values(batch, self.column)
            ids = batch.column(ID).to_pylist()
            missing = np.isnan(values)
            if self._bounds is None:
                inside = np.zeros(len(batch), dtype=bool)
            else:
                low, high = self._bounds
                inside = np.array([not m and low <= (v, i) <= high
                                   for v, i, m in zip(values.tolist(), ids, missing, strict=True)], dtype=bool)
            batch = mark_dropped(batch, missing, f"{self.column}-missing", values)
            yield mark_dropped(batch, ~inside, reason, values)


@dataclass
class ThresholdFilter(Step):
    name = "threshold-filter"
    column: str = "perplexity"
    minimum: float | None = None
    maximum: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.minimum is None and self.maximum is None:
            raise PrunekitError("a threshold filter needs a minimum, a maximum or both")
        self.name = f"{self.column}-threshold"

    def requires(self) -> dict[str, Kind]:
        return {self.column: "number"}

    def run(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        low = -np.inf if self.minimum is None else self.minimum
        high = np.inf if self.maximum is None else self.maximum
        for batch in batches:
            values = _values(batch, self.column)
            batch = mark_dropped(batch, np.isnan(values), f"{self.column}-missing", values)
            yield mark_dropped(batch, (values < low) | (values > high), f"{self.column}-threshold", values)
