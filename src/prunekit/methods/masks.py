"""Turning importance scores into pruning masks. Pure functions: tensors in, boolean keep-masks out.

Scores are "higher = more important"; a mask is True where a weight is kept. Ties are broken by position, so
the number of pruned weights is always exact.
"""

from __future__ import annotations

import torch

from prunekit.methods.patterns import SparsityPattern


def prune_lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Keep-mask removing exactly `count` lowest scores along the last dimension.

    A k-th value threshold (several times faster than sorting); among scores equal to the threshold, the first
    ones by position are removed until the count is exact.
    """
    if count <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    threshold = scores.kthvalue(count, dim=-1, keepdim=True).values
    below = scores < threshold
    ties = scores == threshold
    still_needed = count - below.sum(dim=-1, keepdim=True)
    return ~(below | (ties & (ties.cumsum(dim=-1) <= still_needed)))


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Remove round(sparsity * in_features) weights in every output row (Wanda's per-output comparison group)."""
    return prune_lowest(scores, round(sparsity * scores.shape[-1]))


def matrix_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Remove round(sparsity * numel) weights, comparing all weights of the matrix with each other."""
    flat = prune_lowest(scores.reshape(1, -1), round(sparsity * scores.numel()))
    return flat.reshape(scores.shape)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the `n` highest scores in every group of `m` consecutive input weights of each row."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"in_features {cols} is not a multiple of M={m}")
    groups = scores.reshape(rows, cols // m, m)
    return prune_lowest(groups, m - n).reshape(rows, cols)


def make_mask(scores: torch.Tensor, sparsity: float, pattern: SparsityPattern, per_row: bool = True) -> torch.Tensor:
    """The keep-mask for one weight matrix given its scores, the target sparsity and the pattern."""
    if pattern.is_nm:
        return nm_mask(scores, pattern.n, pattern.m)
    return row_mask(scores, sparsity) if per_row else matrix_mask(scores, sparsity)
