"""Input statistics of linear layers, accumulated in float32 through forward pre-hooks."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


class SquaredSum:
    """Per-input-feature sum of squared activations over all calibration tokens (Wanda's ||X_j||^2)."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        self.value = torch.zeros(in_features, dtype=torch.float32, device=device)

    def add(self, inputs: torch.Tensor) -> None:
        flat = inputs.detach().reshape(-1, inputs.shape[-1]).float()
        self.value += flat.square().sum(dim=0)


STATISTICS = {"sq_sum": SquaredSum}


class AllTargetsSeen(Exception):
    """Raised by a hook once every target linear has received its input: the rest of the layer is not needed."""


@contextmanager
def collect_inputs(
    linears: Mapping[str, nn.Linear], statistic: str, stop_when_all_seen: bool = True
) -> Iterator[dict[str, Any]]:
    """Attach one accumulator per linear; with `stop_when_all_seen`, abort the layer's forward (by raising
    AllTargetsSeen) as soon as the last target has seen its input, which skips e.g. computing down_proj's output."""
    accumulators = {
        name: STATISTICS[statistic](lin.in_features, lin.weight.device) for name, lin in linears.items()
    }
    seen: set[str] = set()

    def make_hook(name: str) -> Any:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            accumulators[name].add(args[0])
            seen.add(name)
            if stop_when_all_seen and len(seen) == len(accumulators):
                seen.clear()
                raise AllTargetsSeen

        return hook

    handles = [lin.register_forward_pre_hook(make_hook(name)) for name, lin in linears.items()]
    try:
        yield accumulators
    finally:
        for handle in handles:
            handle.remove()
