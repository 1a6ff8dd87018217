"""Magnitude pruning (Han et al., 2015): a weight matters as much as its absolute value."""

from __future__ import annotations

import torch


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().abs().float()
