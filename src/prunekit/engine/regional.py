"""Block-level passes for Wanda++: regional gradients and the regional optimisation of one decoder block.

Both work on the one decoder block the layer walker has open, with the calibration batches' inputs it holds:
memory is the block's weights, their gradients (and RMSprop's running averages) plus one batch's activations, and
the dense block's outputs (as large as the block's inputs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prunekit.engine.capture import LayerCall
from prunekit.engine.walker import forward_layer
from prunekit.errors import PrunekitError
from prunekit.models.groups import gradient_matrix, weight_matrix


def _no_path(index: int, name: str, why: str) -> PrunekitError:
    return PrunekitError(f"wanda++ needs gradients through decoder layer {index}, but {name} {why}: there is no "
                         "differentiable path to its weights; use wanda or sparsegpt")


def _trainable(layer: nn.Module, linears: dict[str, nn.Module], index: int) -> dict[nn.Parameter, bool]:
    """Make only the linears' weights require gradients; returns every parameter's previous flag."""
    previous = {p: p.requires_grad for p in layer.parameters()}
    for p in layer.parameters():
        p.requires_grad_(False)
    for name, linear in linears.items():
        if not linear.weight.is_floating_point():
            for p, flag in previous.items():
                p.requires_grad_(flag)
            raise _no_path(index, name, f"has {linear.weight.dtype} weights")
        linear.weight.requires_grad_(True)
    return previous


def _restore(previous: dict[nn.Parameter, bool]) -> None:
    for p, flag in previous.items():
        p.requires_grad_(flag)
        p.grad = None


def regional_gradients(layer: nn.Module, linears: dict[str, nn.Module], inputs: list[torch.Tensor],
                       calls: list[LayerCall], index: int = 0) -> dict[str, torch.Tensor]:
    """sqrt(sum over batches of (d L_b / dW)^2) per linear [out, in], L_b = sum over the batch's samples of
    ||block(x)||_2 (Frobenius norm of the sample's block output), through this one block."""
    previous = _trainable(layer, linears, index)
    sums = {name: torch.zeros_like(weight_matrix(lin), dtype=torch.float32) for name, lin in linears.items()}
    try:
        for h, call in zip(inputs, calls, strict=True):
            with torch.enable_grad():
                out = forward_layer(layer, h, call)
                if not out.requires_grad:
                    raise _no_path(index, "the block's output", "does not depend on any of its linears")
                loss = out.float().flatten(1).norm(dim=1).sum()
                loss.backward()
            for name, linear in linears.items():
                grad = gradient_matrix(linear)
                if grad is None:
                    raise _no_path(index, name, "gets no gradient from the block's output")
                sums[name] += grad.float().square()
                linear.weight.grad = None
    finally:
        _restore(previous)
    return {name: s.sqrt_() for name, s in sums.items()}


@dataclass
class RegionalResult:
    before: float  # mean squared error of the block's outputs against the dense block's, before the steps
    after: float  # after the steps (equal to before when they were undone)
    kept: bool  # the optimised weights were kept (they lowered the error)
    tried: bool = True  # False: no steps to take (steps or lr 0)


def _block_error(layer: nn.Module, inputs: list[torch.Tensor], calls: list[LayerCall],
                 targets: list[torch.Tensor]) -> float:
    total, count = 0.0, 0
    for h, call, target in zip(inputs, calls, targets, strict=True):
        out = forward_layer(layer, h, call)
        total += float((out.float() - target.float()).square().sum())
        count += target.numel()
    return total / max(count, 1)


def regional_optimise(layer: nn.Module, linears: dict[str, nn.Module], inputs: list[torch.Tensor],
                      calls: list[LayerCall], targets: list[torch.Tensor], steps: int, lr: float,
                      index: int = 0) -> RegionalResult:
    """`steps` RMSprop steps (one calibration batch each, in turn) on the kept weights of `linears` (zeros stay
    zero) against the dense block's outputs `targets`; undone unless they lower the error summed over the batches."""
    if steps <= 0 or lr <= 0 or not inputs:
        return RegionalResult(float("nan"), float("nan"), False, tried=False)
    before = _block_error(layer, inputs, calls, targets)
    weights = {name: weight_matrix(lin) for name, lin in linears.items()}
    masks = {name: w != 0 for name, w in weights.items()}
    saved = {name: lin.weight.detach().clone() for name, lin in linears.items()}
    previous = _trainable(layer, linears, index)
    try:
        optimiser = torch.optim.RMSprop([lin.weight for lin in linears.values()], lr=lr)
        for step in range(steps):
            batch = step % len(inputs)
            with torch.enable_grad():
                out = forward_layer(layer, inputs[batch], calls[batch])
                loss = (out.float() - targets[batch].float()).square().mean()
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
            for name, linear in linears.items():
                grad = gradient_matrix(linear)
                if grad is not None:
                    grad.masked_fill_(~masks[name], 0)
            optimiser.step()
            for name, w in weights.items():
                w.masked_fill_(~masks[name], 0)
    finally:
        _restore(previous)
    after = _block_error(layer, inputs, calls, targets)
    if not after < before:
        for name, linear in linears.items():
            linear.weight.copy_(saved[name])
        return RegionalResult(before, before, False)
    return RegionalResult(before, after, True)
