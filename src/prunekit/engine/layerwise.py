"""The layer-by-layer executor.

Inputs of every decoder layer are captured once; then, one layer at a time: collect the input statistics the
methods need (forward hooks), prune, and recompute the layer's outputs with the pruned weights so the next layer
calibrates on what it will really receive. Only one layer (moved to the compute device) and the calibration
activations are live at any time.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from prunekit.engine.cache import ScoreCache, fingerprint
from prunekit.engine.capture import CapturedInputs, LayerCall
from prunekit.engine.gradients import gradient_norms
from prunekit.engine.statistics import STATISTICS, AllTargetsSeen, collect_inputs
from prunekit.engine.walker import LayerStore, capture_on_device, forward_layer, walk_layers
from prunekit.errors import PrunekitError
from prunekit.methods import MethodSpec, get_method
from prunekit.methods.allocation import global_threshold_sparsities, outlier_ratio, owl_sparsities
from prunekit.methods.patterns import SparsityPattern
from prunekit.methods.wanda import wanda_scores
from prunekit.models.adapters.base import ModelAdapter
from prunekit.models.groups import weight_matrix


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
    parameters: dict[str, object] = field(default_factory=dict)  # the method's own (MethodSpec.parameters)

    @property
    def impl(self) -> MethodSpec:
        return get_method(self.method, "weights")

    @property
    def needs_calibration(self) -> bool:
        return bool(self.impl.needs) or self.allocation == "owl"

    @property
    def needs_gradients(self) -> bool:
        return "gradient_norms" in self.impl.needs

    @property
    def options(self) -> dict[str, object]:
        """The method's own options, as this stage sets them."""
        return {**{name: getattr(self, name) for name in self.impl.options},
                **self.impl.check_parameters(self.parameters)}

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


def check_selection(adapter: ModelAdapter, stage: PruneStage) -> None:
    """A stage whose layers or targets select nothing is a mistake, not a no-op."""
    count = len(adapter.layers)
    outside = [i for i in stage.layers or () if not 0 <= i < count]
    if outside:
        raise PrunekitError(f"{stage.method}: layers {outside} out of range: this model has {count} decoder layers, "
                            f"numbered 0 to {count - 1}")
    names = adapter.linear_names
    if not any(fnmatch.fnmatchcase(n, t) for n in names for t in stage.targets):
        raise PrunekitError(f"{stage.method}: targets {list(stage.targets)} match no linear of a decoder layer; its "
                            f"linears are {', '.join(names)} (globs such as 'mlp.*' work)")


def _selected(adapter: ModelAdapter, stage: PruneStage, index: int, layer: nn.Module) -> dict[str, nn.Linear]:
    return {n: lin for n, lin in adapter.linears(layer).items() if stage.selects(index, n)}


def global_plan(adapter: ModelAdapter, stage: PruneStage) -> dict[str, float]:
    """Per-matrix sparsity from one magnitude-type threshold across all selected matrices."""
    scores = {
        f"{i}.{n}": stage.impl.function(weight_matrix(lin))
        for i, layer in enumerate(adapter.layers)
        for n, lin in _selected(adapter, stage, i, layer).items()
    }
    return global_threshold_sparsities(scores, stage.sparsity, stage.min_density)


class Phases(dict[str, float]):
    """Seconds spent per phase of a prune, summed over layers: where the time goes, for the report."""

    def __init__(self, device: torch.device | None = None) -> None:
        super().__init__()
        self.sync = device is not None and device.type == "cuda"

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            self[name] = self.get(name, 0.0) + time.perf_counter() - started


def owl_plan(adapter: ModelAdapter, stage: PruneStage, captured: CapturedInputs, store: LayerStore,
             cache: ScoreCache | None = None, key: str = "") -> dict[str, float]:
    """Per-matrix sparsity from each layer's outlier ratio of Wanda scores, measured on the dense model (and kept
    in `cache` under `key`, so another sparsity or lambda reuses them)."""
    selected = [[n for n in adapter.linear_names if stage.selects(i, n)] for i in range(len(adapter.layers))]

    def measure() -> dict[str, torch.Tensor]:
        ratios: list[float] = []
        for visit in walk_layers(adapter, captured, store, final=False):
            targets = _selected(adapter, stage, visit.index, visit.layer)
            if targets:
                norms = _collect(visit.layer, targets, "input_norms", visit.inputs, visit.calls)
                scores = [wanda_scores(weight_matrix(lin), norms[n]) for n, lin in targets.items()]
                ratios.append(outlier_ratio(scores, stage.owl_m))
        return {"ratios": torch.tensor(ratios, dtype=torch.float64)}

    measured = (cache or ScoreCache(enabled=False)).get_or_compute(key, measure)
    layer_sparsities = iter(owl_sparsities(measured["ratios"].tolist(), stage.sparsity, stage.owl_lambda))
    plan: dict[str, float] = {}
    for index, names in enumerate(selected):
        if names:
            sparsity = next(layer_sparsities)
            plan.update({f"{index}.{name}": sparsity for name in names})
    return plan


def _collect(
    layer: nn.Module, targets: dict[str, nn.Linear], statistic: str, hidden: list[torch.Tensor], calls: list[LayerCall]
) -> dict[str, torch.Tensor]:
    """One pass of every calibration batch through the layer, accumulating the targets' input statistic."""
    with collect_inputs(targets, statistic) as accumulators:
        for h, call in zip(hidden, calls, strict=True):
            try:
                forward_layer(layer, h, call)
            except AllTargetsSeen:
                pass
    return {name: acc.value for name, acc in accumulators.items()}


@torch.no_grad()
def prune_layerwise(
    adapter: ModelAdapter,
    calibration: torch.Tensor,
    stages: list[PruneStage],
    device: torch.device,
    batch_size: int = 8,
    on_layer: Callable[[int, int], None] | None = None,
    store: LayerStore | None = None,
    phases: Phases | None = None,
    cache: ScoreCache | None = None,
) -> list[MatrixSparsity]:
    """Prune the adapter's model in place, stage after stage within each layer. Returns per-matrix sparsity.

    `phases`, when given, receives the seconds spent capturing, reading/writing layers, collecting statistics,
    computing masks and updates, and recomputing layer outputs."""
    store = store or LayerStore(adapter, device)
    timed = phases if phases is not None else Phases(device)
    for stage in stages:
        check_selection(adapter, stage)
        if stage.allocation == "global" and not stage.impl.comparable_across_layers:
            raise PrunekitError(
                f"global allocation needs scores comparable across layers; {stage.method} scores are not "
                "(use magnitude, or --allocation uniform or owl)"
            )
    needs_data = any(s.needs_calibration for s in stages)
    layers = adapter.layers
    captured = CapturedInputs()
    if needs_data:
        with timed("capture"):
            captured = capture_on_device(adapter, calibration, batch_size, device, store.home)
    gradients: dict[str, torch.Tensor] = {}  # of the dense model, for every linear a gradient stage selects
    gradient_stages = [s for s in stages if s.needs_gradients]
    if gradient_stages:
        linears = {f"{i}.{n}": lin for s in gradient_stages for i, layer in enumerate(layers)
                   for n, lin in _selected(adapter, s, i, layer).items()}
        samples = max(s.gradient_samples for s in gradient_stages)
        with timed("gradients"):
            gradients = gradient_norms(adapter.model, linears, calibration[:samples], device)
    plans: list[dict[str, float] | None] = []
    with timed("allocation"):
        for stage in stages:
            if stage.allocation == "global":
                plans.append(global_plan(adapter, stage))
            elif stage.allocation == "owl":
                key = fingerprint(adapter, calibration, "owl-ratios", stage.targets, stage.layers, stage.owl_m,
                                  batch_size) if cache and cache.enabled else ""
                plans.append(owl_plan(adapter, stage, captured, store, cache, key))
            else:
                plans.append(None)
    results: list[MatrixSparsity] = []
    for visit in walk_layers(adapter, captured, store, final=True, timed=timed):
        index, layer = visit.index, visit.layer
        notes: dict[str, list[str]] = {}
        for stage, plan in zip(stages, plans, strict=True):
            targets = _selected(adapter, stage, index, layer)
            if not targets:
                continue
            with timed("statistics"):
                stats = {need: _collect(layer, targets, need, visit.inputs, visit.calls)
                         for need in stage.impl.needs if need in STATISTICS}
            with timed("masks_and_updates"):
                _prune_targets(stage, plan, index, targets, stats, gradients, notes)
        for name, linear in adapter.linears(layer).items():
            zeros = int((linear.weight == 0).sum())
            results.append(MatrixSparsity(f"layers.{index}.{name}", zeros, linear.weight.numel(), notes.get(name, [])))
        if on_layer:
            on_layer(index + 1, len(layers))
    return results


def _prune_targets(stage: PruneStage, plan: dict[str, float] | None, index: int, targets: dict[str, nn.Module],
                   stats: dict[str, dict[str, torch.Tensor]], gradients: dict[str, torch.Tensor],
                   notes: dict[str, list[str]]) -> None:
    """Prune the selected linears of one layer in place; notes (such as dampening retries) go into `notes`.

    `stats`: per statistic the method needs, its value per linear (linears fed one input share one tensor)."""
    method, options = stage.impl, stage.options
    if method.prepare is not None:
        for values in stats.values():
            prepared: dict[int, object] = {}  # linears sharing an input share its prepared statistic
            for name, stat in values.items():
                if id(stat) not in prepared:
                    prepared[id(stat)] = method.prepare(stat, **options)
                values[name] = prepared[id(stat)]
    for name, linear in targets.items():
        sparsity = plan[f"{index}.{name}"] if plan is not None else stage.sparsity
        per_row = stage.allocation != "global"
        weight = weight_matrix(linear)
        statistics = {need: values[name] for need, values in stats.items()}
        if "gradient_norms" in method.needs:
            statistics["gradient_norms"] = gradients[f"{index}.{name}"]
        pruned = method.prune(weight, statistics, sparsity, stage.pattern, per_row=per_row, **options)
        if pruned.weight is not None:
            weight.copy_(pruned.weight)
        weight.masked_fill_(~pruned.keep.to(weight.device), 0)
        if pruned.note:
            notes.setdefault(name, []).append(pruned.note)
