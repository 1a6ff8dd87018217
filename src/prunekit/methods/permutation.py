"""Channel permutation for N:M sparsity (after RIA, Zhang et al., ICLR 2024, section 4).

An N:M pattern keeps the N best of every M consecutive inputs of a row; which inputs share a group is an accident
of the stored order. Reordering the inputs so that important ones do not crowd into the same groups keeps more of
the score mass. Given a score matrix S [out, in] (higher = more important), `channel_permutation` returns an order
`perm` of the inputs (S[:, perm] is what the N:M mask is chosen on) with

    kept(S[:, perm]) >= kept(S),   kept(S) = sum over rows and groups of the N largest scores of the group,

found by RIA's heuristic (channels sorted by their total score and dealt round-robin into the groups, kept only if
it beats the stored order), then RIA's refinement: for each position p of a group, take the channel at p out of
every group and reassign those channels to the groups by a linear sum assignment (Hungarian algorithm,
scipy.optimize.linear_sum_assignment) maximising the kept score. Each assignment can only raise the kept score
(leaving every channel where it was is one of the assignments), so the result is never worse than the start.

This module is pure math; how a permutation reaches the saved model is the engine's business: prunekit absorbs it
into the MLP (the output projection's input channels are the MLP's intermediate channels, so the input projections'
rows and the output projection's columns are reordered together, exactly the same function), which keeps the
stored down_proj / fc2 in hardware N:M order. See engine/layerwise.py.
"""

from __future__ import annotations

import torch

CHUNK_ELEMENTS = 1 << 24  # bound on the [out, candidates, groups] block scored at once


def kept_score(scores: torch.Tensor, n: int, m: int) -> float:
    """The score an N:M mask keeps: the N largest of every group of M consecutive inputs, summed."""
    rows, cols = scores.shape
    return float(scores.reshape(rows, cols // m, m).topk(n, dim=-1).values.sum())


def _deal(scores: torch.Tensor, m: int) -> torch.Tensor:
    """RIA's heuristic order: channels by total score, dealt into the groups in a snake (0..G-1, G-1..0, ...)."""
    cols = scores.shape[1]
    groups = cols // m
    order = scores.sum(dim=0).argsort(descending=True)
    slots = torch.empty(groups, m, dtype=torch.long)
    for rank, channel in enumerate(order.tolist()):
        position, offset = divmod(rank, groups)
        slots[offset if position % 2 == 0 else groups - 1 - offset, position] = channel
    return slots


def _assignment_gain(scores: torch.Tensor, slots: torch.Tensor, position: int, n: int) -> torch.Tensor:
    """gain[a, g]: kept score of group g with its channel at `position` replaced by the channel taken out of a.

    With the group's other M-1 scores r sorted descending (T = sum of their N largest), adding c keeps
    T + max(0, c - r_N): so gain = sum over rows of T[g] + sum over rows of relu(c[a] - r_N[g])."""
    rows = scores.shape[0]
    groups, _m = slots.shape
    rest = torch.cat([slots[:, :position], slots[:, position + 1:]], dim=1)  # [G, m-1]
    rest_sorted = scores[:, rest].sort(dim=-1, descending=True).values  # [R, G, m-1]
    base = rest_sorted[..., :n].sum(dim=(0, 2)).double()  # [G]
    threshold = rest_sorted[..., n - 1]  # [R, G]
    candidates = scores[:, slots[:, position]]  # [R, A]
    gain = torch.empty(groups, groups, dtype=torch.float64)
    step = max(1, CHUNK_ELEMENTS // max(1, rows * groups))
    for start in range(0, groups, step):
        c = candidates[:, start:start + step]
        gain[start:start + c.shape[1]] = (c.unsqueeze(2) - threshold.unsqueeze(1)).clamp_min(0).sum(0).double()
    return gain + base.unsqueeze(0)


def channel_permutation(scores: torch.Tensor, n: int, m: int, rounds: int = 1) -> torch.Tensor:
    """An order of the inputs of `scores` [out, in] under which an N:M mask keeps at least as much score as in the
    stored order (LongTensor [in]); `rounds` passes of the assignment refinement over the M positions."""
    from scipy.optimize import linear_sum_assignment

    s = scores.detach().float().cpu()
    cols = s.shape[1]
    if cols % m:
        raise ValueError(f"in_features {cols} is not a multiple of M={m}")
    identity = torch.arange(cols).reshape(cols // m, m)
    dealt = _deal(s, m)
    slots = dealt if kept_score(s[:, dealt.reshape(-1)], n, m) > kept_score(s, n, m) else identity
    best = kept_score(s[:, slots.reshape(-1)], n, m)
    for _ in range(rounds):
        start = best
        for position in range(m):
            gain = _assignment_gain(s, slots, position, n).numpy()
            chosen, groups = linear_sum_assignment(gain, maximize=True)
            if gain[chosen, groups].sum() <= gain.trace() + 1e-9 * abs(gain.trace()):
                continue  # no better assignment than leaving every channel where it is
            new = slots.clone()
            new[torch.as_tensor(groups), position] = slots[torch.as_tensor(chosen), position]
            value = kept_score(s[:, new.reshape(-1)], n, m)
            if value > best:
                slots, best = new, value
        if best <= start:
            break
    return slots.reshape(-1)
