"""Depth pruning: which whole decoder blocks to remove. Pure functions on hidden states and scores.

- Block influence (ShortGPT, Men et al. 2024): 1 - cos(block input, block output), averaged over tokens; the
  blocks that change their input least go first.
- Angular distance (Gromov et al. 2024): arccos(cos(h_l, h_{l+n})) / pi between the input of block l and the input
  of block l+n, averaged over all tokens (the paper reads the last token only; every token is a larger sample of
  the same quantity); the contiguous span of n blocks with the smallest distance goes.
- SLEB (Song et al. 2024) and perplexity ranking (Kim et al. 2024, Shortened LLaMA) rank blocks by the calibration
  perplexity of the model without them; Taylor ranking (also Shortened LLaMA) by sum |w * dL/dw| over a block.
"""

from __future__ import annotations

import math

import torch

from prunekit.errors import PrunekitError
from prunekit.methods.registry import register


def token_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity per token of two [..., hidden] tensors, in float32."""
    a, b = a.float().reshape(-1, a.shape[-1]), b.float().reshape(-1, b.shape[-1])
    return torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-8)


def block_influence(block_input: torch.Tensor, block_output: torch.Tensor) -> torch.Tensor:
    """Per-token 1 - cos(input, output) of one block (ShortGPT's BI); average it over tokens."""
    return 1.0 - token_cosine(block_input, block_output)


def angular_distance(h_start: torch.Tensor, h_end: torch.Tensor) -> torch.Tensor:
    """Per-token angular distance arccos(cos) / pi between hidden states n blocks apart (Gromov et al.)."""
    return torch.arccos(token_cosine(h_start, h_end).clamp(-1.0, 1.0)) / math.pi


def lowest(scores: list[float], count: int) -> list[int]:
    """Indices of the `count` lowest scores (ties: the earlier index), in ascending index order."""
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    return sorted(order[:count])


def best_span(distances: list[float], span: int) -> list[int]:
    """Blocks l..l+span-1 for the start l with the smallest angular distance; distances[l] = d(h_l, h_{l+span})."""
    start = lowest(distances, 1)[0]
    return list(range(start, start + span))


def random_blocks(count: int, total: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(total, generator=generator)[:count].tolist())


def last_blocks(count: int, total: int) -> list[int]:
    return list(range(total - count, total))


def block_taylor(weights: list[torch.Tensor], gradients: list[torch.Tensor]) -> float:
    """A block's first-order Taylor score: sum |w * dL/dw| over all its prunable weights."""
    return sum(float((w.double() * g.double()).abs().sum()) for w, g in zip(weights, gradients, strict=True))


# The methods: (blocks to remove, blocks in the model, the statistics they need) -> the blocks to remove.

@register("block-influence", "depth", "ShortGPT: blocks whose output is most similar to their input (1 - cosine)",
          needs=("block_influence",))
def by_block_influence(count: int, total: int, block_influence: list[float]) -> list[int]:
    return lowest(block_influence, count)


@register("angular", "depth",
          "Gromov et al.: the contiguous span of blocks with the smallest angular distance across it",
          needs=("angular_distance",))
def by_angular_distance(count: int, total: int, angular_distance: list[float]) -> list[int]:
    return best_span(angular_distance, count)


@register("sleb", "depth", "SLEB: repeatedly remove the block whose removal raises calibration perplexity least",
          needs=("greedy_perplexity",))
def by_greedy_perplexity(count: int, total: int, greedy_perplexity: list[int]) -> list[int]:
    """`greedy_perplexity`: the blocks in the order the greedy search removed them."""
    return sorted(greedy_perplexity[:count])


@register("block-ppl", "depth", "Shortened LLaMA: blocks whose single removal raises calibration perplexity least",
          needs=("perplexity_without_block",))
def by_perplexity(count: int, total: int, perplexity_without_block: list[float]) -> list[int]:
    return lowest(perplexity_without_block, count)


@register("block-taylor", "depth", "Shortened LLaMA: blocks with the smallest sum |w x dL/dw|",
          needs=("block_taylor",))
def by_taylor(count: int, total: int, block_taylor: list[float]) -> list[int]:
    return lowest(block_taylor, count)


@register("block-random", "depth", "random blocks (seeded): the baseline", options=("seed",))
def by_chance(count: int, total: int, seed: int = 0) -> list[int]:
    return random_blocks(count, total, seed)


@register("block-last", "depth", "the last blocks: the baseline")
def by_position(count: int, total: int) -> list[int]:
    return last_blocks(count, total)


@register("block-list", "depth", "the blocks given in `blocks` (as prunekit search writes them in its recipe)",
          options=("blocks",))
def by_list(count: int, total: int, blocks: list[int] | None = None) -> list[int]:
    chosen = sorted(set(blocks or ()))
    outside = [b for b in chosen if not 0 <= b < total]
    if outside:
        raise PrunekitError(f"blocks {', '.join(map(str, outside))} do not exist: the model has blocks 0 to "
                            f"{total - 1}")
    if len(chosen) != count:
        raise PrunekitError(f"block-list removes the {len(chosen)} blocks it lists, not {count}")
    return chosen
