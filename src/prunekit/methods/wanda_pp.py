"""Wanda++ (Yang et al., 2025): Wanda with regional gradients, then a short regional optimisation of each block.

Score, compared within each output row (or N:M group) like Wanda:

    score_ij = (alpha * G_ij + ||X_j||_2) * |W_ij|,

where G is the regional gradient: the L2 norm over calibration batches of d (sum over the batch's samples of
||block(x)||_2) / dW, back-propagated through the one decoder block only (the engine's `regional_gradients`
statistic, engine/regional.py), so it costs one backward pass through one block per batch, not through the model.

Defaults, validated on SmolLM2-135M (50% unstructured, 16 x 512 calibration tokens, perplexity on 8 x 1024
held-out tokens; Wanda 34.77): with this G the paper's alpha = 100 lets the gradient term swamp the activation
term (perplexity 64.1 without the optimisation; alpha 1: 36.1, 0.2: 35.2), so alpha defaults to 0.05; the
optimisation's learning rate 3e-7 / 3e-6 / 1e-5 / 3e-5 gave 35.2 / 34.5 / 33.2 / 31.4 (alpha 0.2), and alpha 0.05
with lr 3e-5 gave 31.2: the defaults. The report gives each block's output error before and after.

After the block's linears are pruned, the regional optimisation (engine/regional.py) runs `steps` RMSprop steps
(learning rate `lr`, one calibration batch per step) on the block's kept weights against the dense block's outputs
on the same inputs (mean squared error), masks fixed. It is kept only if it lowers the block's output error on the
calibration batches (the report says by how much).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from prunekit.errors import PrunekitError
from prunekit.methods.registry import register


def check_wanda_pp(parameters: dict[str, Any]) -> None:
    for name in ("alpha", "lr"):
        value = float(parameters[name])
        if not (math.isfinite(value) and value >= 0):
            raise PrunekitError(f"wanda++: parameter {name} must be a finite number >= 0, not {value:g}")
    if int(parameters["steps"]) < 0:
        raise PrunekitError(f"wanda++: steps must be >= 0 (0: no regional optimisation), not {parameters['steps']}")


@register("wanda++", "weights", "(alpha x block-local gradient + input norm) x |W|, then per-block RMSprop on the "
          "kept weights (Yang et al. 2025)", needs=("input_norms", "regional_gradients"),
          parameters={"alpha": 0.05, "steps": 10, "lr": 3e-5}, check=check_wanda_pp, regional=True)
def wanda_pp_scores(weight: torch.Tensor, input_norms: torch.Tensor, regional_gradients: torch.Tensor,
                    alpha: float = 0.05, steps: int = 10, lr: float = 3e-5) -> torch.Tensor:
    """Scores from the weight [out, in], the inputs' sums of squares [in] and the regional gradient norms [out, in].
    `steps` and `lr` are the engine's (the regional optimisation)."""
    del steps, lr
    norms = input_norms.float().clamp_min(0).sqrt().unsqueeze(0)
    return (alpha * regional_gradients.float().to(weight.device) + norms) * weight.detach().abs().float()
