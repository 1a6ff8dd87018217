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
from functools import partial
from typing import Any

import torch
from torch import nn

from prunekit.engine.cache import ScoreCache, fingerprint
from prunekit.engine.capture import CapturedInputs, LayerCall
from prunekit.engine.expert_weights import check_expert_method, prune_experts_weights
from prunekit.engine.gradients import gradient_norms
from prunekit.engine.regional import regional_gradients, regional_optimise
from prunekit.engine.statistics import STATISTICS, AllTargetsSeen, collect_inputs
from prunekit.engine.walker import (
    LayerStore,
    LayerVisit,
    capture_on_device,
    forward_all,
    forward_layer,
    walk_layers,
)
from prunekit.errors import PrunekitError
from prunekit.methods import MethodSpec, get_method
from prunekit.methods.allocation import global_threshold_sparsities, outlier_ratio, owl_sparsities
from prunekit.methods.dsnot import dsnot
from prunekit.methods.patterns import SparsityPattern
from prunekit.methods.permutation import channel_permutation
from prunekit.methods.registry import REFINEMENTS
from prunekit.methods.wanda import wanda_scores
from prunekit.models.adapters.base import ModelAdapter, submodule
from prunekit.models.groups import weight_matrix

PERMUTATION_ROUNDS = 2  # passes of the assignment refinement of a channel permutation (methods/permutation.py)


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
    layer_sparsity: tuple[float, ...] | None = None  # one sparsity per decoder layer (a searched allocation)
    layer_pattern: tuple[SparsityPattern | None, ...] | None = None  # one N:M per decoder layer (None: left dense)
    gradient_samples: int = 32  # gradient scores: calibration windows back-propagated, one at a time
    block_size: int = 128  # SparseGPT column block
    damping: float = 0.01  # SparseGPT dampening, fraction of the mean Hessian diagonal
    parameters: dict[str, object] = field(default_factory=dict)  # the method's own (MethodSpec.parameters)
    refine: str | None = None  # a mask refinement after the method: "dsnot"
    refine_steps: int = 50  # dsnot: prune-and-grow cycles at most (one swap per row per cycle)
    permute: bool = False  # N:M: reorder the MLP's intermediate channels first (methods/permutation.py)

    @property
    def impl(self) -> MethodSpec:
        return get_method(self.method, "weights")

    @property
    def needs(self) -> tuple[str, ...]:
        """The statistics the method and the refinement need."""
        return tuple(dict.fromkeys((*self.impl.needs, *REFINEMENTS.get(self.refine or "", ()))))

    @property
    def needs_calibration(self) -> bool:
        return bool(self.needs) or self.allocation == "owl" or self.permute

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
        return self.zeros / self.numel if self.numel else 0.0


def check_selection(adapter: ModelAdapter, stage: PruneStage) -> None:
    """A stage whose layers or targets select nothing is a mistake, not a no-op."""
    count = len(adapter.layers)
    outside = [i for i in stage.layers or () if not 0 <= i < count]
    if outside:
        raise PrunekitError(f"{stage.method}: layers {outside} out of range: this model has {count} decoder layers, "
                            f"numbered 0 to {count - 1}")
    for name, per_layer in (("sparsity", stage.layer_sparsity), ("pattern", stage.layer_pattern)):
        if per_layer is not None and len(per_layer) != count:
            raise PrunekitError(f"{stage.method}: layer_{name} has {len(per_layer)} entries, but this model has "
                                f"{count} decoder layers: give one {name} per layer")
    names = (*adapter.linear_names, *adapter.expert_matrices(adapter.layers[0]))
    if not any(fnmatch.fnmatchcase(n, t) for n in names for t in stage.targets):
        raise PrunekitError(f"{stage.method}: targets {list(stage.targets)} match no linear of a decoder layer; its "
                            f"linears are {', '.join(names)} (globs such as 'mlp.*' work)")
    if stage.permute:
        if not stage.pattern.is_nm:
            raise PrunekitError("--permute reorders input channels for N:M patterns; unstructured sparsity has no "
                                "groups to fill: give --pattern 2:4 (or 4:8), or drop --permute")
        output = adapter.require_mlp().output
        if not any(fnmatch.fnmatchcase(output, t) for t in stage.targets):
            raise PrunekitError(f"--permute reorders the MLP's intermediate channels, the input of {output}, which "
                                f"targets {list(stage.targets)} do not select: add {output} to the targets or drop "
                                "--permute")


def _selected(adapter: ModelAdapter, stage: PruneStage, index: int, layer: nn.Module) -> dict[str, nn.Linear]:
    # an empty linear (a converted Qwen2-MoE's shared expert of width 0) has nothing to prune
    return {n: lin for n, lin in adapter.linears(layer).items() if stage.selects(index, n) and lin.weight.numel()}


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
                norms = collect_statistic(visit.layer, targets, "input_norms", visit.inputs, visit.calls)
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


def collect_statistic(
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
            expert_targets = {n: m for n, m in adapter.expert_matrices(layer).items() if stage.selects(index, n)}
            if expert_targets:  # routed experts: per-expert statistics from the tokens routed to each
                check_expert_method(stage.method, stage.needs)
                with timed("experts"):
                    prune_experts_weights(adapter, visit, expert_targets, stage.needs,
                                          partial(_prune_targets, stage, None, index, gradients={}), notes)
            if not targets:
                continue
            if stage.permute:
                with timed("permutation"):
                    _permute_mlp(adapter, stage, index, layer, visit, gradients, notes)
            dense_outputs: list[torch.Tensor] | None = None
            options = stage.options
            if stage.impl.regional and int(options.get("steps", 0)) > 0 and float(options.get("lr", 0.0)) > 0:
                with timed("regional"):
                    dense_outputs = forward_all(layer, visit.inputs, visit.calls)
            with timed("statistics"):
                stats = {need: collect_statistic(layer, targets, need, visit.inputs, visit.calls)
                         for need in stage.needs if need in STATISTICS}
                if "regional_gradients" in stage.needs:
                    stats["regional_gradients"] = regional_gradients(layer, targets, visit.inputs, visit.calls,
                                                                     index)
            with timed("masks_and_updates"):
                _prune_targets(stage, plan, index, targets, stats, gradients, notes)
            if dense_outputs is not None:
                with timed("regional"):
                    result = regional_optimise(layer, targets, visit.inputs, visit.calls, dense_outputs,
                                               int(options.get("steps", 0)), float(options.get("lr", 0.0)), index)
                del dense_outputs
                text = (f"regional optimisation: block output MSE {result.before:.4g} -> {result.after:.4g}"
                        if result.kept else f"regional optimisation undone: it did not lower the block output "
                        f"MSE {result.before:.4g}" if result.tried else None)
                for name in targets if text else ():
                    notes.setdefault(name, []).append(text)
        for name, linear in {**adapter.linears(layer), **adapter.expert_matrices(layer)}.items():
            zeros = int((linear.weight == 0).sum())
            results.append(MatrixSparsity(f"layers.{index}.{name}", zeros, linear.weight.numel(), notes.get(name, [])))
        if on_layer:
            on_layer(index + 1, len(layers))
    return results


def prepared_statistics(method: MethodSpec, stats: dict[str, dict[str, Any]], options: dict[str, Any]
                        ) -> dict[str, dict[str, Any]]:
    """The statistics `method` needs, per linear, through its `prepare` step when it has one: once per input, so
    the linears that see one input (q/k/v, gate/up) share the result."""
    own = {need: dict(stats[need]) for need in method.needs if need in stats}
    if method.prepare is not None:
        for values in own.values():
            prepared: dict[int, object] = {}
            for name, stat in values.items():
                if id(stat) not in prepared:
                    prepared[id(stat)] = method.prepare(stat, **options)
                values[name] = prepared[id(stat)]
    return own


def _prune_targets(stage: PruneStage, plan: dict[str, float] | None, index: int, targets: dict[str, nn.Module],
                   stats: dict[str, dict[str, torch.Tensor]], gradients: dict[str, torch.Tensor],
                   notes: dict[str, list[str]]) -> None:
    """Prune the selected linears of one layer in place; notes (such as dampening retries) go into `notes`.

    `stats`: per statistic the stage needs, its value per linear (linears fed one input share one tensor)."""
    method, options = stage.impl, stage.options
    pattern = stage.pattern if stage.layer_pattern is None else stage.layer_pattern[index]
    if pattern is None:  # a layer the searched N:M allocation leaves dense
        return
    own = prepared_statistics(method, stats, options)
    for name, linear in targets.items():
        sparsity = (plan[f"{index}.{name}"] if plan is not None else
                    stage.layer_sparsity[index] if stage.layer_sparsity is not None else
                    pattern.sparsity if pattern.is_nm else stage.sparsity)
        per_row = stage.allocation != "global"
        weight = weight_matrix(linear)
        statistics = {need: values[name] for need, values in own.items()}
        if "gradient_norms" in method.needs:
            statistics["gradient_norms"] = gradients[f"{index}.{name}"]
        pruned = method.prune(weight, statistics, sparsity, pattern, per_row=per_row, **options)
        if stage.refine == "dsnot":
            pruned = dsnot(weight, pruned, stats["hessian"][name], pattern, stage.refine_steps)
        if pruned.weight is not None:
            weight.copy_(pruned.weight)
        weight.masked_fill_(~pruned.keep.to(weight.device), 0)
        if pruned.note:
            notes.setdefault(name, []).append(pruned.note)


def _permute_mlp(adapter: ModelAdapter, stage: PruneStage, index: int, layer: nn.Module, visit: LayerVisit,
                 gradients: dict[str, torch.Tensor], notes: dict[str, list[str]]) -> None:
    """Reorder the MLP's intermediate channels (rows of its input projections, columns of its output projection:
    the layer computes exactly the same function) so that the output projection's N:M groups keep more score.

    The score is the stage method's own when it needs only input norms (magnitude, wanda, ria), else Wanda's.
    Gradients already measured for these linears are reordered with them."""
    group = adapter.mlp
    output = submodule(layer, group.output)
    if not stage.selects(index, group.output):
        return
    norms = collect_statistic(layer, {group.output: output}, "input_norms", visit.inputs, visit.calls)[group.output]
    weight = weight_matrix(output)
    method = stage.impl
    if not method.updates_weights and set(method.needs) <= {"input_norms"}:
        extra = {"input_norms": norms} if method.needs else {}
        scores = method.function(weight, **extra, **method.check_parameters(stage.parameters))
    else:
        scores = wanda_scores(weight, norms)
    perm = channel_permutation(scores, stage.pattern.n, stage.pattern.m, rounds=PERMUTATION_ROUNDS)
    apply_mlp_permutation(adapter, layer, perm, gradients, index)
    channels = weight.shape[1]
    moved = int((perm != torch.arange(channels, device=perm.device)).sum())
    notes.setdefault(group.output, []).append(f"channel permutation: {moved} of {channels} intermediate channels "
                                              "reordered (with the input projections' rows)")


def apply_mlp_permutation(adapter: ModelAdapter, layer: nn.Module, perm: torch.Tensor,
                          gradients: dict[str, torch.Tensor] | None = None, index: int = 0) -> None:
    """Reorder the layer's MLP intermediate channels by `perm` (new channel k = old channel perm[k]): the rows of
    every input projection part (gate and up, both halves of a fused gate_up, fc1) with their biases, and the
    columns of the output projection. The layer computes the same function (up to float summation order);
    `gradients` measured for these linears (keys "index.path") are reordered with them."""
    group = adapter.mlp
    output = weight_matrix(submodule(layer, group.output))
    perm = perm.to(output.device)
    channels = output.shape[1]
    sizes = adapter.sizes(layer)
    gradients = gradients if gradients is not None else {}
    for rows in group.inputs:
        linear = submodule(layer, rows.path)
        start = rows.start(sizes)
        block = weight_matrix(linear)[start:start + channels]
        block.copy_(block[perm])
        if linear.bias is not None:
            bias = linear.bias.data[start:start + channels]
            bias.copy_(bias[perm])
        key = f"{index}.{rows.path}"
        if key in gradients:
            gradients[key][start:start + channels] = gradients[key][start:start + channels][perm]
    output.copy_(output[:, perm])
    key = f"{index}.{group.output}"
    if key in gradients:
        gradients[key] = gradients[key][:, perm]
