"""Magnitude pruning (Han et al., 2015): a weight matters as much as its absolute value."""

from __future__ import annotations

import torch

from prunekit.methods.registry import register


@register("magnitude", "weights", "|W|; needs no calibration data", comparable_across_layers=True)
def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().abs().float()
