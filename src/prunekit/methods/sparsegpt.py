"""SparseGPT (Frantar & Alistarh, 2023): prune with an OBS reconstruction from the layer's input Hessian.

Columns are processed left to right in blocks; inside each block the mask is chosen adaptively (lowest
w^2 / [H^-1]_jj^2 among all rows and the block's columns, or per N:M group), and every pruned weight's error is
spread onto the not-yet-processed columns through the upper Cholesky factor of H^-1.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from prunekit.methods.masks import prune_lowest
from prunekit.methods.patterns import SparsityPattern
from prunekit.methods.registry import Pruned, register

MAX_DAMPING_RETRIES = 6


@contextmanager
def _single_thread() -> Iterator[None]:
    """Thousands of tiny kernels run faster on one thread: no fork/join per call, and no collapse when the
    machine is busy (an OpenMP team waiting on a descheduled thread costs milliseconds per kernel)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass
class InverseHessian:
    """What SparseGPT needs from a Hessian; computed once and shared by the linears that see the same input."""

    factor: torch.Tensor  # upper Cholesky factor of (H + damping)^-1, float32
    dead: torch.Tensor  # bool [in]: input features that never fired
    damping: float  # relative dampening finally used (fraction of the mean Hessian diagonal)
    retries: int  # times the factorisation was retried with tenfold dampening


def inverse_hessian(hessian: torch.Tensor, damping: float = 0.01) -> InverseHessian:
    """Factor (H + damping * mean(diag H) * I)^-1, raising the dampening tenfold until the Cholesky succeeds."""
    h = hessian.detach().float().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0  # a feature that never fires: its weights cannot matter, they are dropped below
    mean_diag = h.diagonal().mean()
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    used = damping
    with _single_thread():
        for retries in range(MAX_DAMPING_RETRIES + 1):
            lower, info = torch.linalg.cholesky_ex(h + used * mean_diag * eye)
            if info == 0:
                upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
                if info == 0:
                    return InverseHessian(upper, dead, used, retries)
            used *= 10
    raise RuntimeError(f"the Hessian stays singular even with dampening {used / 10:g}")


@dataclass
class SparseGPTResult:
    weight: torch.Tensor  # updated weight, pruned entries exactly zero, float32
    keep: torch.Tensor  # bool, True where kept


def sparsegpt(
    weight: torch.Tensor,
    hessian: torch.Tensor | InverseHessian,
    sparsity: float,
    pattern: SparsityPattern,
    block_size: int = 128,
    damping: float = 0.01,
) -> SparseGPTResult:
    """Prune `weight` [out, in] given its input Hessian [in, in] (X^T X over tokens) or its InverseHessian."""
    if pattern.is_nm and block_size % pattern.m:
        raise ValueError(f"block size {block_size} is not a multiple of M={pattern.m}")
    prepared = hessian if isinstance(hessian, InverseHessian) else inverse_hessian(hessian, damping)
    hinv = prepared.factor
    # Work on W^T so each input column is a contiguous row: the per-column updates are then fast rank-1 BLAS calls.
    wt = weight.detach().float().t().contiguous()
    wt[prepared.dead] = 0.0
    cols = wt.shape[0]
    pruned = torch.zeros_like(wt, dtype=torch.bool)
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        block = wt[start:end].clone()
        hinv_block = hinv[start:end, start:end]
        diag = hinv_block.diagonal().unsqueeze(1)
        block_pruned = pruned[start:end]
        if not pattern.is_nm:
            saliency = block.square() / diag.square()
            count = round(sparsity * saliency.numel())
            block_pruned.copy_(~prune_lowest(saliency.reshape(1, -1), count).reshape(saliency.shape))
        # the error of column i is w_i / d_i where pruned and 0 elsewhere: a per-entry scale
        scale = block_pruned / diag
        errors = torch.empty_like(block)
        with _single_thread():
            for i in range(end - start):
                if pattern.is_nm and i % pattern.m == 0:
                    group = slice(i, i + pattern.m)
                    saliency = (block[group].square() / diag[group].square()).t()
                    block_pruned[group] = ~prune_lowest(saliency, pattern.m - pattern.n).t()
                    scale[group] = block_pruned[group] / diag[group]
                torch.mul(block[i], scale[i], out=errors[i])
                block[i:].addr_(hinv_block[i, i:], errors[i], alpha=-1.0)
        wt[start:end] = block
        wt[end:].addmm_(hinv[start:end, end:].t(), errors, alpha=-1.0)
    wt.masked_fill_(pruned, 0.0)
    if not torch.isfinite(wt).all():
        raise RuntimeError("SparseGPT produced non-finite weights")
    w, pruned = wt.t().contiguous(), pruned.t().contiguous()
    return SparseGPTResult(w, ~pruned)


def shared_inverse(hessian: torch.Tensor, block_size: int = 128, damping: float = 0.01) -> InverseHessian:
    """The inverse-Hessian factor, computed once for all the linears that see one input (q/k/v, gate/up)."""
    return inverse_hessian(hessian, damping)


@register("sparsegpt", "weights", "OBS reconstruction from the input Hessian (Frantar & Alistarh 2023)",
          needs=("hessian",), options=("block_size", "damping"), updates_weights=True, prepare=shared_inverse)
def sparsegpt_method(weight: torch.Tensor, hessian: torch.Tensor | InverseHessian, sparsity: float,
                     pattern: SparsityPattern, block_size: int = 128, damping: float = 0.01) -> Pruned:
    prepared = hessian if isinstance(hessian, InverseHessian) else inverse_hessian(hessian, damping)
    result = sparsegpt(weight, prepared, sparsity, pattern, block_size=block_size)
    note = None
    if prepared.retries:
        note = f"Cholesky failed at dampening {damping:g}; retried with {prepared.damping:g} of the mean diagonal"
    return Pruned(result.keep, result.weight, note)
