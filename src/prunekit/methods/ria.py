"""RIA, Relative Importance and Activations (Zhang et al., ICLR 2024, "Plug-and-Play").

    score_ij = (|W_ij| / sum_k |W_ik| + |W_ij| / sum_k |W_kj|) * (||X_j||_2)^a

the weight's share of its output row's and of its input column's absolute mass, times the input feature's L2 norm
over the calibration tokens to the power `a` (0.5, as the paper). Higher = more important; compared within each
output row (or N:M group), like Wanda. `input_norms` holds sum_t x_tj^2, so ||X_j||_2^a = input_norms_j^(a/2).
"""

from __future__ import annotations

import math

import torch

from prunekit.errors import PrunekitError
from prunekit.methods.registry import register

TINY = 1e-12  # an all-zero row or column: its weights are all zero, so its scores stay zero


def relative_importance(weight: torch.Tensor) -> torch.Tensor:
    """|W_ij| / sum of |W| over row i + |W_ij| / sum of |W| over column j."""
    w = weight.detach().abs().float()
    return w / w.sum(dim=1, keepdim=True).clamp_min(TINY) + w / w.sum(dim=0, keepdim=True).clamp_min(TINY)


def check_ria(parameters: dict[str, object]) -> None:
    a = float(parameters["a"])  # type: ignore[arg-type]
    if not math.isfinite(a) or a < 0:
        raise PrunekitError(f"ria: parameter a (activation exponent) must be a finite number >= 0, not {a:g}; "
                            "the paper uses 0.5")


@register("ria", "weights", "relative importance (row + column share of |W|) x ||X||^a (Zhang et al. 2024)",
          needs=("input_norms",), parameters={"a": 0.5}, check=check_ria)
def ria_scores(weight: torch.Tensor, input_norms: torch.Tensor, a: float = 0.5) -> torch.Tensor:
    """Scores from the weight [out, in] and the per-input-feature sum of squared activations [in]."""
    return relative_importance(weight) * input_norms.float().clamp_min(0).pow(a / 2).unsqueeze(0)
