"""Per-example difficulty scores for pruning labelled datasets: pure functions on tensors, no IO, no models.

Convention: every score is oriented so that HIGHER = HARDER, i.e. more worth keeping when easy data is pruned.

- EL2N (Paul et al., 2021): ||softmax(f(x)) - onehot(y)||_2, averaged over S runs (seeds) or records.
- GraNd (Paul et al., 2021): ||d loss(f(x), y) / d theta||_2, averaged over runs; the norms themselves come from
  `prunekit.data.dynamics.per_example_grad_norms`.
- Forgetting events (Toneva et al., 2019): the number of epochs t where the example is classified correctly at t
  and incorrectly at t+1. An example never classified correctly in E epochs gets E, more than any learned example
  can reach (at most floor(E/2) transitions), so it counts as the most forgettable, as Toneva et al. sort them.
- AUM (Pleiss et al., 2020): margin_t = z_y - max_{c != y} z_c on the LOGITS z of epoch t; the score is
  -(mean over epochs of margin_t), so low-margin (hard or mislabelled) examples score high.
- Entropy: -sum_c p_c log p_c of the predicted distribution, averaged over runs.
- Self-supervised prototypes (Sorscher et al., 2022): k-means on (by default L2-normalised) embeddings; the score is
  the distance of each example to its nearest centroid (cosine distance by default, as in the paper, or
  euclidean): far from every prototype = atypical = hard.
- Random: uniform in [0, 1), seeded; the baseline every other score must beat.

All outputs are float64 tensors of shape [N].
"""

from __future__ import annotations

import numpy as np
import torch

from prunekit.errors import PrunekitError

PROTOTYPE_METRICS = ("cosine", "euclidean")


def check_finite(values: torch.Tensor, what: str) -> None:
    if values.is_floating_point() and not bool(torch.isfinite(values).all()):
        raise PrunekitError(f"{what} contain NaN or infinite values: check the model outputs before scoring")


def check_labels(labels: torch.Tensor | None, n: int, num_classes: int, score: str) -> torch.Tensor:
    """Labels as int64 [N], each in [0, num_classes)."""
    if labels is None:
        raise PrunekitError(f"the {score} score needs labels: pass the dataset's labels (or use a label-free score)")
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.shape[0] != n:
        raise PrunekitError(f"labels have shape {tuple(labels.shape)} for {n} scored examples: pass one per example")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise PrunekitError(f"labels have dtype {labels.dtype}: pass integer class indices")
    labels = labels.long()
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        bad = int(labels[(labels < 0) | (labels >= num_classes)][0])
        raise PrunekitError(f"label {bad} is outside the {num_classes} classes [0, {num_classes}): check the labels")
    return labels


def check_class_matrix(values: torch.Tensor, what: str) -> torch.Tensor:
    """[N, C] or [S, N, C] -> [S, N, C] float64."""
    values = torch.as_tensor(values)
    if values.dim() == 2:
        values = values.unsqueeze(0)
    if values.dim() != 3 or values.shape[-1] < 2:
        raise PrunekitError(f"{what} have shape {tuple(values.shape)}: expected [N, C] or [runs, N, C] with C >= 2")
    return values.double()


def check_probabilities(probs: torch.Tensor) -> None:
    """Rows must be distributions: catches logits passed where softmax outputs are expected."""
    check_finite(probs, "probabilities")
    if bool((probs < 0).any()) or not bool(torch.allclose(probs.sum(-1), torch.ones((), dtype=probs.dtype), atol=1e-3)):
        raise PrunekitError("probabilities are negative or do not sum to 1: pass softmax outputs, not logits")


def check_embeddings(embeddings: torch.Tensor, n: int, expected_dim: int | None = None) -> torch.Tensor:
    """Embeddings as float64 [N, D], one finite row per example."""
    embeddings = torch.as_tensor(embeddings)
    if embeddings.dim() != 2:
        raise PrunekitError(f"embeddings have shape {tuple(embeddings.shape)}: expected [examples, dim]")
    if embeddings.shape[0] != n:
        raise PrunekitError(f"{embeddings.shape[0]} embeddings for {n} examples: embed every example exactly once")
    if expected_dim is not None and embeddings.shape[1] != expected_dim:
        raise PrunekitError(
            f"embeddings have dimension {embeddings.shape[1]} but {expected_dim} was expected: "
            "use embeddings from the same encoder"
        )
    embeddings = embeddings.double()
    check_finite(embeddings, "embeddings")
    return embeddings


def _runs_first(values: torch.Tensor, what: str) -> torch.Tensor:
    """[N] or [S, N] -> [S, N] float64."""
    values = torch.as_tensor(values)
    if values.dim() == 1:
        values = values.unsqueeze(0)
    if values.dim() != 2:
        raise PrunekitError(f"{what} have shape {tuple(values.shape)}: expected [N] or [runs, N]")
    return values.double()


def el2n_per_record(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """||p - onehot(y)||_2 for every leading index: [..., N, C] -> [..., N]."""
    onehot = torch.nn.functional.one_hot(labels, probs.shape[-1]).to(probs.dtype)
    return (probs - onehot).norm(dim=-1)


def el2n(probs: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """EL2N: mean over runs of ||softmax - onehot(label)||_2; probs [N, C] or [runs, N, C]."""
    probs = check_class_matrix(probs, "probabilities")
    check_probabilities(probs)
    labels = check_labels(labels, probs.shape[1], probs.shape[2], "el2n")
    return el2n_per_record(probs, labels).mean(dim=0)


def grand(grad_norms: torch.Tensor) -> torch.Tensor:
    """GraNd: mean over runs of per-example gradient norms; [N] or [runs, N]."""
    norms = _runs_first(grad_norms, "gradient norms")
    check_finite(norms, "gradient norms")
    if bool((norms < 0).any()):
        raise PrunekitError("gradient norms are negative: pass norms, not raw gradients")
    return norms.mean(dim=0)


def forgetting_events(correct: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
    """Forgetting events from correct [E, N] (bool, one row per epoch in training order).

    `present` [E, N]: which records exist; transitions are then counted between an example's consecutive recorded
    epochs. An example never correct (in its recorded epochs) gets E, more than the floor(E/2) a learned one can."""
    correct = torch.as_tensor(correct)
    if correct.dim() != 2 or correct.dtype != torch.bool:
        raise PrunekitError(f"correct has shape {tuple(correct.shape)}, dtype {correct.dtype}: expected bool [E, N]")
    if present is None:
        present = torch.ones_like(correct)
    elif present.shape != correct.shape:
        raise PrunekitError(f"present has shape {tuple(present.shape)} but correct has {tuple(correct.shape)}")
    epochs, n = correct.shape
    events = torch.zeros(n, dtype=torch.float64)
    last = torch.zeros(n, dtype=torch.bool)  # correctness at the previous recorded epoch
    seen = torch.zeros(n, dtype=torch.bool)
    for t in range(epochs):
        now, here = correct[t], present[t]
        events += (here & seen & last & ~now).double()
        last = torch.where(here, now, last)
        seen |= here
    learned = (correct & present).any(dim=0)
    return torch.where(learned, events, torch.full_like(events, float(epochs)))


def margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """z_y - max_{c != y} z_c for every leading index: [..., N, C] -> [..., N]."""
    index = labels.expand(logits.shape[:-1]).unsqueeze(-1)
    assigned = logits.gather(-1, index).squeeze(-1)
    others = logits.scatter(-1, index, float("-inf"))
    return assigned - others.max(dim=-1).values


def aum(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """AUM score: -(mean over epochs of the logit margin); logits [N, C] or [epochs, N, C]."""
    logits = check_class_matrix(logits, "logits")
    check_finite(logits, "logits")
    labels = check_labels(labels, logits.shape[1], logits.shape[2], "aum")
    return -margins(logits, labels).mean(dim=0)


def entropy_per_record(probs: torch.Tensor) -> torch.Tensor:
    """-sum_c p_c log p_c over the last dim, with 0 log 0 = 0."""
    return -torch.special.xlogy(probs, probs).sum(dim=-1)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Predictive entropy (nats), mean over runs; probs [N, C] or [runs, N, C]."""
    probs = check_class_matrix(probs, "probabilities")
    check_probabilities(probs)
    return entropy_per_record(probs).mean(dim=0)


def prototype_distance(
    embeddings: torch.Tensor,
    clusters: int,
    seed: int,
    normalize: bool = True,
    metric: str = "cosine",
    n_init: int = 10,
) -> torch.Tensor:
    """Distance of each example to its nearest k-means centroid (Sorscher et al., 2022); higher = more atypical."""
    from sklearn.cluster import KMeans  # slow to import; only this score needs it

    embeddings = torch.as_tensor(embeddings)
    embeddings = check_embeddings(embeddings, embeddings.shape[0] if embeddings.dim() else 0)
    n = embeddings.shape[0]
    if metric not in PROTOTYPE_METRICS:
        raise PrunekitError(f"unknown prototype metric {metric!r}: use one of {', '.join(PROTOTYPE_METRICS)}")
    if clusters < 1 or clusters > n:
        raise PrunekitError(f"{clusters} clusters for {n} examples: choose between 1 and {n} clusters")
    x = embeddings.numpy()
    if normalize:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        if bool((norms == 0).any()):
            raise PrunekitError("some embeddings are all zeros and cannot be normalised: drop them or normalize=False")
        x = x / norms
    centroids = KMeans(n_clusters=clusters, random_state=seed, n_init=n_init).fit(x).cluster_centers_
    return torch.from_numpy(_nearest_distance(x, centroids, metric))


def _nearest_distance(x: np.ndarray, centroids: np.ndarray, metric: str) -> np.ndarray:
    if metric == "euclidean":
        squared = (x * x).sum(1)[:, None] - 2 * x @ centroids.T + (centroids * centroids).sum(1)[None, :]
        return np.sqrt(np.clip(squared, 0.0, None)).min(axis=1)
    # cosine: a centroid is a direction; a zero centroid (opposite points averaging out) is equally far from all
    unit = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    rows = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return np.clip(1.0 - rows @ unit.T, 0.0, 2.0).min(axis=1)


def random_scores(n: int, seed: int) -> torch.Tensor:
    """Uniform [0, 1) scores, reproducible from `seed`."""
    if n < 0:
        raise PrunekitError(f"cannot score {n} examples: n must be >= 0")
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=generator, dtype=torch.float64)
