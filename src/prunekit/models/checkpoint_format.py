"""Tensor names as a checkpoint stores them versus as the model holds them, through transformers' own conversion
mappings. transformers 5 fuses an MoE layer's per-expert matrices into one tensor when it loads a checkpoint
(Mixtral's `block_sparse_moe.experts.3.w1.weight` becomes part of `mlp.experts.gate_up_proj`) and splits them back
when it saves. Streaming reads and writes a layer's tensors itself, so it applies the same transforms, in both
directions, to one layer's tensors at a time; dense families have no transforms and pass through unchanged."""

from __future__ import annotations

from copy import deepcopy

import torch
from torch import nn
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import (
    PrefixChange,
    WeightConverter,
    WeightRenaming,
    dot_natural_key,
    rename_source_key,
    revert_weight_conversion,
)


def _transforms(model: nn.Module) -> tuple[list[WeightRenaming], list[WeightConverter]]:
    transforms = [t for t in get_model_conversion_mapping(model, add_legacy=False) if not isinstance(t, PrefixChange)]
    return ([t for t in transforms if isinstance(t, WeightRenaming)],
            [t for t in transforms if isinstance(t, WeightConverter)])


def to_model_names(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint tensors (full names) as the model holds them, merged and renamed as transformers loads them."""
    renamings, converters = _transforms(model)
    if not renamings and not converters:
        return tensors
    by_pattern = {pattern: converter for converter in converters for pattern in converter.source_patterns}
    pending: dict[str, WeightRenaming | WeightConverter] = {}
    for name, tensor in sorted(tensors.items(), key=lambda item: dot_natural_key(item[0])):
        target, pattern = rename_source_key(name, renamings, converters)
        if pattern is None:
            transform = pending.setdefault(target, WeightRenaming(name, target))
            pattern = name
        else:
            transform = pending.setdefault(target, deepcopy(by_pattern[pattern]))
        transform.add_tensor(target, name, pattern, tensor)
    converted = {}
    for first_name, transform in pending.items():
        for target, value in transform.convert(first_name, model=model, config=model.config).items():
            converted[target] = value[0] if isinstance(value, list) else value
    return converted


def to_checkpoint_names(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Model tensors (full names) as transformers would save them."""
    return revert_weight_conversion(model, tensors)
