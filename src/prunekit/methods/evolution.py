"""Evolutionary search over per-layer sparsity levels (EvoPress: Sieberling et al., "EvoPress: Accurate Dynamic
Model Compression via Evolutionary Search", ICML 2025). Pure functions: integers, floats and tensors.

A candidate gives decoder layer i the sparsity `base + offsets[i] * step`. The offsets are integers that sum to
zero, so when the layers are the same size every candidate removes the same number of weights as the uniform
allocation `base` (the budget holds exactly, and no candidate needs a repair step). The level-switch mutation
moves one step of sparsity from one layer to another, within [0, max_sparsity]. Fitness is the KL divergence of
the candidate's next-token distribution from the dense model's (lower is better), and selection is multi-step:
every offspring is scored on a few tokens, the best few on all of them, and the parent is replaced only by a
survivor that beats it on the full set (so the best fitness never rises).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812


def offset_bounds(base: float, step: float, max_sparsity: float, max_steps: int | None = None) -> tuple[int, int]:
    """The lowest and highest offset that keep `base + offset * step` within [0, max_sparsity] (and, given
    `max_steps`, within that many steps of `base`)."""
    tolerance = 1e-9  # so that base exactly on the grid reaches its bounds despite rounding
    low, high = math.ceil(-base / step - tolerance), math.floor((max_sparsity - base) / step + tolerance)
    return (low, high) if max_steps is None else (max(low, -max_steps), min(high, max_steps))


def layer_sparsities(base: float, offsets: Sequence[int], step: float) -> list[float]:
    return [min(max(base + o * step, 0.0), 1.0) for o in offsets]


def level_switch(offsets: Sequence[int], low: int, high: int, rng: random.Random, switches: int = 1) -> list[int]:
    """A child of `offsets`: `switches` times, one layer (chosen at random among those below `high`) takes one step
    more sparsity and another (among those above `low`) one step less. The sum of the offsets is unchanged."""
    child = list(offsets)
    for _ in range(switches):
        up = [i for i, o in enumerate(child) if o < high]
        if not up:
            break
        sparser = rng.choice(up)
        down = [i for i, o in enumerate(child) if o > low and i != sparser]
        if not down:
            break
        child[sparser] += 1
        child[rng.choice(down)] -= 1
    return child


def kept_level_switch(offsets: Sequence[int], low: int, high: int, removed: int, rng: random.Random,
                      switches: int = 1) -> list[int]:
    """level_switch among the layers not at `removed` (the offset of a removed block); those stay as they are."""
    kept = [i for i, o in enumerate(offsets) if o != removed]
    child = list(offsets)
    for i, o in zip(kept, level_switch([offsets[i] for i in kept], low, high, rng, switches), strict=True):
        child[i] = o
    return child


def block_switch(offsets: Sequence[int], low: int, high: int, removed: int, rng: random.Random) -> list[int]:
    """A child of `offsets` with one block removed or one restored, the sum unchanged. `removed` is the offset of a
    layer at sparsity 1 (its block removed: (1 - base) / step steps, an integer); kept layers lie in [low, high].
    Removing a kept layer frees `removed - o` steps, taken one at a time from random other kept layers above `low`;
    restoring a removed one puts it at a random level in [low, high] and gives the steps that costs, one at a time,
    to random kept layers below `high`. Unchanged when the other layers have no room (or one layer would be left)."""
    child = list(offsets)
    kept = [i for i, o in enumerate(child) if o != removed]
    gone = [i for i, o in enumerate(child) if o == removed]
    restore = bool(gone) and (len(kept) < 2 or rng.random() < 0.5)
    if not restore and len(kept) < 2:
        return child
    layer = rng.choice(gone if restore else kept)
    level = rng.randint(low, high) if restore else removed
    others = [i for i in kept if i != layer]
    moves = abs(removed - (level if restore else child[layer]))
    room = sum(high - child[i] if restore else child[i] - low for i in others)
    if moves > room:
        return list(offsets)
    child[layer] = level
    for _ in range(moves):
        open_ = [i for i in others if (child[i] < high if restore else child[i] > low)]
        child[rng.choice(open_)] += 1 if restore else -1
    return child


def nm_allocation(base: float, m: int, layers: int) -> tuple[float, list[int]]:
    """The start of an N:M search: layer i keeps level `low + offsets[i]` of the levels j/m (j of every m weights
    removed), the offsets 0 or 1 with the ones spread evenly, so the mean sparsity is `base` rounded to a multiple of
    1 / (m x layers), the nearest the levels can come. Returns (low, offsets)."""
    total = round(base * m * layers)
    whole, ones = divmod(total, layers)
    return whole / m, [((i + 1) * ones) // layers - (i * ones) // layers for i in range(layers)]


def reference_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """The dense model's next-token log-probabilities, kept in bfloat16 (half the memory; the KL is computed in
    float32 from them)."""
    return F.log_softmax(logits.float(), dim=-1).to(torch.bfloat16)


def kl_sum(reference: torch.Tensor, logits: torch.Tensor) -> float:
    """Sum over positions of KL(dense || candidate), from the dense log-probabilities [..., V] and the candidate's
    logits [..., V]."""
    ref = reference.float()
    return float((ref.exp() * (ref - F.log_softmax(logits.float(), dim=-1))).sum())
