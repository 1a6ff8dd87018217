"""Semantic deduplication within clusters (SemDeDup, Abbettu et al. 2023).

Within a cluster, members are ordered from the farthest from the centroid to the nearest (the least prototypical copy
is the one kept, as in the paper), ties by id. Each member gets its highest cosine similarity to any member before
it and that member's id. The similarities are stored once; any epsilon is applied afterwards by `DuplicateFilter`
(dropped when similarity > 1 - epsilon).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from prunekit.corpus.cluster import normalized
from prunekit.corpus.step import (
    CENTROID_DISTANCE,
    CLUSTER,
    DUP_OF,
    DUP_SIMILARITY,
    EMBEDDING,
    ID,
    Kind,
    Step,
    embeddings_of,
)

__all__ = ["DUP_OF", "DUP_SIMILARITY", "SemDedupStep", "earlier_similarity"]


def earlier_similarity(vectors: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """For each row j, the largest cosine similarity to a row i < j and that i (-1 and NaN for row 0).

    Computed a block of rows at a time, so memory stays O(chunk x rows) for any cluster size."""
    unit = normalized(vectors)
    count = len(unit)
    best = np.full(count, np.nan, dtype=np.float32)
    which = np.full(count, -1, dtype=np.int64)
    for start in range(1, count, chunk):
        stop = min(start + chunk, count)
        similarity = unit[start:stop] @ unit[:stop].T  # [block, stop]
        similarity[np.arange(stop)[None, :] >= np.arange(start, stop)[:, None]] = -np.inf  # only rows before j
        which[start:stop] = similarity.argmax(axis=1)
        best[start:stop] = similarity[np.arange(stop - start), which[start:stop]]
    return best, which


@dataclass
class SemDedupStep(Step):
    """Adds `dup_similarity` (float32, null for the first of a cluster) and `dup_of` (id of that most similar
    earlier member). Needs `cluster` and `centroid_distance` (the cluster step)."""

    name = "semdedup"
    partition = CLUSTER

    def requires(self) -> dict[str, Kind]:
        return {CLUSTER: "number", CENTROID_DISTANCE: "number", EMBEDDING: "vector"}

    def provides(self) -> tuple[str, ...]:
        return (DUP_SIMILARITY, DUP_OF)

    def run(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        table = pa.Table.from_batches(list(batches))
        if table.num_rows == 0:
            return
        for cluster in np.unique(table.column(CLUSTER).to_numpy()):
            members = table.filter(pc.equal(table.column(CLUSTER), cluster))
            members = members.drop_columns([c for c in (DUP_SIMILARITY, DUP_OF) if c in members.column_names])
            members = members.sort_by([(CENTROID_DISTANCE, "descending"), (ID, "ascending")])
            best, which = earlier_similarity(embeddings_of(members))
            ids = members.column(ID).combine_chunks()
            earlier = ids.take(pa.array(np.maximum(which, 0)))
            dup_of = pc.if_else(pa.array(which >= 0), earlier, pa.nulls(len(ids), ids.type))
            members = members.append_column(DUP_SIMILARITY, pa.array(best, pa.float32(), from_pandas=True))
            yield from members.append_column(DUP_OF, dup_of).combine_chunks().to_batches()
