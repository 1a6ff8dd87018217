"""k-means clustering of embeddings with faiss: fit on a sample, assign every row.

Spherical by default (unit vectors, centroids renormalised), so distances are cosine distances. The sample is the
`sample_size` rows with the smallest hash of their id, the same whichever executor reads them and in whatever order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from prunekit.corpus.step import (
    CENTROID_DISTANCE,
    CLUSTER,
    EMBEDDING,
    ID,
    INT32_MAX,
    Kind,
    Step,
    embeddings_of,
    with_column,
)
from prunekit.errors import PrunekitError

__all__ = ["CENTROID_DISTANCE", "CLUSTER", "ClusterStep", "assign", "fit_centroids", "normalized"]


def normalized(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


def fit_centroids(vectors: np.ndarray, clusters: int, seed: int = 0, iterations: int = 20,
                  spherical: bool = True) -> np.ndarray:
    """[clusters, dim] k-means centroids of `vectors` (unit vectors when `spherical`)."""
    import faiss

    if clusters > len(vectors):
        raise PrunekitError(f"{clusters} clusters but only {len(vectors)} rows to fit them on: use at most "
                            f"{len(vectors)} clusters (or a larger sample)")
    data = normalized(vectors) if spherical else np.ascontiguousarray(vectors, dtype=np.float32)
    kmeans = faiss.Kmeans(data.shape[1], clusters, niter=iterations, seed=seed, spherical=spherical,
                          max_points_per_centroid=max(256, len(data) // clusters + 1), verbose=False)
    kmeans.train(data)
    return kmeans.centroids.copy()


def assign(vectors: np.ndarray, centroids: np.ndarray, spherical: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(nearest centroid, distance to it): cosine distance 1 - cos when `spherical`, else Euclidean."""
    import faiss

    if spherical:
        index = faiss.IndexFlatIP(centroids.shape[1])
        index.add(normalized(centroids))
        similarity, nearest = index.search(normalized(vectors), 1)
        return nearest[:, 0].astype(np.int32), (1.0 - similarity[:, 0]).astype(np.float32)
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    squared, nearest = index.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
    return nearest[:, 0].astype(np.int32), np.sqrt(np.maximum(squared[:, 0], 0)).astype(np.float32)


def id_hashes(ids: pa.Array) -> np.ndarray:
    """A stable 64-bit hash of each id (not Python's `hash`, which changes between processes)."""
    return np.array([int.from_bytes(hashlib.blake2b(repr(v).encode(), digest_size=8).digest(), "little")
                     for v in ids.to_pylist()], dtype=np.uint64)


@dataclass
class ClusterStep(Step):
    """Adds `cluster` (int32) and `centroid_distance` (float32). `clusters=None`: about sqrt(rows)."""

    name = "cluster"
    fit_columns = (ID, EMBEDDING)
    clusters: int | None = None
    sample_size: int = 100_000
    iterations: int = 20
    spherical: bool = True
    seed: int = 0
    _centroids: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.clusters is not None and self.clusters < 1:
            raise PrunekitError(f"clusters={self.clusters}: use 1 or more")
        if self.sample_size < 1:
            raise PrunekitError(f"sample_size={self.sample_size}: use 1 or more rows")
        if not 1 <= self.iterations <= INT32_MAX:
            raise PrunekitError(f"iterations={self.iterations}: use 1 to {INT32_MAX} k-means iterations")
        if not 0 <= self.seed < INT32_MAX:  # d4 uses seed + 1 for its second clustering
            raise PrunekitError(f"seed={self.seed}: use 0 to {INT32_MAX - 1}")

    def requires(self) -> dict[str, Kind]:
        return {EMBEDDING: "vector"}

    def provides(self) -> tuple[str, ...]:
        return (CLUSTER, CENTROID_DISTANCE)

    def check_rows(self, rows: int) -> None:
        if self.clusters is not None and self.clusters > rows:
            raise PrunekitError(f"{self.clusters} clusters for {rows} rows: use at most {rows} clusters")

    def fit(self, batches: Iterable[pa.RecordBatch]) -> None:
        hashes, vectors, rows = np.zeros(0, dtype=np.uint64), np.zeros((0, 0), dtype=np.float32), 0
        for batch in batches:
            rows += len(batch)
            hashes = np.concatenate([hashes, id_hashes(batch.column(ID))])
            fresh = embeddings_of(batch)
            vectors = fresh if vectors.size == 0 else np.concatenate([vectors, fresh])
            if len(hashes) > 2 * self.sample_size:  # keep the smallest hashes seen so far
                keep = np.argsort(hashes, kind="stable")[: self.sample_size]
                hashes, vectors = hashes[keep], vectors[keep]
        keep = np.argsort(hashes, kind="stable")[: self.sample_size]
        clusters = self.clusters or max(1, round(rows**0.5))
        if clusters > rows:
            raise PrunekitError(f"{clusters} clusters for {rows} rows: use at most {rows} clusters")
        self._centroids = fit_centroids(vectors[keep], clusters, self.seed, self.iterations, self.spherical)

    def run(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        assert self._centroids is not None, "fit first"
        for batch in batches:
            nearest, distance = assign(embeddings_of(batch), self._centroids, self.spherical)
            yield with_column(with_column(batch, CLUSTER, nearest), CENTROID_DISTANCE, distance)
