"""Weight pruning inside the routed experts of an MoE layer (MoE-Pruner, Xie et al. 2024): each expert's
matrices are pruned like linears, with the statistics of the tokens the router sends to that expert, each token's
input scaled by its gate weight (the expert's output reaches the layer multiplied by it).

gate_up_proj sees the gated MoE-block input of its routed tokens; down_proj the gated intermediate activation
(the family's own activation of the expert on those tokens). An expert routed fewer than MIN_ROUTED_TOKENS
calibration tokens, or none, has too little data for its own statistics: it is pruned with those of every
calibration token of the layer, ungated, and the report says so.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from prunekit.engine.experts import block_inputs, route
from prunekit.engine.statistics import STATISTICS
from prunekit.engine.walker import LayerVisit
from prunekit.errors import PrunekitError
from prunekit.models.adapters.base import ModelAdapter, submodule
from prunekit.models.groups import ExpertMatrix

MIN_ROUTED_TOKENS = 32
# what expert matrices can be given; the other statistics need the matrices to be modules in the forward pass
EXPERT_STATISTICS = set(STATISTICS) - {"channel_stats"}

Prune = Callable[..., None]  # (targets, statistics by need and name, notes=...) -> None


def _statistics(needs: list[str], inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    values = {}
    for need in needs:
        accumulator = STATISTICS[need](inputs.shape[-1], inputs.device)
        accumulator.add(inputs)
        values[need] = accumulator.value
    return values


def check_expert_method(method: str, needs: tuple[str, ...]) -> None:
    unsupported = [n for n in needs if n not in EXPERT_STATISTICS]
    if unsupported:
        raise PrunekitError(f"{method} needs {', '.join(unsupported)}, which prunekit does not measure inside "
                            "routed experts: use magnitude, wanda, ria, sparsegpt or alps for them, or leave the "
                            "experts out with --targets 'self_attn.*'")


def prune_experts_weights(adapter: ModelAdapter, visit: LayerVisit, selected: dict[str, ExpertMatrix],
                          needs: tuple[str, ...], prune: Prune, notes: dict[str, list[str]]) -> None:
    """Prune the `selected` expert matrices of one layer, one expert at a time, through `prune(targets, stats,
    notes=notes)` (the layer-wise engine's own pruning of a set of matrices)."""
    group = adapter.require_experts()
    wanted = [n for n in needs if n in STATISTICS]
    if not wanted:  # magnitude: the weights alone
        prune(selected, {}, notes=notes)
        return
    experts, router = adapter.moe(visit.layer)
    x = block_inputs(visit, submodule(visit.layer, group.experts.rpartition(".")[0]))
    weights, indices = route(router, x)
    for expert in range(experts.gate_up_proj.shape[0]):
        names = {part: f"{group.experts}.{expert}.{part}" for part in ("gate_up_proj", "down_proj")}
        targets = {part: selected[name] for part, name in names.items() if name in selected}
        if not targets:
            continue
        rows, slot = torch.nonzero(indices == expert, as_tuple=True)
        if len(rows) >= MIN_ROUTED_TOKENS:
            routed, gate = x[rows], weights[rows, slot].to(x.dtype)[:, None]
        else:
            routed, gate = x, torch.ones(1, 1, dtype=x.dtype, device=x.device)
            for name in names.values():
                notes.setdefault(name, []).append(
                    f"routed {len(rows)} calibration tokens (< {MIN_ROUTED_TOKENS}): pruned with all the layer's "
                    "tokens, ungated")
        inputs = {"gate_up_proj": routed * gate, "down_proj": group.hidden(experts, routed, expert) * gate}
        stats: dict[str, dict[str, torch.Tensor]] = {need: {} for need in wanted}
        for part in targets:
            for need, value in _statistics(wanted, inputs[part]).items():
                stats[need][names[part]] = value
        prune({names[part]: matrix for part, matrix in targets.items()}, stats, notes=notes)
