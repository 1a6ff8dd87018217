"""Input statistics of linear layers, accumulated in float32 through forward pre-hooks."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from prunekit.methods.width import ChannelStats


class SquaredSum:
    """Per-input-feature sum of squared activations over all calibration tokens (Wanda's ||X_j||^2)."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        self.value = torch.zeros(in_features, dtype=torch.float32, device=device)

    def add(self, inputs: torch.Tensor) -> None:
        flat = inputs.detach().reshape(-1, inputs.shape[-1]).float()
        self.value += flat.square().sum(dim=0)


class Hessian:
    """X^T X summed over all calibration tokens (SparseGPT's H, up to the constant factor 2)."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        self.value = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)

    def add(self, inputs: torch.Tensor) -> None:
        flat = inputs.detach().reshape(-1, inputs.shape[-1]).float()
        self.value.addmm_(flat.T, flat)


class ChannelSums:
    """Per-input-feature sum and sum of squares, in float64, and the token count (width methods' channel_stats)."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        zeros = torch.zeros(in_features, dtype=torch.float64, device=device)
        self.value = ChannelStats(zeros, zeros.clone(), 0)

    def add(self, inputs: torch.Tensor) -> None:
        flat = inputs.detach().reshape(-1, inputs.shape[-1]).double()
        self.value.total += flat.sum(dim=0)
        self.value.squares += flat.square().sum(dim=0)
        self.value.tokens += flat.shape[0]


# By the names methods declare in `needs`.
STATISTICS = {"input_norms": SquaredSum, "hessian": Hessian, "channel_stats": ChannelSums}


class AllTargetsSeen(Exception):
    """Raised by a hook once every target linear has received its input: the rest of the layer is not needed."""


@contextmanager
def collect_inputs(
    linears: Mapping[str, nn.Linear], statistic: str, stop_when_all_seen: bool = True
) -> Iterator[dict[str, Any]]:
    """Attach accumulators to the linears; yields {name: accumulator}.

    Linears fed the very same tensor (q/k/v, gate/up) share one accumulator, so a Hessian is computed once per
    distinct input. With `stop_when_all_seen`, the layer's forward is aborted (AllTargetsSeen) as soon as the last
    target has seen its input, which skips e.g. computing down_proj's output."""
    accumulators: dict[str, Any] = {}
    followers: set[str] = set()  # linears whose accumulator belongs to an earlier linear with the same input
    fired: set[str] = set()  # per forward call
    by_input: dict[int, Any] = {}  # per forward call: id of an input tensor -> its accumulator
    alive: list[torch.Tensor] = []  # holds those inputs so their ids cannot be reused within the call

    def make_hook(name: str, linear: nn.Linear) -> Any:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            shared = by_input.get(id(x))
            if name not in accumulators:
                if shared is not None:
                    followers.add(name)
                accumulators[name] = (
                    shared if shared is not None else STATISTICS[statistic](x.shape[-1], linear.weight.device)
                )
            if name in followers:
                if shared is not accumulators[name]:
                    raise RuntimeError(f"the input of {name} is no longer shared with the linear it was shared with")
            else:
                accumulators[name].add(x)
                by_input[id(x)] = accumulators[name]
                alive.append(x)
            fired.add(name)
            if len(fired) == len(linears):
                fired.clear()
                by_input.clear()
                alive.clear()
                if stop_when_all_seen:
                    raise AllTargetsSeen

        return hook

    handles = [lin.register_forward_pre_hook(make_hook(name, lin)) for name, lin in linears.items()]
    try:
        yield accumulators
    finally:
        for handle in handles:
            handle.remove()
