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
from prunekit.engine.gradients import gradient_norms
from prunekit.engine.statistics import AllTargetsSeen, collect_inputs
from prunekit.errors import PrunekitError
from prunekit.methods import Method, get_method
from prunekit.methods.allocation import global_threshold_sparsities, outlier_ratio, owl_sparsities
from prunekit.methods.patterns import SparsityPattern
from prunekit.methods.wanda import wanda_scores
from prunekit.models.adapters.base import ModelAdapter


@dataclass
class PruneStage:
    """One pruning pass: a method at a sparsity and pattern, over the selected linears of the selected layers."""

    method: str
    sparsity: float
    pattern: SparsityPattern = field(default_factory=SparsityPattern)
    targets: tuple[str, ...] = ("*",)  # globs over linear names relative to a layer, e.g. "mlp.*"
    layers: tuple[int, ...] | None = None  # None: every decoder layer
    allocation: str = "uniform"  # uniform | global | owl
    min_density: float = 0.05  # global: no matrix keeps less than this fraction of its weights
    owl_m: float = 5.0  # owl: a score is an outlier above owl_m x the layer's mean score
    owl_lambda: float = 0.08  # owl: layer sparsities span target +- owl_lambda
    gradient_samples: int = 32  # gradient scores: calibration windows back-propagated, one at a time
    block_size: int = 128  # SparseGPT column block
    damping: float = 0.01  # SparseGPT dampening, fraction of the mean Hessian diagonal

    @property
    def impl(self) -> Method:
        return get_method(self.method)

    @property
    def needs_calibration(self) -> bool:
        return self.impl.statistic is not None or self.impl.needs_gradients or self.allocation == "owl"

    def selects(self, layer_index: int, name: str) -> bool:
        in_layer = self.layers is None or layer_index in self.layers
        return in_layer and any(fnmatch.fnmatchcase(name, t) for t in self.targets)


@dataclass
class MatrixSparsity:
    name: str
    zeros: int
    numel: int
    notes: list[str] = field(default_factory=list)

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel


def _selected(adapter: ModelAdapter, stage: PruneStage, index: int, layer: nn.Module) -> dict[str, nn.Linear]:
    return {n: lin for n, lin in adapter.linears(layer).items() if stage.selects(index, n)}


def global_plan(adapter: ModelAdapter, stage: PruneStage) -> dict[str, float]:
    """Per-matrix sparsity from one magnitude-type threshold across all selected matrices."""
    scores = {
        f"{i}.{n}": stage.impl.scores(lin.weight, None, None)
        for i, layer in enumerate(adapter.layers)
        for n, lin in _selected(adapter, stage, i, layer).items()
    }
    return global_threshold_sparsities(scores, stage.sparsity, stage.min_density)


def owl_plan(adapter: ModelAdapter, stage: PruneStage, captured: CapturedInputs, device: torch.device,
             home: torch.device) -> dict[str, float]:
    """Per-matrix sparsity from each layer's outlier ratio of Wanda scores, measured on the dense model."""
    hidden = captured.hidden
    ratios: list[float] = []
    selected: list[dict[str, nn.Linear]] = []
    for index, layer in enumerate(adapter.layers):
        layer.to(device)
        targets = _selected(adapter, stage, index, layer)
        selected.append(targets)
        if targets:
            norms = _collect(layer, targets, "sq_sum", hidden, captured.calls[index])
            scores = [wanda_scores(lin.weight, norms[n]) for n, lin in targets.items()]
            ratios.append(outlier_ratio(scores, stage.owl_m))
        if index < len(adapter.layers) - 1:
            hidden = _forward_all(layer, hidden, captured.calls[index])
        layer.to(home)
    layer_sparsities = iter(owl_sparsities(ratios, stage.sparsity, stage.owl_lambda))
    plan: dict[str, float] = {}
    for index, targets in enumerate(selected):
        if targets:
            sparsity = next(layer_sparsities)
            plan.update({f"{index}.{name}": sparsity for name in targets})
    return plan


def _forward(layer: nn.Module, hidden: torch.Tensor, call: LayerCall) -> torch.Tensor:
    out = layer(hidden, *call.args, **call.kwargs)
    return out[0] if isinstance(out, tuple) else out


def _forward_all(layer: nn.Module, hidden: list[torch.Tensor], calls: list[LayerCall]) -> list[torch.Tensor]:
    return [_forward(layer, h, call) for h, call in zip(hidden, calls, strict=True)]


def _collect(
    layer: nn.Module, targets: dict[str, nn.Linear], statistic: str, hidden: list[torch.Tensor], calls: list[LayerCall]
) -> dict[str, torch.Tensor]:
    """One pass of every calibration batch through the layer, accumulating the targets' input statistic."""
    with collect_inputs(targets, statistic) as accumulators:
        for h, call in zip(hidden, calls, strict=True):
            try:
                _forward(layer, h, call)
            except AllTargetsSeen:
                pass
    return {name: acc.value for name, acc in accumulators.items()}


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
                "(use magnitude, or --allocation uniform or owl)"
            )
    needs_data = any(s.needs_calibration for s in stages)
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
    gradients: dict[str, torch.Tensor] = {}  # of the dense model, for every linear a gradient stage selects
    gradient_stages = [s for s in stages if s.impl.needs_gradients]
    if gradient_stages:
        linears = {f"{i}.{n}": lin for s in gradient_stages for i, layer in enumerate(layers)
                   for n, lin in _selected(adapter, s, i, layer).items()}
        samples = max(s.gradient_samples for s in gradient_stages)
        gradients = gradient_norms(adapter.model, linears, calibration[:samples], device)
    plans: list[dict[str, float] | None] = []
    for stage in stages:
        if stage.allocation == "global":
            plans.append(global_plan(adapter, stage))
        elif stage.allocation == "owl":
            plans.append(owl_plan(adapter, stage, captured, device, home))
        else:
            plans.append(None)
    hidden = captured.hidden
    results: list[MatrixSparsity] = []
    for index, layer in enumerate(layers):
        layer.to(device)
        calls = captured.calls[index] if needs_data else []
        notes: dict[str, list[str]] = {}
        for stage, plan in zip(stages, plans, strict=True):
            targets = _selected(adapter, stage, index, layer)
            if not targets:
                continue
            method = stage.impl
            stats = _collect(layer, targets, method.statistic, hidden, calls) if method.statistic else {}
            prepared: dict[int, object] = {}  # linears sharing an input share its prepared statistic
            for name, stat in stats.items():
                if id(stat) not in prepared:
                    prepared[id(stat)] = method.prepare(stat, stage.damping)
                stats[name] = prepared[id(stat)]
            for name, linear in targets.items():
                sparsity = plan[f"{index}.{name}"] if plan is not None else stage.sparsity
                per_row = stage.allocation != "global"
                pruned = method.prune(linear.weight, stats.get(name), sparsity, stage.pattern, per_row=per_row,
                                      block_size=stage.block_size, damping=stage.damping,
                                      gradient=gradients.get(f"{index}.{name}"))
                if pruned.weight is not None:
                    linear.weight.copy_(pruned.weight)
                linear.weight.masked_fill_(~pruned.keep.to(linear.weight.device), 0)
                if pruned.note:
                    notes.setdefault(name, []).append(pruned.note)
        for name, linear in adapter.linears(layer).items():
            zeros = int((linear.weight == 0).sum())
            results.append(MatrixSparsity(f"layers.{index}.{name}", zeros, linear.weight.numel(), notes.get(name, [])))
        if needs_data and index < len(layers) - 1:
            hidden = _forward_all(layer, hidden, calls)
        layer.to(home)
        if on_layer:
            on_layer(index + 1, len(layers))
    return results
