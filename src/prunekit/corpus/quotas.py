"""Per-cluster keep budgets from concept complexity (Abbas et al. 2024, "Effective pruning of web-scale datasets
based on complexity of concept clusters").

For cluster j: d_intra = mean cosine distance of its members to its centroid (how spread it is), d_inter = mean
cosine distance of its centroid to the `neighbors` nearest other centroids (how far from other concepts),
complexity C_j = d_intra x d_inter. The budget is N_j = min(size_j, lambda x softmax(C / temperature)_j), with lambda
found by bisection so the budgets sum to the target, then rounded to integers that sum exactly to it. Within a
cluster the members farthest from the centroid are kept (the least prototypical, as in the paper).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from prunekit.corpus.cluster import normalized
from prunekit.corpus.step import CENTROID_DISTANCE, CLUSTER, EMBEDDING, ID, Kind, Step, embeddings_of, mark_dropped
from prunekit.errors import PrunekitError


def cluster_complexity(centroids: np.ndarray, mean_distance: np.ndarray, neighbors: int) -> np.ndarray:
    """d_intra x d_inter per cluster; `centroids` [k, dim], `mean_distance` [k] (d_intra)."""
    k = len(centroids)
    if k == 1:
        return mean_distance.copy()
    unit = normalized(centroids)
    distance = 1.0 - unit @ unit.T
    np.fill_diagonal(distance, np.inf)
    nearest = np.sort(distance, axis=1)[:, : min(neighbors, k - 1)]
    return mean_distance * nearest.mean(axis=1)


def quota_budgets(sizes: np.ndarray, weights: np.ndarray, target: int, iterations: int = 200) -> np.ndarray:
    """Integer budgets b_j <= sizes_j summing to `target`, proportional to `weights` where no cluster is full."""
    sizes = np.asarray(sizes, dtype=np.int64)
    weights = np.asarray(weights, dtype=np.float64)
    if not 0 <= target <= sizes.sum():
        raise PrunekitError(f"target {target} is outside [0, {sizes.sum()}] rows")
    low, high = 0.0, 1.0
    while np.minimum(sizes, high * weights).sum() < target:
        high *= 2
    for _ in range(iterations):
        middle = (low + high) / 2
        if np.minimum(sizes, middle * weights).sum() < target:
            low = middle
        else:
            high = middle
    exact = np.minimum(sizes, high * weights)
    budgets = np.floor(exact).astype(np.int64)
    # Hand the rows rounding left over to the largest remainders among clusters with room (ties: lower index).
    short = target - budgets.sum()
    remainder = np.where(budgets < sizes, exact - budgets, -1.0)
    for j in np.lexsort((np.arange(len(sizes)), -remainder))[: max(short, 0)]:
        budgets[j] += 1
    return budgets


def softmax(values: np.ndarray, temperature: float) -> np.ndarray:
    scaled = values / temperature
    scaled -= scaled.max()
    weights = np.exp(scaled)
    return weights / weights.sum()


@dataclass
class ComplexityQuotaStep(Step):
    """Keeps `keep` of the rows, spread over clusters by complexity; needs the cluster step's columns."""

    name = "quotas"
    partition = CLUSTER
    fit_columns = (CLUSTER, CENTROID_DISTANCE, EMBEDDING)
    keep: float = 0.5
    temperature: float = 0.1
    neighbors: int = 20
    _budgets: dict[int, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.keep <= 1:
            raise PrunekitError(f"keep={self.keep} is outside (0, 1]: the fraction of rows kept")
        if self.temperature <= 0:
            raise PrunekitError(f"temperature={self.temperature}: use a positive value (smaller: budgets follow "
                                "complexity more sharply)")
        if self.neighbors < 1:
            raise PrunekitError(f"neighbors={self.neighbors}: use 1 or more")

    def requires(self) -> dict[str, Kind]:
        return {CLUSTER: "number", CENTROID_DISTANCE: "number", EMBEDDING: "vector"}

    def fit(self, batches: Iterable[pa.RecordBatch]) -> None:
        counts: dict[int, int] = {}
        distance_sums: dict[int, float] = {}
        vector_sums: dict[int, np.ndarray] = {}
        for batch in batches:
            labels = batch.column(CLUSTER).to_numpy()
            distances = batch.column(CENTROID_DISTANCE).to_numpy().astype(np.float64)
            vectors = normalized(embeddings_of(batch)).astype(np.float64)
            for label in np.unique(labels):
                members = labels == label
                counts[int(label)] = counts.get(int(label), 0) + int(members.sum())
                distance_sums[int(label)] = distance_sums.get(int(label), 0.0) + float(distances[members].sum())
                total = vectors[members].sum(axis=0)
                vector_sums[int(label)] = vector_sums[int(label)] + total if int(label) in vector_sums else total
        labels = sorted(counts)
        sizes = np.array([counts[j] for j in labels])
        centroids = np.stack([vector_sums[j] / counts[j] for j in labels])
        complexity = cluster_complexity(centroids, np.array([distance_sums[j] / counts[j] for j in labels]),
                                        self.neighbors)
        budgets = quota_budgets(sizes, softmax(complexity, self.temperature), round(self.keep * sizes.sum()))
        self._budgets = dict(zip(labels, budgets.tolist(), strict=True))

    def run(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        table = pa.Table.from_batches(list(batches))
        for label in np.unique(table.column(CLUSTER).to_numpy()) if table.num_rows else []:
            members = table.filter(pc.equal(table.column(CLUSTER), label))
            members = members.sort_by([(CENTROID_DISTANCE, "descending"), (ID, "ascending")]).combine_chunks()
            budget = self._budgets.get(int(label), 0)
            drop = np.arange(members.num_rows) >= budget
            distance = members.column(CENTROID_DISTANCE).to_numpy().astype(np.float64)
            for batch in members.to_batches():
                yield mark_dropped(batch, drop, "cluster-quota", distance, [f"cluster {label}"] * len(batch))
