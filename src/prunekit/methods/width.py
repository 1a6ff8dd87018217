"""Width pruning: importance of MLP channels and attention heads, and FLAP's bias compensation. Pure functions.

A channel is one input column of an output projection (down_proj / o_proj) together with the matching rows of the
input projections; a head is `head_dim` consecutive channels of o_proj's input. Scores are per channel, summed over
a head's channels, and over a KV group's heads when whole groups go. Statistics come from the output projection's
input X over all calibration tokens: its per-channel sum, sum of squares and token count.

- activation (Minitron, Muralidharan et al. 2024): ||X_j||^2, the energy of the channel's activation.
- wanda-sp (the structured Wanda of An et al. 2024): ||W_:,j||_1 x ||X_j||.
- flap (An et al. 2024): the fluctuation metric Var(X_j) x ||W_:,j||^2; the removed channels' mean contribution
  W_:,removed @ mean(X_removed) becomes a bias of the output projection (bias compensation).
- taylor (LLM-Pruner, Ma et al. 2023): sum over the channel's weights (input rows and output column) of
  |w x dL/dw|, the first-order estimate of the loss change from removing it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunekit.methods.registry import register

# Width methods take the statistics they need and return per-channel scores of one layer (higher: keep), or, for
# Taylor on attention, also per-row scores of the key/value projections.
Pair = tuple[torch.Tensor, torch.Tensor]  # (weight rows or columns, their summed gradient)


@dataclass
class ChannelStats:
    """Per-channel sums over the calibration tokens of an output projection's input."""

    total: torch.Tensor  # [channels] float64
    squares: torch.Tensor  # [channels] float64
    tokens: int

    @property
    def mean(self) -> torch.Tensor:
        return self.total / max(1, self.tokens)

    @property
    def variance(self) -> torch.Tensor:
        """Unbiased sample variance per channel."""
        n = self.tokens
        return ((self.squares - self.total.square() / max(1, n)) / max(1, n - 1)).clamp_min(0)


@register("activation", "width", "Minitron: channels / heads with the least activation energy",
          needs=("channel_stats",), options=("bias_compensation",))
def activation_scores(channel_stats: ChannelStats) -> torch.Tensor:
    return channel_stats.squares


@register("wanda-sp", "width", "structured Wanda: sum of |W| x input norm over the channel's output-projection column",
          needs=("channel_stats", "output_weight"), options=("bias_compensation",))
def wanda_sp_scores(output_weight: torch.Tensor, channel_stats: ChannelStats) -> torch.Tensor:
    return output_weight.double().abs().sum(dim=0) * channel_stats.squares.sqrt()


@register("flap", "width", "FLAP: input fluctuation x squared column norm, removed mean added back as a bias",
          needs=("channel_stats", "output_weight"), options=("bias_compensation",), bias_by_default=True)
def flap_scores(output_weight: torch.Tensor, channel_stats: ChannelStats) -> torch.Tensor:
    return channel_stats.variance * output_weight.double().square().sum(dim=0)


def taylor_scores(out_weight: torch.Tensor, out_grad: torch.Tensor, in_weights: list[torch.Tensor],
                  in_grads: list[torch.Tensor]) -> torch.Tensor:
    """Per channel: sum |w * g| over its output-projection column and its rows of the input projections."""
    score = (out_weight.double() * out_grad.double()).abs().sum(dim=0)
    for weight, grad in zip(in_weights, in_grads, strict=True):
        score = score + (weight.double() * grad.double()).abs().sum(dim=1)
    return score


@register("taylor", "width", "LLM-Pruner: first-order Taylor estimate sum |w x dL/dw| over the channel's weights",
          needs=("taylor_terms",), options=("bias_compensation",))
def taylor_method(taylor_terms: tuple[Pair, list[Pair], list[Pair]]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """taylor_terms: the output projection's (columns, gradient), the input parts' (rows, gradient) aligned with its
    channels, and the key/value parts' (rows, gradient) for attention (empty for the MLP)."""
    (out_weight, out_grad), inputs, key_value = taylor_terms
    channels = taylor_scores(out_weight, out_grad, [w for w, _ in inputs], [g for _, g in inputs])
    if not key_value:
        return channels, None
    return channels, sum((w.double() * g.double()).abs().sum(dim=1) for w, g in key_value)


def group_sums(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Sum consecutive runs of `group_size` entries: channel scores -> head scores -> KV-group scores."""
    return scores.reshape(-1, group_size).sum(dim=1)


def keep_highest(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the `keep` highest scores, ascending (ties: the earlier index)."""
    return torch.sort(-scores, stable=True).indices[:keep].sort().values


def keep_within_groups(scores: torch.Tensor, groups: int, keep_per_group: int) -> torch.Tensor:
    """The best `keep_per_group` entries inside each of `groups` equal consecutive groups (query heads per KV head)."""
    size = len(scores) // groups
    return torch.cat([keep_highest(scores[g * size:(g + 1) * size], keep_per_group) + g * size for g in range(groups)])


def compensation_bias(out_weight: torch.Tensor, mean: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """FLAP's baseline bias: what the removed channels contributed on average, W_:,removed @ mean(X_removed)."""
    return out_weight.double()[:, removed] @ mean[removed]
