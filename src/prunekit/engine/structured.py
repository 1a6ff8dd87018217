"""Structured pruning: remove whole decoder blocks (depth) or MLP channels / attention heads (width).

Scores are measured on the model as it is when the stage starts (one dense pass over the calibration windows, a
backward pass for Taylor scores, a forward per candidate for perplexity rankings), cached on disk by the model's
weights and the calibration tokens, so another target size reuses them without recalibrating. Every layer then
loses the same number of channels / heads, so the output keeps uniform shapes that stock transformers loads.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from prunekit.engine.cache import ScoreCache, fingerprint
from prunekit.engine.capture import LayerStandIn, capture_layer_inputs
from prunekit.engine.experts import experts_to_keep, prune_experts
from prunekit.engine.gradients import gradient_norms
from prunekit.engine.statistics import collect_inputs
from prunekit.engine.walker import LayerStore, LayerVisit, capture_on_device, forward_all, walk_layers
from prunekit.errors import PrunekitError
from prunekit.methods import depth, get_method, width
from prunekit.methods.registry import MethodSpec
from prunekit.methods.width import ChannelStats
from prunekit.models import surgery
from prunekit.models.adapters.base import ModelAdapter, submodule
from prunekit.models.groups import Rows, unit_indices, weight_matrix
from prunekit.models.loss import next_token_loss

PARTS = ("mlp", "heads", "kv-heads")


@dataclass
class StructuredStage:
    """Remove blocks (a depth method), width (a width method, `part` mlp|heads|kv-heads), tokens (a vocabulary
    method, `part` vocab) or experts (an expert method, `part` experts; `size` is the experts each layer keeps).

    The amount is one of: `sparsity` (fraction of the blocks / channels / heads / tokens), `size` (blocks to
    remove, or the channels / heads per layer or tokens to keep), `param_fraction` (fraction of the model's
    parameters to remove), `coverage` (vocabulary: keep the tokens covering this fraction of the text's tokens)."""

    method: str
    part: str = "blocks"
    sparsity: float | None = None
    size: int | None = None
    param_fraction: float | None = None
    coverage: float | None = None
    bias_compensation: bool | None = None  # default: on for flap
    span: bool = False  # angular: remove one contiguous span (always true for angular)
    seed: int = 0
    gradient_samples: int = 32
    top_k: int | None = None  # moefy: experts per token
    blocks: list[int] | None = None  # block-list: the blocks to remove

    @property
    def spec(self) -> MethodSpec:
        return get_method(self.method)

    @property
    def is_depth(self) -> bool:
        return self.spec.kind == "depth"

    @property
    def compensate(self) -> bool:
        return self.bias_compensation if self.bias_compensation is not None else self.spec.bias_by_default


@dataclass
class StructuredResult:
    stage: str
    removed: dict[str, object] = field(default_factory=dict)
    scores: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- sizes


def _units(adapter: ModelAdapter, part: str) -> tuple[int, int]:
    """(units per layer or in the model, parameters per unit)."""
    layer = adapter.layers[0]
    hidden = adapter.hidden_size
    if part == "blocks":
        return len(adapter.layers), sum(p.numel() for p in layer.parameters())
    layers = len(adapter.layers)
    if part == "mlp":  # a channel: one row of each input projection (part) and one output column, hidden long each
        return adapter.mlp_width, layers * (len(adapter.require_mlp().inputs) + 1) * hidden
    head_dim = adapter.head_dim
    per_head = 2 * head_dim * hidden  # a query head: its q rows and o columns
    if part == "heads":
        return adapter.num_heads, layers * per_head
    per_group = adapter.num_heads // adapter.num_kv_heads
    return adapter.num_kv_heads, layers * (per_group * per_head + 2 * head_dim * hidden)


def removal_count(adapter: ModelAdapter, stage: StructuredStage) -> int:
    """How many blocks to remove, or how many channels / heads each layer loses; one-line errors if impossible."""
    total, per_unit = _units(adapter, stage.part)
    noun = {"blocks": "blocks", "mlp": "MLP channels per layer", "heads": "query heads per layer",
            "kv-heads": "key/value heads per layer"}[stage.part]
    if total < 2:
        raise PrunekitError(f"the model has {total} {noun}: there is nothing to remove while keeping one; "
                            "prune weights instead (e.g. --method wanda)")
    if stage.size is not None:
        remove = stage.size if stage.is_depth else total - stage.size
        if not 0 < remove < total:
            what = f"remove {stage.size} of {total}" if stage.is_depth else f"keep {stage.size} of {total}"
            what += f" {noun}"
            raise PrunekitError(f"cannot {what}: give a number from 1 to {total - 1}")
    else:
        fraction = stage.sparsity if stage.sparsity is not None else stage.param_fraction
        if fraction is None:
            raise PrunekitError("say how much to remove: a sparsity (fraction), a size, or a parameter fraction")
        if stage.sparsity is not None:
            remove = round(fraction * total)
        else:
            parameters = sum(p.numel() for p in adapter.model.parameters())
            remove = round(fraction * parameters / per_unit)
        if remove <= 0:
            raise PrunekitError(f"removing {fraction:g} rounds to 0 of {total} {noun}: ask for more")
        if remove >= total:
            raise PrunekitError(f"removing {fraction:g} would remove all {total} {noun}: ask for less")
    if stage.part == "heads" and (adapter.num_heads - remove) % adapter.num_kv_heads:
        kv = adapter.num_kv_heads
        options = ", ".join(str(h) for h in range(kv, adapter.num_heads, kv))
        raise PrunekitError(
            f"{adapter.num_heads - remove} query heads cannot be shared evenly by {kv} key/value heads: keep a "
            f"multiple of {kv} ({options}), or remove whole key/value groups (part kv-heads)"
        )
    return remove


# ---------------------------------------------------------------- dense passes


def _dense_pass(adapter: ModelAdapter, windows: torch.Tensor, device: torch.device, batch_size: int
                ) -> Iterator[LayerVisit]:
    """The calibration windows through the layers one at a time, the model left as it is."""
    store = LayerStore(adapter, device)
    captured = capture_on_device(adapter, windows, batch_size, device, store.home)
    yield from walk_layers(adapter, captured, store, final=False)


def output_projection_statistics(adapter: ModelAdapter, part: str, windows: torch.Tensor, device: torch.device,
                                 batch_size: int) -> list[ChannelStats]:
    """Per layer: the statistics of the input of the MLP's (part mlp) or attention's output projection."""
    name = adapter.mlp.output if part == "mlp" else adapter.attention.output
    stats: list[ChannelStats] = []
    for visit in _dense_pass(adapter, windows, device, batch_size):
        with collect_inputs({name: submodule(visit.layer, name)}, "channel_stats", stop_when_all_seen=False) as sums:
            visit.outputs()
        collected = sums[name].value
        stats.append(ChannelStats(collected.total.cpu(), collected.squares.cpu(), collected.tokens))
    return stats


def similarity_profile(adapter: ModelAdapter, windows: torch.Tensor, device: torch.device, batch_size: int,
                       span: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(block influence per block, angular distance d(h_l, h_{l+span}) per start l), averaged over tokens.

    h_l is the input of block l (h_L the last block's output); only the last span+1 of them are kept."""
    count = len(adapter.layers)
    influence = torch.zeros(count, dtype=torch.float64)
    angular = torch.zeros(count - span + 1, dtype=torch.float64)
    recent: deque[list[torch.Tensor]] = deque(maxlen=span + 1)

    def mean(metric: Callable, a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
        return float(torch.cat([metric(x, y) for x, y in zip(a, b, strict=True)]).double().mean())

    for visit in _dense_pass(adapter, windows, device, batch_size):
        index, inputs, outputs = visit.index, visit.inputs, visit.outputs()
        influence[index] = mean(depth.block_influence, inputs, outputs)
        if index == 0:
            recent.append(inputs)
        recent.append(outputs)
        if len(recent) == span + 1:
            angular[index + 1 - span] = mean(depth.angular_distance, recent[0], recent[-1])
    return influence, angular


class _Replay(LayerStandIn):
    """Stands in for the blocks already run: hands the model their cached output, one batch per call."""

    def __init__(self, layer: nn.Module, hidden: list[torch.Tensor]) -> None:
        super().__init__(layer)
        self.queue = list(hidden)

    def forward(self, *_args: object, **_kwargs: object) -> torch.Tensor:
        return self.queue.pop(0)


@contextmanager
def running_layers(adapter: ModelAdapter, layers: list[nn.Module], original_indices: list[int]) -> Iterator[None]:
    """The model with `layers` in place of its decoder layers; per-layer config lists (layer types) follow the
    original index each of them stands for, so every layer still gets its own kind of attention mask."""
    config = adapter.config
    original = adapter.layers
    lists = surgery.per_layer_fields(config, len(original))
    count = config.num_hidden_layers
    surgery.set_submodule(adapter.model, adapter.layers_path, nn.ModuleList(layers))
    for name, value in lists.items():
        setattr(config, name, [value[i] for i in original_indices])
    config.num_hidden_layers = len(layers)
    try:
        yield
    finally:
        surgery.set_submodule(adapter.model, adapter.layers_path, original)
        for name, value in lists.items():
            setattr(config, name, value)
        config.num_hidden_layers = count


@torch.no_grad()
def calibration_nll(model: nn.Module, windows: torch.Tensor, device: torch.device, batch_size: int) -> float:
    """Mean next-token negative log-likelihood over the calibration windows."""
    total, count = 0.0, 0
    for ids in windows.split(batch_size):
        ids = ids.to(device)
        logits = model(input_ids=ids, use_cache=False).logits
        total += float(next_token_loss(logits, ids, "sum"))
        count += ids[:, 1:].numel()
    return total / count


def perplexity_ranking(adapter: ModelAdapter, windows: torch.Tensor, device: torch.device, batch_size: int,
                       removed: list[int]) -> torch.Tensor:
    """Calibration perplexity of the model without each remaining block (and without `removed`); removed: inf.

    Blocks are tried in order while the input of the current block is carried along, so trying block b runs only
    the blocks after it (about half of a full forward per candidate); the model's own norm and head score it."""
    model = adapter.model
    home = next(model.parameters()).device
    scores = torch.full((len(adapter.layers),), math.inf, dtype=torch.float64)
    live = [i for i in range(len(adapter.layers)) if i not in removed]
    blocks = list(adapter.layers)
    model.to(device)
    try:
        with running_layers(adapter, [blocks[i] for i in live], live):
            captured = capture_layer_inputs(adapter, list(windows.split(batch_size)), device)
        hidden = captured.hidden
        for position, block in enumerate(live):
            later = live[position + 1:]
            stand_ins = [_Replay(blocks[block], hidden), *(blocks[i] for i in later)]
            with running_layers(adapter, stand_ins, [block, *later]):
                scores[block] = math.exp(calibration_nll(model, windows, device, batch_size))
            hidden = forward_all(blocks[block], hidden, captured.calls[position])
    finally:
        model.to(home)
    return scores


def linear_gradients(adapter: ModelAdapter, names: tuple[str, ...], windows: torch.Tensor, device: torch.device,
                     samples: int) -> dict[str, torch.Tensor]:
    """dLoss/dW summed over `samples` calibration windows, for the named linears of every layer ('3.mlp.up_proj')."""
    linears = {f"{i}.{n}": submodule(layer, n) for i, layer in enumerate(adapter.layers) for n in names}
    return gradient_norms(adapter.model, linears, windows[:samples], device, summed=True)


# ---------------------------------------------------------------- stages


def run_structured(adapter: ModelAdapter, stage: StructuredStage, windows: torch.Tensor, device: torch.device,
                   batch_size: int = 8, cache: ScoreCache | None = None,
                   on_step: Callable[[str], None] | None = None, store: LayerStore | None = None
                   ) -> StructuredResult:
    """Score, choose and remove; the model is edited in place and its config rewritten. `store`: where an expert
    stage reads and writes the layers (streaming); the other stages work in memory."""
    cache = cache or ScoreCache()
    step = on_step or (lambda _message: None)
    with torch.no_grad():
        if stage.spec.kind == "experts":
            keep = experts_to_keep(adapter, stage.size, stage.sparsity)
            total = adapter.num_experts
            options = {name: getattr(stage, name) for name in stage.spec.options}
            removed = prune_experts(adapter, stage.method, keep, options, windows, device, batch_size, step, store)
            return StructuredResult(f"{stage.method}: keep {keep} of {total} experts per layer", removed=removed)
        if stage.is_depth:
            return _prune_depth(adapter, stage, windows, device, batch_size, cache, step)
        return _prune_width(adapter, stage, windows, device, batch_size, cache, step)


@torch.no_grad()
def choose_blocks(adapter: ModelAdapter, stage: StructuredStage, windows: torch.Tensor, device: torch.device,
                  batch_size: int = 8, cache: ScoreCache | None = None,
                  step: Callable[[str], None] | None = None) -> StructuredResult:
    """The blocks a depth stage removes (result.removed["blocks"]), the model left as it is."""
    cache = cache or ScoreCache()
    step = step or (lambda _message: None)
    count = removal_count(adapter, stage)
    total = len(adapter.layers)
    result = StructuredResult(f"{stage.method}: remove {count} of {total} blocks")
    spec = stage.spec
    statistics = {need: _depth_statistic(need, adapter, stage, count, windows, device, batch_size, cache, step, result)
                  for need in spec.needs}
    options = {name: getattr(stage, name) for name in spec.options}
    drop = spec.function(count, total, **statistics, **options)
    result.removed = {"blocks": drop, "layers_before": total, "layers_after": total - len(drop)}
    return result


def _prune_depth(adapter: ModelAdapter, stage: StructuredStage, windows: torch.Tensor, device: torch.device,
                 batch_size: int, cache: ScoreCache, step: Callable[[str], None]) -> StructuredResult:
    result = choose_blocks(adapter, stage, windows, device, batch_size, cache, step)
    surgery.remove_layers(adapter, set(result.removed["blocks"]))
    return result


def _depth_statistic(need: str, adapter: ModelAdapter, stage: StructuredStage, count: int, windows: torch.Tensor,
                     device: torch.device, batch_size: int, cache: ScoreCache, step: Callable[[str], None],
                     result: StructuredResult) -> list:
    """One statistic a depth method needs, measured (or read from the cache) and recorded in the result."""
    method = stage.method

    def key(*parts: object) -> str:
        return fingerprint(adapter, windows, method, *parts)

    if need in ("block_influence", "angular_distance"):
        span = count if need == "angular_distance" else 1
        step(f"{method}: hidden-state similarity over {len(windows)} windows")
        scores = cache.get_or_compute(key(span), lambda: dict(zip(
            ("influence", "angular"), similarity_profile(adapter, windows, device, batch_size, span), strict=True)))
        if need == "angular_distance":
            result.scores["angular_distance_by_start"] = scores["angular"].tolist()
            return scores["angular"].tolist()
        result.scores["block_influence"] = scores["influence"].tolist()
        return scores["influence"].tolist()
    if need == "perplexity_without_block":
        step(f"{method}: calibration perplexity without each of {len(adapter.layers)} blocks")
        scores = cache.get_or_compute(key(), lambda: {"ppl": perplexity_ranking(adapter, windows, device,
                                                                                 batch_size, [])})
        result.scores["perplexity_without_block"] = scores["ppl"].tolist()
        return scores["ppl"].tolist()
    if need == "greedy_perplexity":
        return _sleb(adapter, windows, device, batch_size, count, cache, key(), step, result)
    if need == "block_taylor":
        step(f"{method}: gradients over {min(stage.gradient_samples, len(windows))} windows")

        def compute() -> dict[str, torch.Tensor]:
            grads = linear_gradients(adapter, adapter.linear_names, windows, device, stage.gradient_samples)
            return {"taylor": torch.tensor([
                depth.block_taylor([weight_matrix(submodule(layer, n)) for n in adapter.linear_names],
                                   [grads[f"{i}.{n}"] for n in adapter.linear_names])
                for i, layer in enumerate(adapter.layers)])}

        scores = cache.get_or_compute(key(stage.gradient_samples), compute)
        result.scores["block_taylor"] = scores["taylor"].tolist()
        return scores["taylor"].tolist()
    raise PrunekitError(f"{method} needs {need!r}, a statistic the structured engine does not collect")


def _sleb(adapter: ModelAdapter, windows: torch.Tensor, device: torch.device, batch_size: int, count: int,
          cache: ScoreCache, key: str, step: Callable[[str], None], result: StructuredResult) -> list[int]:
    """Greedy removal; the order is cached, and a longer request extends a cached shorter one."""
    cached = cache.load(key)
    order: list[int] = cached["order"].tolist()[:count] if cached else []
    perplexities: list[float] = []
    while len(order) < count:
        step(f"sleb: choosing block {len(order) + 1} of {count} ({len(adapter.layers) - len(order)} candidates)")
        scores = perplexity_ranking(adapter, windows, device, batch_size, order)
        best = int(torch.argmin(scores))
        order.append(best)
        perplexities.append(float(scores[best]))
    if cached is None or len(order) > len(cached["order"]):
        cache.save(key, {"order": torch.tensor(order, dtype=torch.long)})
    result.scores["removal_order"] = [float(i) for i in order]
    if perplexities:
        result.scores["calibration_ppl_after_each_removal"] = perplexities
    return order


def _prune_width(adapter: ModelAdapter, stage: StructuredStage, windows: torch.Tensor, device: torch.device,
                 batch_size: int, cache: ScoreCache, step: Callable[[str], None]) -> StructuredResult:
    part = stage.part
    attention = part != "mlp"
    if attention and adapter.heads_refusal:
        raise PrunekitError(adapter.heads_refusal)
    remove = removal_count(adapter, stage)
    layers = adapter.layers
    group = adapter.attention if attention else adapter.require_mlp()
    total, _ = _units(adapter, part)
    result = StructuredResult(f"{stage.method} on {part}: keep {total - remove} of {total} per layer")
    head_dim = adapter.head_dim
    heads, kv_heads = adapter.num_heads, adapter.num_kv_heads
    if stage.compensate:
        surgery.enable_output_bias(adapter, "attention" if attention else "mlp")  # fails early if impossible
    key = fingerprint(adapter, windows, stage.method, "attention" if attention else "mlp", stage.gradient_samples,
                      stage.compensate)

    spec = stage.spec

    def compute() -> dict[str, torch.Tensor]:
        stats: list[ChannelStats] = []
        if "channel_stats" in spec.needs or stage.compensate:
            step(f"{stage.method}: input statistics of {group.output} over {len(windows)} windows")
            stats = output_projection_statistics(adapter, part, windows, device, batch_size)
        grads: dict[str, torch.Tensor] = {}
        if "taylor_terms" in spec.needs:
            step(f"{stage.method}: gradients over {min(stage.gradient_samples, len(windows))} windows")
            grads = linear_gradients(adapter, group.paths, windows, device, stage.gradient_samples)
        out: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(layers):
            needs = {need: _width_statistic(need, adapter, part, i, layer, stats, grads) for need in spec.needs}
            scores = spec.function(**needs)
            out[f"{i}.score"], kv_rows = scores if isinstance(scores, tuple) else (scores, None)
            if kv_rows is not None:
                out[f"{i}.kv_score"] = width.group_sums(kv_rows, head_dim)
            if stats:
                out[f"{i}.mean"] = stats[i].mean
        return out

    scores = cache.get_or_compute(key, compute)
    for i, layer in enumerate(layers):
        channel = scores[f"{i}.score"]
        if part == "mlp":
            keep = width.keep_highest(channel, total - remove)
            keep_kv = None
            kept_channels = keep
        else:
            head_scores = width.group_sums(channel, head_dim)
            if part == "heads":
                keep = width.keep_within_groups(head_scores, kv_heads, (heads - remove) // kv_heads)
                keep_kv = torch.arange(kv_heads)
            else:
                per_group = heads // kv_heads
                group_scores = width.group_sums(head_scores, per_group)
                if f"{i}.kv_score" in scores:
                    group_scores = group_scores + scores[f"{i}.kv_score"]
                keep_kv = width.keep_highest(group_scores, kv_heads - remove)
                keep = (keep_kv.unsqueeze(1) * per_group + torch.arange(per_group)).flatten()
            kept_channels = unit_indices(keep, head_dim)
        if stage.compensate:
            removed = torch.ones(len(channel), dtype=torch.bool)
            removed[kept_channels] = False
            out_weight = weight_matrix(submodule(layer, group.output)).detach().cpu()
            bias = width.compensation_bias(out_weight, scores[f"{i}.mean"], removed)
            surgery.add_output_bias(adapter, layer, "attention" if attention else "mlp", bias)
        if part == "mlp":
            surgery.shrink_mlp(adapter, layer, keep)
        else:
            surgery.shrink_attention(adapter, layer, keep, keep_kv, head_dim)
        result.removed.setdefault("kept_per_layer", []).append(keep.tolist())
    if part == "mlp":
        surgery.set_mlp_width(adapter, total - remove)
    elif part == "heads":
        surgery.set_heads(adapter, heads - remove, kv_heads, head_dim)
    else:
        surgery.set_heads(adapter, heads // kv_heads * (kv_heads - remove), kv_heads - remove, head_dim)
    if cache.hits and cache.hits[-1] == key:
        result.notes.append("scores reused from the cache (same weights, calibration tokens and method)")
    if stage.compensate:
        result.notes.append(f"bias compensation: removed channels' mean output added to {group.output}'s bias")
    result.removed["per_layer_before"] = total
    result.removed["per_layer_after"] = total - remove
    return result


def _width_statistic(need: str, adapter: ModelAdapter, part: str, index: int, layer: nn.Module,
                     stats: list[ChannelStats], grads: dict[str, torch.Tensor]) -> object:
    """One statistic a width method needs, for one layer; the adapter's group says which rows and columns."""
    group = adapter.mlp if part == "mlp" else adapter.attention
    if need == "channel_stats":
        return stats[index]
    if need == "output_weight":
        return weight_matrix(submodule(layer, group.output)).detach().cpu()
    if need != "taylor_terms":
        raise PrunekitError(f"a width method needs {need!r}, a statistic the structured engine does not collect")
    sizes = adapter.sizes(layer)

    def rows(part_rows: Rows, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, gradient) of a group's part: `count` rows from where the part starts."""
        start = part_rows.start(sizes)
        weight = weight_matrix(submodule(layer, part_rows.path)).detach().cpu()[start:start + count]
        return weight, grads[f"{index}.{part_rows.path}"].cpu()[start:start + count]

    output = (weight_matrix(submodule(layer, group.output)).detach().cpu(), grads[f"{index}.{group.output}"].cpu())
    if part == "mlp":
        return output, [rows(r, sizes.channels) for r in group.inputs], []
    query = rows(group.query, sizes.heads * sizes.head_dim)
    return output, [query], [rows(r, sizes.kv_heads * sizes.head_dim) for r in (group.key, group.value)]
