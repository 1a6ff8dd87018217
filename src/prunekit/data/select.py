"""Choosing which examples to keep, given one score per example (HIGHER = HARDER, see `prunekit.data.scores`).

Budget: `keep` is the fraction kept, in (0, 1]; exactly K = max(1, floor(keep * N + 0.5)) examples are kept
(round half up, never zero).

Strategies (ties always go to the lower index, so every result is deterministic given `seed`):

- easiest: the K lowest scores.
- hardest: the K highest scores (Paul et al., 2021; Sorscher et al., 2022, when data is plentiful).
- middle: drop N - K from both ends of the ranking, floor((N-K)/2) easiest and the rest (one more when odd) hardest,
  the hard end being where label noise concentrates.
- random: K uniformly at random without replacement.
- ccs, coverage-centric coreset selection (Zheng et al., 2023, Algorithm 1):
  1. drop the floor(beta * N) hardest examples;
  2. split [min, max] of the remaining scores into `bins` strata of equal width (the maximum falls in the last);
  3. while strata remain: take the one with the fewest examples (ties: lower score range first), give it
     m_s = min(|stratum|, floor(budget_left / strata_left)) and sample m_s of its examples uniformly at random.
  Visiting strata from the smallest up hands the share a small stratum cannot use on to the larger ones, and the
  floor never strands budget: the last stratum is always large enough for what is left, so exactly K are kept.
  When K > N - floor(beta * N), the cut would leave too few examples: only the N - K hardest are dropped (every
  remaining example is then kept), and a `SelectionNote` warning says so.

Class-balanced selection (`class_balanced=True`) splits the budget K into per-class quotas and runs the strategy
inside every class. Quotas:

- proportional (default): class c of size n_c gets K * n_c / N, rounded by largest remainder (floor, then the
  units left over go to the classes with the largest fractional parts, ties to the lower class), so the quotas
  sum to exactly K and never exceed a class; the pruned set keeps the class distribution of the full one.
- equal: K / C per class, capped at the class size, with what a small class cannot take spread evenly over the
  others (the same smallest-first filling as CCS strata), for deliberately rebalancing imbalanced data.

With `num_classes` given, a class in [0, num_classes) without examples is an error (it cannot be represented);
without it, only the labels present are classes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from prunekit.errors import PrunekitError

STRATEGIES = ("easiest", "hardest", "middle", "random", "ccs")
QUOTAS = ("proportional", "equal")


class SelectionNote(UserWarning):
    """Selection went ahead, but not exactly as asked (e.g. a CCS hard cutoff reduced to fit the budget)."""


def check_ids(ids: Sequence[object]) -> None:
    """Example ids must be unique: they are how a selection is matched back to the dataset."""
    seen: set[object] = set()
    for i in ids:
        if i in seen:
            raise PrunekitError(f"example id {i!r} appears more than once: give every example a unique id")
        seen.add(i)


def keep_count(n: int, keep: float) -> int:
    """Examples kept out of n for the fraction `keep` in (0, 1]: round half up, at least 1."""
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1:
        raise PrunekitError(f"keep={keep!r} is not a fraction in (0, 1]: e.g. keep=0.5 keeps half the examples")
    if n < 1:
        raise PrunekitError("there are no examples to select from: score at least one example")
    return max(1, min(n, math.floor(keep * n + 0.5)))


def spread_budget(sizes: Sequence[int] | np.ndarray, budget: int) -> np.ndarray:
    """Per-group counts: smallest group first, each gets min(size, floor(budget_left / groups_left))."""
    sizes = np.asarray(sizes, dtype=np.int64)
    take = np.zeros_like(sizes)
    order = np.lexsort((np.arange(len(sizes)), sizes))
    order = order[sizes[order] > 0]
    left = budget
    for k, g in enumerate(order):
        take[g] = min(int(sizes[g]), left // (len(order) - k))
        left -= int(take[g])
    return take


def largest_remainder(sizes: Sequence[int] | np.ndarray, budget: int) -> np.ndarray:
    """Counts proportional to `sizes` summing to `budget` (<= sum of sizes), by the largest-remainder method."""
    sizes = np.asarray(sizes, dtype=np.int64)
    total = int(sizes.sum())
    base = budget * sizes // total
    remainder = budget * sizes % total  # fractional parts, times total: exact integer comparison
    order = np.lexsort((np.arange(len(sizes)), -remainder))
    base[order[: budget - int(base.sum())]] += 1
    return base


def class_quotas(
    labels: torch.Tensor, budget: int, num_classes: int | None = None, quota: str = "proportional"
) -> dict[int, int]:
    """{class: examples kept} summing to `budget`; see the module doc for the two rules."""
    if quota not in QUOTAS:
        raise PrunekitError(f"unknown quota rule {quota!r}: use one of {', '.join(QUOTAS)}")
    classes, sizes = np.unique(_labels(labels, len(labels), num_classes), return_counts=True)
    if num_classes is not None and len(classes) < num_classes:
        empty = sorted(set(range(num_classes)) - set(classes.tolist()))[0]
        raise PrunekitError(
            f"class {empty} has no examples among the {len(labels)}: pass the right num_classes or labels"
        )
    counts = largest_remainder(sizes, budget) if quota == "proportional" else spread_budget(sizes, budget)
    return {int(c): int(k) for c, k in zip(classes, counts, strict=True)}


def ccs_cut(n: int, budget: int, beta: float) -> int:
    """How many of the hardest examples CCS drops: floor(beta * n), reduced when the budget needs the room."""
    cut = math.floor(beta * n)
    if n - cut < budget:
        warnings.warn(
            f"keeping {budget} of {n} examples leaves no room to drop the hardest {cut} (ccs_beta={beta}): "
            f"dropping only the hardest {n - budget} (ccs_beta={(n - budget) / n:.4g})",
            SelectionNote,
            stacklevel=5,
        )
        cut = n - budget
    return cut


def ccs_strata(scores: np.ndarray, bins: int) -> np.ndarray:
    """Stratum of each score: `bins` equal-width ranges over [min, max], the maximum in the last one."""
    lo, hi = float(scores.min()), float(scores.max())
    if hi == lo:
        return np.zeros(len(scores), dtype=np.int64)
    return np.minimum(((scores - lo) / (hi - lo) * bins).astype(np.int64), bins - 1)


def select(
    scores: torch.Tensor | np.ndarray,
    keep: float,
    strategy: str,
    labels: torch.Tensor | np.ndarray | None = None,
    seed: int = 0,
    class_balanced: bool = False,
    ccs_beta: float = 0.1,
    ccs_bins: int = 50,
    num_classes: int | None = None,
    quota: str = "proportional",
) -> torch.Tensor:
    """Indices of the kept examples (int64, ascending); see the module doc for every rule."""
    values = _scores(scores)
    n = len(values)
    budget = keep_count(n, keep)
    if strategy not in STRATEGIES:
        raise PrunekitError(f"unknown selection strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if not 0 <= ccs_beta < 1:
        raise PrunekitError(f"ccs_beta={ccs_beta} is not in [0, 1): it is the fraction of hardest examples dropped")
    if isinstance(ccs_bins, bool) or not isinstance(ccs_bins, int) or ccs_bins < 1:
        raise PrunekitError(f"ccs_bins={ccs_bins!r}: pass a positive int number of strata")
    rng = np.random.default_rng(seed)
    if not class_balanced:
        if labels is not None:
            _labels(labels, n, num_classes)
        kept = _choose(values, budget, strategy, rng, ccs_beta, ccs_bins)
    else:
        if labels is None:
            raise PrunekitError("class-balanced selection needs labels: pass labels or class_balanced=False")
        classes = _labels(labels, n, num_classes)
        parts = []
        for c, count in class_quotas(torch.from_numpy(classes), budget, num_classes, quota).items():
            members = np.flatnonzero(classes == c)
            parts.append(members[_choose(values[members], count, strategy, rng, ccs_beta, ccs_bins)])
        kept = np.concatenate(parts)
    return torch.from_numpy(np.sort(kept).astype(np.int64))


def _scores(scores: torch.Tensor | np.ndarray) -> np.ndarray:
    values = torch.as_tensor(scores).detach().cpu().double()
    if values.dim() != 1:
        raise PrunekitError(f"scores have shape {tuple(values.shape)}: pass one score per example")
    if not bool(torch.isfinite(values).all()):
        raise PrunekitError("scores contain NaN or infinite values: recompute them before selecting")
    return values.numpy()


def _labels(labels: torch.Tensor | np.ndarray, n: int, num_classes: int | None) -> np.ndarray:
    labels = torch.as_tensor(labels).detach().cpu()
    if labels.dim() != 1 or labels.shape[0] != n:
        raise PrunekitError(f"labels have shape {tuple(labels.shape)} for {n} scores: pass one label per example")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise PrunekitError(f"labels have dtype {labels.dtype}: pass integer class indices")
    labels = labels.long().numpy()
    top = num_classes if num_classes is not None else int(labels.max(initial=-1)) + 1
    bad = labels[(labels < 0) | (labels >= top)]
    if len(bad):
        raise PrunekitError(f"label {int(bad[0])} is outside the classes [0, {top}): check labels and num_classes")
    return labels


def _choose(
    scores: np.ndarray, count: int, strategy: str, rng: np.random.Generator, beta: float, bins: int
) -> np.ndarray:
    """Positions (into `scores`) of `count` examples chosen by `strategy`."""
    n = len(scores)
    index = np.arange(n)
    if count == 0:
        return index[:0]
    if strategy == "random":
        return rng.choice(n, size=count, replace=False)
    if strategy == "ccs":
        return _ccs(scores, count, rng, beta, bins)
    ascending = np.lexsort((index, scores))
    if strategy == "easiest":
        return ascending[:count]
    if strategy == "hardest":
        return np.lexsort((index, -scores))[:count]
    start = (n - count) // 2
    return ascending[start : start + count]


def _ccs(scores: np.ndarray, count: int, rng: np.random.Generator, beta: float, bins: int) -> np.ndarray:
    hardest_first = np.lexsort((np.arange(len(scores)), -scores))
    pool = np.sort(hardest_first[ccs_cut(len(scores), count, beta) :])
    strata = ccs_strata(scores[pool], bins)
    take = spread_budget(np.bincount(strata, minlength=bins), count)
    chosen = [rng.choice(pool[strata == s], size=int(take[s]), replace=False) for s in np.flatnonzero(take)]
    return np.concatenate(chosen)
