"""Per-weight gradient norms of the language-model loss, for gradient-informed scores.

Memory: a backward pass through the whole model, one calibration sample at a time, so about three times the
float32 size of the pruned linears (weights, their gradients, the running sums of squared gradients) plus one
sample's activations. SmolLM2-135M: about 2 GB.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.models.groups import gradient_matrix, weight_matrix


def gradient_norms(
    model: nn.Module,
    linears: dict[str, nn.Linear],
    windows: torch.Tensor,
    device: torch.device,
    on_sample: Callable[[int, int], None] | None = None,
    summed: bool = False,
) -> dict[str, torch.Tensor]:
    """sqrt(sum over samples of (dLoss_n/dW)^2) for every named linear, on the model as it is (dense).

    `summed`: the plain sum over samples of dLoss_n/dW instead (the gradient of the total loss, for Taylor scores)."""
    home = next(model.parameters()).device
    trainable = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for linear in linears.values():
        linear.weight.requires_grad_(True)
    sums = {name: torch.zeros_like(weight_matrix(lin), dtype=torch.float32, device=device)
            for name, lin in linears.items()}
    model.to(device)
    try:
        for i, ids in enumerate(windows):
            ids = ids.unsqueeze(0).to(device)
            with torch.enable_grad():  # callers usually run under no_grad
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            if loss is None or not loss.requires_grad:
                raise PrunekitError(
                    f"{type(model).__name__} gives no differentiable loss, so gradient scores cannot be computed: "
                    "use wanda or sparsegpt"
                )
            loss.backward()
            for name, linear in linears.items():
                grad = gradient_matrix(linear).float()
                sums[name] += grad if summed else grad.square()
                linear.weight.grad = None
            if on_sample:
                on_sample(i + 1, len(windows))
    finally:
        model.to(home)
        for p, flag in trainable.items():
            p.requires_grad_(flag)
            p.grad = None
    return sums if summed else {name: s.sqrt_() for name, s in sums.items()}
