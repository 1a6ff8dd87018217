"""Wanda (Sun et al., 2023): |W_ij| * ||X_j||_2, compared within each output row."""

from __future__ import annotations

import torch

from prunekit.methods.registry import register


@register("wanda", "weights", "|W| x input-feature L2 norm, per output row (Sun et al. 2023)", needs=("input_norms",))
def wanda_scores(weight: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """Scores from the weight [out, in] and the per-input-feature sum of squared activations [in]."""
    return weight.detach().abs().float() * input_norms.float().sqrt().unsqueeze(0)
