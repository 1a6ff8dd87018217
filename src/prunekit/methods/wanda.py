"""Wanda (Sun et al., 2023): |W_ij| * ||X_j||_2, compared within each output row."""

from __future__ import annotations

import torch


def wanda_scores(weight: torch.Tensor, input_sq_sum: torch.Tensor) -> torch.Tensor:
    """Scores from the weight [out, in] and the per-input-feature sum of squared activations [in]."""
    return weight.detach().abs().float() * input_sq_sum.float().sqrt().unsqueeze(0)
