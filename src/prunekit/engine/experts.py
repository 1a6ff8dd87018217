"""Expert pruning and merging of mixture-of-experts models, one decoder layer at a time.

Each MoE layer sees the calibration tokens as the layers before it left them (already pruned), so a layer's choice
accounts for the earlier ones'. For a layer, the input of its MoE block is captured, the family's own router and
experts modules are run on it (the adapter says where they are; the router gives top-k weights and indices, the
experts module the weighted sum of the chosen experts: nothing here knows a family's routing rule or expert
layout), the method's statistics are measured, the method names the groups to keep, and the layer is rewritten.
Every layer keeps the same number of experts, so the config's single expert count describes the model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from prunekit.engine.walker import LayerStore, LayerVisit, capture_on_device, forward_all, walk_layers
from prunekit.errors import PrunekitError
from prunekit.methods.experts import (
    ExpertRouting,
    align_channels,
    dominant,
    merge_weights,
    reap_saliency,
    routing_frequency,
)
from prunekit.models import surgery
from prunekit.models.adapters.base import ModelAdapter, submodule

SAMPLE_TOKENS = 2048  # calibration tokens per layer for expert-search's errors and expert-merge's features
CHUNK = 8192  # tokens per call of an experts module


def experts_to_keep(adapter: ModelAdapter, size: int | None, sparsity: float | None) -> int:
    """Experts each layer keeps, from a count (`size`) or the fraction removed; one-line errors if impossible."""
    total, top_k = adapter.num_experts, adapter.top_k
    if size is not None:
        keep = size
        if not 0 < keep < total:
            raise PrunekitError(f"cannot keep {keep} of {total} experts per layer: give a number from {top_k} to "
                                f"{total - 1}")
    elif sparsity is not None:
        keep = total - round(sparsity * total)
        if keep == total:
            raise PrunekitError(f"removing {sparsity:g} of {total} experts rounds to 0: ask for more")
    else:
        raise PrunekitError("say how many experts to keep (--experts-keep N) or the fraction to remove (--sparsity)")
    if keep < top_k:
        raise PrunekitError(f"keeping {keep} experts per layer is fewer than the {top_k} the router picks for every "
                            f"token (num_experts_per_tok): keep at least {top_k}")
    return keep


def block_inputs(visit: LayerVisit, block: nn.Module) -> torch.Tensor:
    """The MoE block's input on every calibration token of this layer, [tokens, hidden] (the layer is run once)."""
    seen: list[torch.Tensor] = []

    def record(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        seen.append(hidden.detach().reshape(-1, hidden.shape[-1]))

    handle = block.register_forward_pre_hook(record, with_kwargs=True)
    try:
        forward_all(visit.layer, visit.inputs, visit.calls)
    finally:
        handle.remove()
    return torch.cat(seen)


def expert_output(experts: nn.Module, x: torch.Tensor, expert: int) -> torch.Tensor:
    """One expert's output on every row of x, through the family's experts module (gate weight 1)."""
    parts = []
    for chunk in x.split(CHUNK):
        index = torch.full((len(chunk), 1), expert, dtype=torch.long, device=x.device)
        parts.append(experts(chunk, index, torch.ones((len(chunk), 1), dtype=x.dtype, device=x.device)))
    return torch.cat(parts) if parts else x.new_zeros(x.shape)


def route(router: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-k weights, top-k indices) the router gives each row of x."""
    _logits, weights, indices = router(x)
    return weights, indices


def measure_routing(experts: nn.Module, router: nn.Module, x: torch.Tensor, total: int) -> ExpertRouting:
    """Routing frequency and REAP's saliency of every expert over the tokens x."""
    weights, indices = route(router, x)
    gate_sums = torch.zeros(total, dtype=torch.float64)
    routed = torch.zeros(total, dtype=torch.float64)
    for expert in range(total):
        rows, slot = torch.nonzero(indices == expert, as_tuple=True)
        if len(rows):
            norms = expert_output(experts, x[rows], expert).double().norm(dim=-1)
            gate_sums[expert] = float((weights[rows, slot].double() * norms).sum())
            routed[expert] = len(rows)
    return ExpertRouting(routing_frequency(indices.cpu(), total), reap_saliency(gate_sums, routed), len(x))


def sample(x: torch.Tensor, count: int = SAMPLE_TOKENS) -> torch.Tensor:
    """`count` rows of x spread evenly over it (all when it has fewer)."""
    if len(x) <= count:
        return x
    return x[torch.linspace(0, len(x) - 1, count, device=x.device).long()]


def mixed(outputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """The routed sum: sum over k of weights[t, k] * outputs[indices[t, k], t] ([experts, tokens, hidden])."""
    tokens = torch.arange(outputs.shape[1], device=outputs.device)
    return sum(weights[:, k, None].to(outputs.dtype) * outputs[indices[:, k], tokens] for k in range(indices.shape[1]))


def subset_error(router: nn.Module, outputs: torch.Tensor, x: torch.Tensor, total: int
                 ) -> Callable[[tuple[int, ...]], float]:
    """NAEE's objective on tokens x: kept experts -> mean squared difference between the layer's routed output when
    the router chooses among them only and its output with every expert (`outputs`: [experts, tokens, hidden])."""
    full = mixed(outputs, *route(router, x))

    def error(kept: tuple[int, ...]) -> float:
        weights, indices = route(surgery.restricted_router(router, total, kept), x)
        return float((mixed(outputs[list(kept)], weights, indices) - full).double().pow(2).mean())

    return error


def _layer_statistics(needs: tuple[str, ...], visit: LayerVisit, experts: nn.Module, router: nn.Module,
                      block: nn.Module, total: int) -> tuple[dict[str, object], ExpertRouting]:
    x = block_inputs(visit, block)
    routing = measure_routing(experts, router, x, total)
    statistics: dict[str, object] = {"expert_routing": routing, "layer_index": visit.index}
    if {"subset_error", "expert_features"} & set(needs):
        few = sample(x)
        outputs = torch.stack([expert_output(experts, few, e) for e in range(total)])
        statistics["expert_features"] = outputs.double().mean(dim=1).cpu()
        statistics["subset_error"] = subset_error(router, outputs, few, total)
    unknown = set(needs) - set(statistics)
    if unknown:
        raise PrunekitError(f"an expert method needs {sorted(unknown)}, statistics the experts engine does not collect")
    return {need: statistics[need] for need in needs}, routing


@torch.no_grad()
def align_members(adapter: ModelAdapter, layer: nn.Module, groups: list[list[int]], leaders: list[int]) -> None:
    """Before a group is averaged, each member's channels reordered to match its leader's (the same function)."""
    experts, group = adapter.moe(layer)[0], adapter.require_experts()
    for members, leader in zip(groups, leaders, strict=True):
        reference = group.channel_weights(experts, leader)
        for member in members:
            if member != leader:
                group.permute_channels(experts, member, align_channels(reference, group.channel_weights(experts,
                                                                                                        member)))


def prune_experts(adapter: ModelAdapter, method: str, keep: int, options: dict[str, object],
                  windows: torch.Tensor | None, device: torch.device, batch_size: int,
                  step: Callable[[str], None], store: LayerStore | None = None) -> dict[str, object]:
    """Run an expert method on every MoE layer (in place, or through `store`: streaming reads and writes each
    layer) and write the config; returns the groups of original experts kept per layer and the routing
    frequencies seen."""
    from prunekit.methods import get_method

    spec = get_method(method, "experts")
    total = adapter.num_experts
    block_path = adapter.require_experts().experts.rpartition(".")[0]
    kept: list[list[list[int]]] = []
    frequencies: list[list[float]] = []

    def apply(layer: nn.Module, groups: list[list[int]], frequency: torch.Tensor) -> None:
        leaders = dominant(groups, frequency)
        align_members(adapter, layer, groups, leaders)
        surgery.regroup_experts(adapter, layer, groups, merge_weights(groups, frequency), leaders)
        kept.append(groups)
        frequencies.append([round(float(f), 6) for f in frequency])

    store = store or LayerStore(adapter, device)
    if set(spec.needs) <= {"layer_index"}:  # nothing to measure
        for index in range(len(adapter.layers)):
            layer = store.open(index)
            apply(layer, spec.function(keep, total, layer_index=index, **options), torch.ones(total))
            store.close(index, layer, pruned=True)
    else:
        if windows is None or not windows.numel():
            raise PrunekitError(f"{method} needs calibration text to measure the routing")
        captured = capture_on_device(adapter, windows, batch_size, device, store.home)
        for visit in walk_layers(adapter, captured, store, final=True):
            step(f"{method}: layer {visit.index + 1} of {len(adapter.layers)}")
            experts, router = adapter.moe(visit.layer)
            statistics, routing = _layer_statistics(spec.needs, visit, experts, router,
                                                    submodule(visit.layer, block_path), total)
            apply(visit.layer, spec.function(keep, total, **statistics, **options), routing.frequency)
    surgery.set_expert_count(adapter, keep)
    return {"experts_before": total, "experts_after": keep, "kept_per_layer": kept,
            "routing_frequency_per_layer": frequencies}
