"""The layer-by-layer executor.

Inputs of every decoder layer are captured once; then, one layer at a time: collect the input statistics the
methods need (forward hooks), prune, and recompute the layer's outputs with the pruned weights so the next layer
calibrates on what it will really receive. Only one layer (moved to the compute device) and the calibration
activations are live at any time.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import chain

import torch
from torch import nn

from prunekit.engine.capture import CapturedInputs, LayerCall, capture_layer_inputs
from prunekit.engine.statistics import AllTargetsSeen, collect_inputs
from prunekit.errors import PrunekitError
from prunekit.methods import Method, get_method
from prunekit.methods.allocation import global_threshold_sparsities
from prunekit.methods.patterns import SparsityPattern
from prunekit.models.adapters.base import ModelAdapter


@dataclass
class PruneStage:
    """One pruning pass: a method at a sparsity and pattern, over the selected linears of the selected layers."""

    method: str
    sparsity: float
    pattern: SparsityPattern = field(default_factory=SparsityPattern)
    targets: tuple[str, ...] = ("*",)  # globs over linear names relative to a layer, e.g. "mlp.*"
    layers: tuple[int, ...] | None = None  # None: every decoder layer
    allocation: str = "uniform"  # uniform | global

    @property
    def impl(self) -> Method:
        return get_method(self.method)

    def selects(self, layer_index: int, name: str) -> bool:
        in_layer = self.layers is None or layer_index in self.layers
        return in_layer and any(fnmatch.fnmatchcase(name, t) for t in self.targets)


@dataclass
class MatrixSparsity:
    name: str
    zeros: int
    numel: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel


def _selected(adapter: ModelAdapter, stage: PruneStage, index: int, layer: nn.Module) -> dict[str, nn.Linear]:
    return {n: lin for n, lin in adapter.linears(layer).items() if stage.selects(index, n)}


def plan_sparsities(adapter: ModelAdapter, stage: PruneStage) -> dict[str, float] | None:
    """Per-matrix sparsity for a global allocation (one threshold across layers); None for uniform."""
    if stage.allocation == "uniform":
        return None
    scores = {
        f"{i}.{n}": stage.impl.scores(lin.weight, None)
        for i, layer in enumerate(adapter.layers)
        for n, lin in _selected(adapter, stage, i, layer).items()
    }
    return global_threshold_sparsities(scores, stage.sparsity)


def _forward(layer: nn.Module, hidden: torch.Tensor, call: LayerCall) -> torch.Tensor:
    out = layer(hidden, *call.args, **call.kwargs)
    return out[0] if isinstance(out, tuple) else out


def _move(tensors: list[torch.Tensor], device: torch.device) -> None:
    for t in tensors:
        t.data = t.data.to(device)


@torch.no_grad()
def prune_layerwise(
    adapter: ModelAdapter,
    calibration: torch.Tensor,
    stages: list[PruneStage],
    device: torch.device,
    batch_size: int = 8,
    on_layer: Callable[[int, int], None] | None = None,
) -> list[MatrixSparsity]:
    """Prune the adapter's model in place, stage after stage within each layer. Returns per-matrix sparsity."""
    for stage in stages:
        if stage.allocation == "global" and not stage.impl.comparable_across_layers:
            raise PrunekitError(
                f"global allocation needs scores comparable across layers; {stage.method} scores are not "
                "(use magnitude, or --allocation uniform)"
            )
    plans = [plan_sparsities(adapter, s) for s in stages]
    needs_data = any(s.impl.statistic for s in stages)
    layers = adapter.layers
    # Everything outside the decoder layers (embeddings, rotary tables, norms) goes to the device for the capture.
    prefix = adapter.layers_path + "."
    outside = [t for n, t in chain(adapter.model.named_parameters(), adapter.model.named_buffers())
               if not n.startswith(prefix)]
    home = next(adapter.model.parameters()).device
    captured = CapturedInputs()
    if needs_data:
        _move(outside, device)
        captured = capture_layer_inputs(adapter, list(calibration.split(batch_size)), device)
        _move(outside, home)
    hidden = captured.hidden
    results: list[MatrixSparsity] = []
    for index, layer in enumerate(layers):
        layer.to(device)
        calls = captured.calls[index] if needs_data else []
        for stage, plan in zip(stages, plans, strict=True):
            targets = _selected(adapter, stage, index, layer)
            if not targets:
                continue
            method = stage.impl
            stats: dict[str, torch.Tensor] = {}
            if method.statistic:
                with collect_inputs(targets, method.statistic) as accumulators:
                    for h, call in zip(hidden, calls, strict=True):
                        try:
                            _forward(layer, h, call)
                        except AllTargetsSeen:
                            pass
                stats = {n: a.value for n, a in accumulators.items()}
            for name, linear in targets.items():
                sparsity = plan[f"{index}.{name}"] if plan is not None else stage.sparsity
                keep = method.prune(linear.weight, stats.get(name), sparsity, stage.pattern, per_row=plan is None)
                linear.weight.masked_fill_(~keep.to(linear.weight.device), 0)
        for name, linear in adapter.linears(layer).items():
            zeros = int((linear.weight == 0).sum())
            results.append(MatrixSparsity(f"layers.{index}.{name}", zeros, linear.weight.numel()))
        if needs_data and index < len(layers) - 1:
            hidden = [_forward(layer, h, call) for h, call in zip(hidden, calls, strict=True)]
        layer.to(home)
        if on_layer:
            on_layer(index + 1, len(layers))
    return results
