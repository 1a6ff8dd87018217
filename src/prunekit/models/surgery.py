"""Structural edits that keep a model loadable by stock transformers: every layer keeps the same shapes, and the
config is rewritten to describe them (layer count and per-layer lists, MLP width, head counts, bias flags)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from prunekit.errors import PrunekitError
from prunekit.models.adapters.base import ModelAdapter, submodule
from prunekit.models.groups import AttentionHeads, MlpChannels, Rows, Sizes, unit_indices, weight_matrix


def set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(submodule(root, parent) if parent else root, name, module)


def per_layer_fields(config: object, count: int) -> dict[str, list]:
    """Config lists with one entry per decoder layer, such as Gemma's and Qwen's `layer_types`."""
    return {name: value for name, value in vars(config).items()
            if isinstance(value, list) and len(value) == count and not name.startswith("_")}


def remove_layers(adapter: ModelAdapter, drop: set[int]) -> None:
    """Remove decoder layers; per-layer config lists follow, and the kept layers are renumbered for the KV cache."""
    config = adapter.config
    count = len(adapter.layers)
    keep = [i for i in range(count) if i not in drop]
    if not keep:
        raise PrunekitError(f"removing {len(drop)} of {count} layers leaves none: remove at most {count - 1}")
    kept = nn.ModuleList(adapter.layers[i] for i in keep)
    set_submodule(adapter.model, adapter.layers_path, kept)
    for new_index, layer in enumerate(kept):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    for name, value in per_layer_fields(config, count).items():
        setattr(config, name, [value[i] for i in keep])
    config.num_hidden_layers = len(keep)
    if hasattr(config, "max_window_layers"):  # Qwen2: layers below this index use full attention
        config.max_window_layers = sum(1 for i in keep if i < config.max_window_layers)


def sliced(module: nn.Module, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None,
           bias: bool | None = None) -> nn.Module:
    """A new linear of the same kind with the chosen output rows / input columns of the (outputs, inputs) matrix;
    `bias` True adds a zero bias if there is none."""
    weight = weight_matrix(module).detach()
    rows = rows.to(weight.device) if rows is not None else None
    if rows is not None:
        weight = weight[rows]
    if cols is not None:
        weight = weight[:, cols.to(weight.device)]
    outputs, inputs = weight.shape
    has_bias = module.bias is not None or bool(bias)
    if isinstance(module, Conv1D):  # always has a bias
        new = Conv1D(outputs, inputs).to(device=weight.device, dtype=weight.dtype)
    else:  # nn.Linear or a subclass with its signature (Falcon's FalconLinear)
        new = type(module)(inputs, outputs, bias=has_bias, device=weight.device, dtype=weight.dtype)
    weight_matrix(new).data.copy_(weight)
    if has_bias:
        if module.bias is None:
            new.bias.data.zero_()
        else:
            new.bias.data.copy_(module.bias.detach() if rows is None else module.bias.detach()[rows])
    return new


def _part(adapter: ModelAdapter, part: str) -> AttentionHeads | MlpChannels:
    group = adapter.attention if part == "attention" else adapter.mlp
    if group is None:
        raise PrunekitError(adapter.heads_refusal or "this model names no attention heads")
    return group


def _bias_after_flag(adapter: ModelAdapter, field: str | None) -> dict[str, bool] | None:
    """Which linears of a stock layer built with the config flag `field` on get a bias; None if no such flag."""
    if field is None or not hasattr(adapter.config, field):
        return None
    config = copy.deepcopy(adapter.config)
    setattr(config, field, True)
    layer = adapter.layers[0]
    with torch.device("meta"):
        try:
            fresh = type(layer)(config, layer_idx=0)
        except TypeError:
            fresh = type(layer)(config)
    return {name: submodule(fresh, name).bias is not None for name in adapter.linear_names}


def enable_output_bias(adapter: ModelAdapter, part: str) -> None:
    """Give the output projection of `part` ("attention" or "mlp") a bias in every layer, through the config flag
    stock transformers reads, so the saved model still loads. Other linears the flag affects get zero biases."""
    group = _part(adapter, part)
    if all(submodule(layer, group.output).bias is not None for layer in adapter.layers):
        return
    flags = _bias_after_flag(adapter, group.bias_field)
    if flags is None or not flags[group.output]:
        raise PrunekitError(
            f"bias compensation needs a bias on {group.output}, which {adapter.config.model_type} models cannot have "
            "in stock transformers: turn bias compensation off (--no-bias-compensation, or bias_compensation: false)"
        )
    setattr(adapter.config, group.bias_field, True)
    for layer in adapter.layers:
        for name, wanted in flags.items():
            linear = submodule(layer, name)
            if wanted and linear.bias is None:
                set_submodule(layer, name, sliced(linear, bias=True))


def _keep_rows(layer: nn.Module, kept: dict[str, list[torch.Tensor]]) -> None:
    """Keep the listed rows of each linear; the parts of a fused matrix stay in their order."""
    for path, parts in kept.items():
        set_submodule(layer, path, sliced(submodule(layer, path), rows=torch.cat(parts).sort().values))


def _rows(kept: dict[str, list[torch.Tensor]], rows: Rows, sizes: Sizes, indices: torch.Tensor) -> None:
    kept.setdefault(rows.path, []).append(indices + rows.start(sizes))


def shrink_mlp(adapter: ModelAdapter, layer: nn.Module, keep: torch.Tensor) -> None:
    """Keep the MLP channels `keep` (indices): rows of the input projections, columns of the output projection."""
    group, sizes = adapter.mlp, adapter.sizes(layer)
    kept: dict[str, list[torch.Tensor]] = {}
    for rows in group.inputs:
        _rows(kept, rows, sizes, keep)
    _keep_rows(layer, kept)
    set_submodule(layer, group.output, sliced(submodule(layer, group.output), cols=keep))


def shrink_attention(adapter: ModelAdapter, layer: nn.Module, keep_heads: torch.Tensor,
                     keep_kv_heads: torch.Tensor, head_dim: int) -> None:
    """Keep query heads `keep_heads` and key/value heads `keep_kv_heads` (indices) of one layer."""
    group, sizes = _part(adapter, "attention"), adapter.sizes(layer)
    rows, kv_rows = unit_indices(keep_heads, head_dim), unit_indices(keep_kv_heads, head_dim)
    kept: dict[str, list[torch.Tensor]] = {}
    _rows(kept, group.query, sizes, rows)
    _rows(kept, group.key, sizes, kv_rows)
    _rows(kept, group.value, sizes, kv_rows)
    _keep_rows(layer, kept)
    set_submodule(layer, group.output, sliced(submodule(layer, group.output), cols=rows))
    parent = group.output.rpartition(".")[0]
    attention = submodule(layer, parent) if parent else layer
    for attr, value in (("num_heads", len(keep_heads)), ("num_key_value_heads", len(keep_kv_heads)),
                        ("num_key_value_groups", len(keep_heads) // len(keep_kv_heads))):
        if hasattr(attention, attr):
            setattr(attention, attr, value)


def set_mlp_width(adapter: ModelAdapter, width: int) -> None:
    adapter.mlp.write_config(adapter.config, width)


def set_heads(adapter: ModelAdapter, heads: int, kv_heads: int, head_dim: int) -> None:
    """Write head counts and the head size (it no longer equals hidden_size / heads)."""
    if adapter.heads_refusal:
        raise PrunekitError(adapter.heads_refusal)
    _part(adapter, "attention").write_config(adapter.config, heads, kv_heads, head_dim)


def add_output_bias(adapter: ModelAdapter, layer: nn.Module, part: str, bias: torch.Tensor) -> None:
    """Add `bias` to the output projection of `part` (after `enable_output_bias`)."""
    linear = submodule(layer, _part(adapter, part).output)
    linear.bias.data += bias.to(linear.bias.dtype)


def shrink_vocabulary(adapter: ModelAdapter, keep: torch.Tensor) -> None:
    """Keep the token ids `keep` (ascending), which become ids 0..len(keep)-1: embedding rows and head rows (the
    same tensor when tied), the padding index, the config's vocabulary size. The tokenizer must be remapped alike."""
    vocabulary = adapter.vocabulary
    embedding, head = submodule(adapter.model, vocabulary.embedding), submodule(adapter.model, vocabulary.head)
    tied = head.weight is embedding.weight
    rows = keep.to(embedding.weight.device)
    # edited in place, so a family's own embedding class (Gemma's scaled one) keeps what else it holds
    embedding.weight = nn.Parameter(embedding.weight.detach()[rows].clone())
    embedding.num_embeddings = len(keep)
    if embedding.padding_idx is not None:
        kept = (keep == embedding.padding_idx).nonzero()
        embedding.padding_idx = int(kept[0]) if len(kept) else None
    if tied:
        head.weight = embedding.weight
        head.out_features = len(keep)
    else:
        set_submodule(adapter.model, vocabulary.head, sliced(head, rows=keep))
    vocabulary.write_config(adapter.config, len(keep))


def shrink_hidden(adapter: ModelAdapter, keep: torch.Tensor) -> None:
    """Keep the hidden (residual-stream) channels `keep`: embedding columns, the columns of every linear that reads
    the stream (queries, keys, values, MLP inputs, the head), the rows of every linear that writes it (attention and
    MLP outputs), every norm's weight and bias, and `hidden_size`. The head size is written explicitly, as it no
    longer equals hidden / heads. One-line errors where the family cannot express it or holds weights sized by the
    hidden size that this does not know."""
    config, model = adapter.config, adapter.model
    hidden = adapter.hidden_size
    if adapter.attention is None or adapter.attention.head_dim_field is None:
        raise PrunekitError(f"{config.model_type} derives its head size from hidden_size / heads, so its hidden size "
                            "cannot shrink alone: prune the MLP width or whole blocks instead")
    vocabulary = adapter.vocabulary
    embedding, head = submodule(model, vocabulary.embedding), submodule(model, vocabulary.head)
    if type(embedding) is not nn.Embedding:
        raise PrunekitError(f"{config.model_type} embeds tokens with {type(embedding).__name__}, which scales by the "
                            "hidden size: prunekit does not shrink its hidden size; prune the MLP width or blocks")
    tied = head.weight is embedding.weight
    readers = [*(r.path for r in (adapter.attention.query, adapter.attention.key, adapter.attention.value)),
               *(r.path for r in adapter.require_mlp().inputs)]
    writers = [adapter.attention.output, adapter.mlp.output]
    edits: list[tuple[nn.Module, str, str, nn.Module]] = []  # (layer, path, reads | writes, linear)
    for layer in adapter.layers:
        edits += [(layer, path, "reads", submodule(layer, path)) for path in dict.fromkeys(readers)]
        edits += [(layer, path, "writes", submodule(layer, path)) for path in writers]
    covered = {id(p) for _, _, _, m in edits for p in m.parameters()} | {id(embedding.weight), id(head.weight)}
    # the residual stream's norms: direct children of a decoder layer or of the base model (q/k norms inside the
    # attention are not, whatever their size)
    parents = [*adapter.layers, adapter.base_model]
    norms = [m for parent in parents for m in parent.children()
             if list(m.parameters()) and all(p.dim() == 1 and p.shape[0] == hidden for p in m.parameters())]
    covered |= {id(p) for m in norms for p in m.parameters()}
    unknown = [n for n, p in model.named_parameters() if id(p) not in covered and hidden in p.shape]
    if unknown:
        raise PrunekitError(f"{config.model_type} holds {unknown[0]}, sized by the hidden size, which prunekit does "
                            "not slice: its hidden size cannot shrink; prune the MLP width or whole blocks instead")
    rows = keep.to(embedding.weight.device)
    head_dim = adapter.head_dim
    for layer, path, kind, module in edits:
        set_submodule(layer, path, sliced(module, cols=keep) if kind == "reads" else sliced(module, rows=keep))
    for norm in norms:
        for name, param in list(norm.named_parameters(recurse=False)):
            setattr(norm, name, nn.Parameter(param.detach()[rows].clone()))
        if hasattr(norm, "normalized_shape"):
            norm.normalized_shape = (len(keep),)
    embedding.weight = nn.Parameter(embedding.weight.detach()[:, rows].clone())
    embedding.embedding_dim = len(keep)
    if tied:
        head.weight = embedding.weight
        head.in_features = len(keep)
    else:
        set_submodule(model, vocabulary.head, sliced(head, cols=keep))
    setattr(config, adapter.attention.head_dim_field, head_dim)
    config.hidden_size = len(keep)


def regroup_experts(adapter: ModelAdapter, layer: nn.Module, groups: list[list[int]],
                    weights: list[torch.Tensor], router_rows: list[int]) -> None:
    """Replace one layer's experts by `groups` of them: every expert tensor's slice of a group is the weighted sum of
    its members' slices (`weights` per group; a group of one is kept exactly), and every router tensor's entry is
    the one of `router_rows` (a member per group). The `num_experts` attributes of the router, the experts module
    and their block follow; the config is written by `set_expert_count` once every layer is done."""
    experts, router = adapter.moe(layer)
    total = adapter.num_experts  # the config changes only when every layer is done
    _replace_expert_tensors(experts, total, lambda data: torch.stack([
        data[g[0]] if len(g) == 1 else _weighted_sum(data[g], w) for g, w in zip(groups, weights, strict=True)]))
    _replace_expert_tensors(router, total, lambda data: data[torch.tensor(router_rows, device=data.device)])
    _set_expert_attributes((experts, router, submodule(layer, adapter.require_experts().experts.rpartition(".")[0])),
                           len(groups))


def restricted_router(router: nn.Module, total: int, kept: tuple[int, ...]) -> nn.Module:
    """A copy of a router that routes among the `kept` experts only (its indices refer to positions in `kept`)."""
    copied = copy.deepcopy(router)
    _replace_expert_tensors(copied, total, lambda data: data[torch.tensor(kept, device=data.device)])
    _set_expert_attributes((copied,), len(kept))
    return copied


def _replace_expert_tensors(module: nn.Module, total: int, make: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Every parameter and buffer of `module` itself with one entry per expert along dim 0, replaced by make(it)."""
    for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
        if tensor.ndim == 0 or tensor.shape[0] != total:
            continue
        new = make(tensor.detach()).contiguous()
        if isinstance(tensor, nn.Parameter):
            setattr(module, name, nn.Parameter(new, requires_grad=tensor.requires_grad))
        else:
            module.register_buffer(name, new)


def _set_expert_attributes(modules: tuple[nn.Module, ...], count: int) -> None:
    for module in modules:
        for attr in ("num_experts", "num_local_experts"):
            if isinstance(getattr(module, attr, None), int):
                setattr(module, attr, count)


def _weighted_sum(slices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    shape = (-1, *[1] * (slices.ndim - 1))
    return (slices.double() * weights.to(slices.device, torch.float64).view(shape)).sum(0).to(slices.dtype)


def set_expert_count(adapter: ModelAdapter, count: int) -> None:
    adapter.require_experts().write_config(adapter.config, count)
