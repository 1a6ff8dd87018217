"""DSnoT (Zhang et al., ICLR 2024, "Dynamic Sparse No Training"): training-free prune-and-grow refinement of any
weight method's mask, one swap per output row per cycle, up to `steps` cycles (50, the paper's cap).

Each cycle, in every row, a pruned weight is grown back (to its dense value: the method's own value, zero, is
replaced) and a kept weight is pruned, so the row's count of kept weights is unchanged (for N:M, the pruned weight
comes from the grown weight's group, so every group still keeps N). The paper picks the pair from the expected
reconstruction error's change, using each input's mean and variance as a surrogate; here that change is computed
exactly from the layer's input Hessian H = X^T X, so that refinement can never make the layer worse: with
r = W_dense - W' (the row's residual) and g = r H, growing j (r_j -> 0) and pruning i (r_i -> r_i + w'_i) change the
row's error ||X r^T||^2 by

    dE = -2 r_j g_j + r_j^2 H_jj + 2 w'_i (g_i - r_j H_ij) + w'_i^2 H_ii,

the most negative pair is applied, and only when dE < 0; a row stops as soon as no pair lowers its error. The pairs
tried: unstructured, the `CANDIDATES` best single growths with the `CANDIDATES` cheapest single prunings; N:M, every
(pruned, kept) pair inside every group. g is updated by two rows of H per swap, so a cycle costs O(out x in);
everything in float64.
"""

from __future__ import annotations

import torch

from prunekit.methods.patterns import SparsityPattern
from prunekit.methods.registry import Pruned

CANDIDATES = 16  # unstructured: growth and pruning candidates per row and cycle, every pair tried
RELATIVE_TOLERANCE = 1e-12  # a swap must lower the row's error by more than this fraction (rounding noise)


def reconstruction_error(dense: torch.Tensor, weight: torch.Tensor, hessian: torch.Tensor) -> float:
    """||X W_dense^T - X W^T||^2 = sum over rows of r H r^T, in float64."""
    r = (dense.double() - weight.double())
    return float(((r @ hessian.double()) * r).sum())


def _pair_costs(r: torch.Tensor, g: torch.Tensor, w: torch.Tensor, h: torch.Tensor, grow: torch.Tensor,
                prune: torch.Tensor) -> torch.Tensor:
    """dE of every (grow j, prune i) pair of a row: grow [n, ..., A], prune [n, ..., B] (indices into the rows of
    `r`, `g`, `w`, with the same middle dimensions) -> [n, ..., A, B]."""
    n = r.shape[0]
    diag = h.diagonal()

    def take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return values.gather(1, index.reshape(n, -1)).view(index.shape)

    r_j, g_j = take(r, grow), take(g, grow)
    w_i, g_i = take(w, prune), take(g, prune)
    grow_cost = -2 * r_j * g_j + r_j.square() * diag[grow]
    prune_cost = 2 * w_i * g_i + w_i.square() * diag[prune]
    cross = h[grow.unsqueeze(-1), prune.unsqueeze(-2)]  # H_ji, [n, ..., A, B]
    return grow_cost.unsqueeze(-1) + prune_cost.unsqueeze(-2) - 2 * w_i.unsqueeze(-2) * r_j.unsqueeze(-1) * cross


def _best(costs: torch.Tensor, grow: torch.Tensor, prune: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                                   torch.Tensor]:
    """The cheapest pair of each row: costs [n, ..., A, B] with grow [n, ..., A] and prune [n, ..., B]."""
    n = costs.shape[0]
    a, b = grow.shape[-1], prune.shape[-1]
    best, where = costs.reshape(n, -1).min(dim=1)
    block, rest = where // (a * b), where % (a * b)
    j = grow.reshape(n, -1).gather(1, (block * a + rest // b).unsqueeze(1)).squeeze(1)
    i = prune.reshape(n, -1).gather(1, (block * b + rest % b).unsqueeze(1)).squeeze(1)
    return best, j, i


def _candidates(keep: torch.Tensor, r: torch.Tensor, g: torch.Tensor, w: torch.Tensor, h: torch.Tensor,
                pattern: SparsityPattern) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: the best pair's dE, its grown and its pruned index.

    Unstructured: the CANDIDATES best single growths x the CANDIDATES cheapest single prunings, every pair exact.
    N:M: every (pruned, kept) pair inside every group, exact."""
    n_rows, cols = keep.shape
    if pattern.is_nm:
        m, n = pattern.m, pattern.n
        groups = cols // m
        order = keep.view(n_rows, groups, m).to(torch.int8).argsort(dim=-1, stable=True)  # pruned first
        order = order + (torch.arange(groups, device=keep.device) * m).view(1, groups, 1)
        grow, prune = order[..., : m - n], order[..., m - n:]  # [rows, G, m-n], [rows, G, n]
        return _best(_pair_costs(r, g, w, h, grow, prune), grow, prune)
    diag = h.diagonal()
    a = min(CANDIDATES, cols - int(keep.sum(1).max()))
    b = min(CANDIDATES, int(keep.sum(1).min()))
    if a <= 0 or b <= 0:
        zero = torch.zeros(n_rows, dtype=torch.long, device=r.device)
        return torch.full((n_rows,), float("inf"), dtype=r.dtype, device=r.device), zero, zero
    grow_single = (-2 * r * g + r.square() * diag).masked_fill(keep, float("inf"))
    prune_single = (2 * w * g + w.square() * diag).masked_fill(~keep, float("inf"))
    grow = grow_single.topk(a, dim=1, largest=False).indices
    prune = prune_single.topk(b, dim=1, largest=False).indices
    return _best(_pair_costs(r, g, w, h, grow, prune), grow, prune)


def dsnot(dense: torch.Tensor, pruned: Pruned, hessian: torch.Tensor, pattern: SparsityPattern,
          steps: int = 50) -> Pruned:
    """Refine `pruned` (the mask, and the new weights of a reconstruction method) of the dense `dense` [out, in]."""
    w0 = dense.detach().double()
    keep = pruned.keep.clone().to(w0.device)
    values = (pruned.weight.detach().double().to(w0.device) if pruned.weight is not None else w0.clone()) * keep
    h = hessian.detach().double().to(w0.device)
    residual = w0 - values
    g = residual @ h
    active = torch.arange(w0.shape[0], device=w0.device)
    for _ in range(steps):
        if active.numel() == 0:
            break
        k, r, gg, wv = keep[active], residual[active], g[active], values[active]
        best, j, i = _candidates(k, r, gg, wv, h, pattern)
        error = (gg * r).sum(1)  # the row's current error r H r^T, since g = r H
        accept = torch.isfinite(best) & (best < -RELATIVE_TOLERANCE * error.abs().clamp_min(1e-300))
        rows, j, i = active[accept], j[accept], i[accept]
        active = rows
        if rows.numel() == 0:
            break
        delta_j = -residual[rows, j]
        delta_i = values[rows, i]
        values[rows, j] = w0[rows, j]
        values[rows, i] = 0.0
        keep[rows, j] = True
        keep[rows, i] = False
        residual[rows, j] = 0.0
        residual[rows, i] = w0[rows, i]
        g[rows] += delta_j.unsqueeze(1) * h[j] + delta_i.unsqueeze(1) * h[i]
    weight = values.to(pruned.weight.dtype) if pruned.weight is not None else None
    return Pruned(keep, weight, pruned.note)
