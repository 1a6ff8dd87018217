"""Structural edits that keep a model loadable by stock transformers: every layer keeps the same shapes, and the
config is rewritten to describe them (layer count and per-layer lists, MLP width, head counts, bias flags)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.models.adapters.base import ModelAdapter, submodule


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


def _sliced(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None,
            bias: bool | None = None) -> nn.Linear:
    """A new Linear with the chosen output rows / input columns; `bias` True adds a zero bias if there is none."""
    weight = linear.weight.detach()
    rows = rows.to(weight.device) if rows is not None else None
    if rows is not None:
        weight = weight[rows]
    if cols is not None:
        weight = weight[:, cols.to(weight.device)]
    has_bias = linear.bias is not None or bool(bias)
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias, device=weight.device, dtype=weight.dtype)
    new.weight.data.copy_(weight)
    if has_bias:
        if linear.bias is None:
            new.bias.data.zero_()
        else:
            new.bias.data.copy_(linear.bias.detach() if rows is None else linear.bias.detach()[rows])
    return new


def _bias_after_flag(adapter: ModelAdapter, field: str | None, names: tuple[str, ...]) -> dict[str, bool] | None:
    """Which of `names` get a bias in a stock layer built with the config flag `field` on; None if none would."""
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
    flags = {name: submodule(fresh, name).bias is not None for name in names}
    return flags if flags[names[-1]] else None


def enable_output_bias(adapter: ModelAdapter, part: str) -> None:
    """Give the output projection of `part` ("attention" or "mlp") a bias in every layer, through the config flag
    stock transformers reads, so the saved model still loads. Other linears the flag affects get zero biases."""
    names = adapter.attention_linears if part == "attention" else adapter.mlp_linears
    if all(submodule(layer, names[-1]).bias is not None for layer in adapter.layers):
        return
    field = adapter.attention_bias_field if part == "attention" else adapter.mlp_bias_field
    flags = _bias_after_flag(adapter, field, names)
    if flags is None:
        raise PrunekitError(
            f"bias compensation needs a bias on {names[-1]}, which {adapter.config.model_type} models cannot have in "
            "stock transformers: turn bias compensation off (--no-bias-compensation, or bias_compensation: false)"
        )
    setattr(adapter.config, field, True)
    for layer in adapter.layers:
        for name, wanted in flags.items():
            linear = submodule(layer, name)
            if wanted and linear.bias is None:
                set_submodule(layer, name, _sliced(linear, bias=True))


def shrink_mlp(adapter: ModelAdapter, layer: nn.Module, keep: torch.Tensor) -> None:
    """Keep the MLP channels `keep` (indices): rows of the input projections, columns of the output projection."""
    *inputs, output = adapter.mlp_linears
    for name in inputs:
        set_submodule(layer, name, _sliced(submodule(layer, name), rows=keep))
    set_submodule(layer, output, _sliced(submodule(layer, output), cols=keep))


def head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    return (heads.unsqueeze(1) * head_dim + torch.arange(head_dim, device=heads.device)).flatten()


def shrink_attention(adapter: ModelAdapter, layer: nn.Module, keep_heads: torch.Tensor,
                     keep_kv_heads: torch.Tensor, head_dim: int) -> None:
    """Keep query heads `keep_heads` and key/value heads `keep_kv_heads` (indices) of one layer."""
    q, k, v, out = adapter.attention_linears
    rows, kv_rows = head_rows(keep_heads, head_dim), head_rows(keep_kv_heads, head_dim)
    set_submodule(layer, q, _sliced(submodule(layer, q), rows=rows))
    set_submodule(layer, k, _sliced(submodule(layer, k), rows=kv_rows))
    set_submodule(layer, v, _sliced(submodule(layer, v), rows=kv_rows))
    set_submodule(layer, out, _sliced(submodule(layer, out), cols=rows))
    attention = submodule(layer, q.rpartition(".")[0]) if "." in q else layer
    for attr, value in (("num_heads", len(keep_heads)), ("num_key_value_heads", len(keep_kv_heads)),
                        ("num_key_value_groups", len(keep_heads) // len(keep_kv_heads))):
        if hasattr(attention, attr):
            setattr(attention, attr, value)


def set_mlp_width(adapter: ModelAdapter, width: int) -> None:
    setattr(adapter.config, adapter.intermediate_size_field, width)


def set_heads(adapter: ModelAdapter, heads: int, kv_heads: int, head_dim: int) -> None:
    """Write head counts; the head size is written explicitly, as it no longer equals hidden_size / heads."""
    if adapter.head_dim_field is None:
        raise PrunekitError(
            f"{adapter.config.model_type} derives its head size from hidden_size / heads, so stock transformers "
            "cannot load it with fewer heads: prune the MLP width or whole blocks instead"
        )
    setattr(adapter.config, adapter.head_dim_field, head_dim)
    setattr(adapter.config, adapter.heads_field, heads)
    if adapter.kv_heads_field:
        setattr(adapter.config, adapter.kv_heads_field, kv_heads)


def add_output_bias(adapter: ModelAdapter, layer: nn.Module, part: str, bias: torch.Tensor) -> None:
    """Add `bias` to the output projection of `part` (after `enable_output_bias`)."""
    names = adapter.attention_linears if part == "attention" else adapter.mlp_linears
    linear = submodule(layer, names[-1])
    linear.bias.data += bias.to(linear.bias.dtype)
