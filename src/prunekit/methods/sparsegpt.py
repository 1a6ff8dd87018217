"""SparseGPT (Frantar & Alistarh, 2023): prune with an OBS reconstruction from the layer's input Hessian.

Columns are processed left to right in blocks; inside each block the mask is chosen adaptively (lowest
w^2 / [H^-1]_jj^2 among all rows and the block's columns, or per N:M group), and every pruned weight's error is
spread onto the not-yet-processed columns through the upper Cholesky factor of H^-1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunekit.methods.masks import _prune_lowest
from prunekit.methods.patterns import SparsityPattern

MAX_DAMPING_RETRIES = 6


@dataclass
class SparseGPTResult:
    weight: torch.Tensor  # updated weight, pruned entries exactly zero, in float32
    keep: torch.Tensor  # bool, True where kept
    damping: float  # relative dampening finally used (fraction of the mean Hessian diagonal)
    retries: int  # how many times the Cholesky factorisation had to be retried with more dampening


def inverse_hessian_factor(hessian: torch.Tensor, damping: float) -> tuple[torch.Tensor, float, int]:
    """Upper Cholesky factor of (H + damping * mean(diag H) * I)^-1, raising the damping tenfold until it works."""
    h = hessian.double()
    mean_diag = h.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    for retries in range(MAX_DAMPING_RETRIES + 1):
        factor, info = torch.linalg.cholesky_ex(h + damping * mean_diag * eye)
        if info == 0:
            inverse = torch.cholesky_inverse(factor)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if info == 0 and torch.isfinite(upper).all():
                return upper.float(), damping, retries
        damping *= 10
    raise RuntimeError(f"the Hessian stays singular even with dampening {damping / 10:g}")


def sparsegpt(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    pattern: SparsityPattern,
    block_size: int = 128,
    damping: float = 0.01,
) -> SparseGPTResult:
    """Prune `weight` [out, in] given the input Hessian `hessian` [in, in] (X X^T summed over tokens)."""
    if pattern.is_nm and block_size % pattern.m:
        raise ValueError(f"block size {block_size} is not a multiple of M={pattern.m}")
    w = weight.detach().float().clone()
    h = hessian.detach().float().clone()
    rows, cols = w.shape
    dead = h.diagonal() == 0  # inputs that never fire: their weights cannot matter, drop them
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    hinv, used, retries = inverse_hessian_factor(h, damping)
    pruned = torch.zeros_like(w, dtype=torch.bool)
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        block = w[:, start:end].clone()
        hinv_block = hinv[start:end, start:end]
        diag = hinv_block.diagonal()
        errors = torch.zeros_like(block)
        block_pruned = torch.zeros_like(block, dtype=torch.bool)
        if not pattern.is_nm:
            saliency = block.square() / diag.square()
            count = round(sparsity * saliency.numel())
            block_pruned = ~_prune_lowest(saliency.reshape(1, -1), count).reshape(saliency.shape)
        for i in range(end - start):
            if pattern.is_nm and i % pattern.m == 0:
                group = block[:, i : i + pattern.m].square() / diag[i : i + pattern.m].square()
                block_pruned[:, i : i + pattern.m] = ~_prune_lowest(group, pattern.m - pattern.n)
            column = block[:, i]
            quantized = column.masked_fill(block_pruned[:, i], 0.0)
            error = (column - quantized) / diag[i]
            block[:, i:] -= error.unsqueeze(1) * hinv_block[i, i:].unsqueeze(0)
            block[:, i] = quantized
            errors[:, i] = error
        w[:, start:end] = block
        w[:, end:] -= errors @ hinv[start:end, end:]
        pruned[:, start:end] = block_pruned
    w.masked_fill_(pruned, 0.0)
    if not torch.isfinite(w).all():
        raise RuntimeError("SparseGPT produced non-finite weights")
    return SparseGPTResult(w, ~pruned, used, retries)
