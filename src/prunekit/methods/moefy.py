"""Dense-to-MoE conversion (MoEfication, Zhang et al. 2022; ToMoE's structural view): pure functions.

A dense MLP's intermediate channels are split into equal experts by co-activation: each channel is described by
its activation magnitudes on calibration tokens (normalised), and balanced k-means puts channels that fire together
into the same expert. A linear router is fitted by ridge regression from the MLP's input to each expert's
contribution (the norm of its share of the MLP output) per token, so the top-k experts by router logit are the ones
that matter for that token. The MoE families renormalise the top-k gate weights to sum to 1; the router is scaled
down until those weights are all within ~1% of 1/k (ordering, hence the choice, is unchanged) and each expert's
output projection is multiplied by k, so a token gets (almost exactly) the sum of its chosen experts' outputs:
the dense MLP restricted to their channels.
"""

from __future__ import annotations

import torch

from prunekit.methods.registry import register

GATE_SPREAD = 0.01  # largest logit gap among a token's experts after scaling: gate weights within ~1% of 1/k


def balanced_clusters(features: torch.Tensor, clusters: int, iterations: int = 20, seed: int = 0) -> torch.Tensor:
    """Labels [n] putting the n rows of `features` into `clusters` clusters of exactly n / clusters rows each,
    by balanced k-means on cosine similarity: a seeded farthest-point start, then each round assigns rows to
    their most similar centroid that still has room (the rows most sure of their choice first) and recomputes
    the centroids, until the labels stop changing."""
    n = len(features)
    if n % clusters:
        raise ValueError(f"{n} rows do not split into {clusters} equal clusters")
    size = n // clusters
    x = torch.nn.functional.normalize(features.float(), dim=1)
    generator = torch.Generator().manual_seed(seed)
    starts = [int(torch.randint(n, (1,), generator=generator))]
    closest = x @ x[starts[0]]
    for _ in range(1, clusters):  # the next start is the row least similar to the starts so far
        starts.append(int(torch.argmin(closest)))
        closest = torch.maximum(closest, x @ x[starts[-1]])
    centers = x[starts]
    labels = torch.full((n,), -1, dtype=torch.long)
    for _ in range(iterations):
        similarity = x @ centers.T  # [n, clusters]
        preferences = torch.argsort(-similarity, dim=1, stable=True).tolist()
        room = [size] * clusters
        new = [0] * n
        for row in torch.argsort(-similarity.max(dim=1).values, stable=True).tolist():
            cluster = next(c for c in preferences[row] if room[c])
            new[row] = cluster
            room[cluster] -= 1
        assigned = torch.tensor(new)
        if torch.equal(assigned, labels):
            break
        labels = assigned
        members = torch.nn.functional.one_hot(labels, clusters).float()
        centers = torch.nn.functional.normalize(members.T @ x, dim=1)
    return labels


def fit_router(xtx: torch.Tensor, xty: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """Ridge regression [experts, hidden] from the inputs' X^T X [hidden, hidden] and X^T Y [hidden, experts];
    the ridge is relative to the mean diagonal of X^T X."""
    xtx = xtx.double()
    damped = xtx + ridge * xtx.diagonal().mean().clamp(min=1e-12) * torch.eye(len(xtx), dtype=torch.float64)
    return torch.linalg.solve(damped, xty.double()).T


def router_scale(logits: torch.Tensor, spread: float = GATE_SPREAD) -> float:
    """The factor that brings the largest per-token logit range over `logits` [tokens, experts] down to `spread`."""
    widest = float((logits.max(dim=1).values - logits.min(dim=1).values).max())
    return spread / widest if widest > 0 else 1.0


@register("moefy", "conversion",
          "dense to MoE: split each MLP into co-activated experts with a fitted router (MoEfication)",
          needs=("mlp_activations",), options=("seed",))
def expert_channels(experts: int, activations: torch.Tensor, seed: int = 0) -> list[torch.Tensor]:
    """The intermediate channels of each expert (sorted), from activations [tokens, channels] of one MLP."""
    labels = balanced_clusters(activations.abs().T, experts, seed=seed)
    return [torch.nonzero(labels == e).flatten() for e in range(experts)]
