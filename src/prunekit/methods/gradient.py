"""Gradient-informed scores (GBLM-Pruner, Das et al. 2023).

G_ij is the L2 norm over calibration samples of the per-sample gradient of the language-model loss with respect to
W_ij, taken on the dense model. `gradient` scores |W| * G; `gblm` adds the Wanda term: alpha * |W| * G + |W| * ||X_j||,
with alpha = 100 as in the paper (both terms are L2 norms over the calibration data, so they scale alike).
"""

from __future__ import annotations

import torch

from prunekit.methods.registry import register

GBLM_ALPHA = 100.0


@register("gradient", "weights", "|W| x L2 norm of per-sample loss gradients (GBLM-Pruner's gradient term)",
          needs=("gradient_norms",))
def gradient_scores(weight: torch.Tensor, gradient_norms: torch.Tensor) -> torch.Tensor:
    return weight.detach().abs().float() * gradient_norms.float()


@register("gblm", "weights", "GBLM-Pruner: gradient term x 100 + the Wanda term (Das et al. 2023)",
          needs=("gradient_norms", "input_norms"))
def gblm_scores(
    weight: torch.Tensor, gradient_norms: torch.Tensor, input_norms: torch.Tensor, alpha: float = GBLM_ALPHA
) -> torch.Tensor:
    magnitude = weight.detach().abs().float()
    return alpha * magnitude * gradient_norms.float() + magnitude * input_norms.float().sqrt().unsqueeze(0)
