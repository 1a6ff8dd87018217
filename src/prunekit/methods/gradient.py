"""Gradient-informed scores (GBLM-Pruner, Das et al. 2023).

G_ij is the L2 norm over calibration samples of the per-sample gradient of the language-model loss with respect to
W_ij, taken on the dense model. `gradient` scores |W| * G; `gblm` adds the Wanda term: alpha * |W| * G + |W| * ||X_j||,
with alpha = 100 as in the paper (both terms are L2 norms over the calibration data, so they scale alike).
"""

from __future__ import annotations

import torch

GBLM_ALPHA = 100.0


def gradient_scores(weight: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
    return weight.detach().abs().float() * grad_norm.float()


def gblm_scores(
    weight: torch.Tensor, grad_norm: torch.Tensor, input_sq_sum: torch.Tensor, alpha: float = GBLM_ALPHA
) -> torch.Tensor:
    magnitude = weight.detach().abs().float()
    return alpha * magnitude * grad_norm.float() + magnitude * input_sq_sum.float().sqrt().unsqueeze(0)
