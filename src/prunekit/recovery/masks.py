"""Sparsity masks of a pruned model: recorded before fine-tuning, re-applied after merging, so the saved model keeps
exactly its zeros."""

from __future__ import annotations

import torch
from torch import nn


def sparsity_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """{linear name: bool mask of its nonzero weights} for every linear layer that has zeros (the lm head too when
    it was pruned); dense linears get no mask."""
    masks = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            nonzero = module.weight.detach() != 0
            if not bool(nonzero.all()):
                masks[name] = nonzero.clone()
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        modules[name].weight.mul_(mask.to(modules[name].weight.dtype))


def masked_zeros(model: nn.Module, masks: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(zeros, weights) over the masked linears."""
    modules = dict(model.named_modules())
    zeros = sum(int((modules[name].weight == 0).sum()) for name in masks)
    return zeros, sum(mask.numel() for mask in masks.values())
