"""The groups of parameters that shrink together, as adapters declare them.

A width group is a set of unit-sized slices that must be removed together so the layer keeps working: an MLP
channel is one row of each input projection (gate and up, or fc1) and one input column of the output projection; a
query head is `head_dim` rows of the query projection and the matching columns of the output projection; a key/value
group is one key head, one value head and the query heads that share them. A fused matrix (Phi-3's qkv_proj and
gate_up_proj) holds several parts one after the other: a part says where its first row sits, as a function of the
layer's current sizes. A group also names the config fields that describe its size, so a pruned model reloads.

Matrices are always seen as (outputs, inputs), whatever the module stores: GPT-2's Conv1D keeps the transpose.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

LINEAR_TYPES = (nn.Linear, Conv1D)


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The (outputs, inputs) weight of a linear layer; a view, so writing into it writes the module's weight."""
    return module.weight.T if isinstance(module, Conv1D) else module.weight


def gradient_matrix(module: nn.Module) -> torch.Tensor | None:
    grad = module.weight.grad
    return grad.T if grad is not None and isinstance(module, Conv1D) else grad


@dataclass(frozen=True)
class Sizes:
    """A layer's current sizes, which fix where each part of a fused matrix starts."""

    heads: int
    kv_heads: int
    head_dim: int
    channels: int  # MLP width


def at_start(_sizes: Sizes) -> int:
    return 0


@dataclass(frozen=True)
class Rows:
    """The output rows of one linear (path relative to the decoder layer) that a group uses, from `start` on."""

    path: str
    start: Callable[[Sizes], int] = at_start


@dataclass(frozen=True)
class MlpChannels:
    """MLP channels: one row of every input projection with one input column of the output projection."""

    inputs: tuple[Rows, ...]
    output: str
    width_field: str = "intermediate_size"
    bias_field: str | None = "mlp_bias"  # the config flag that gives the linears a bias; None: no such flag

    @property
    def paths(self) -> tuple[str, ...]:
        return _unique((*(r.path for r in self.inputs), self.output))

    def write_config(self, config: object, width: int) -> None:
        setattr(config, self.width_field, width)


@dataclass(frozen=True)
class AttentionHeads:
    """Query heads (query rows with output columns) and key/value groups (a key and a value head with the query
    heads that share them; query heads of one group are consecutive)."""

    query: Rows
    key: Rows
    value: Rows
    output: str
    heads_field: str = "num_attention_heads"
    kv_heads_field: str | None = "num_key_value_heads"  # None: no grouped-query attention
    head_dim_field: str | None = "head_dim"  # None: the head size is hidden / heads, so heads cannot go
    bias_field: str | None = "attention_bias"

    @property
    def paths(self) -> tuple[str, ...]:
        return _unique((self.query.path, self.key.path, self.value.path, self.output))

    def write_config(self, config: object, heads: int, kv_heads: int, head_dim: int) -> None:
        """Head counts and the head size, written explicitly as it no longer equals hidden_size / heads."""
        setattr(config, self.head_dim_field, head_dim)
        setattr(config, self.heads_field, heads)
        if self.kv_heads_field:
            setattr(config, self.kv_heads_field, kv_heads)


@dataclass(frozen=True)
class Experts:
    """A layer's routed experts (paths relative to the decoder layer). Every parameter of the experts module holds
    one slice per expert along its first dimension (transformers' fused layout: gate_up_proj [experts, ...],
    down_proj [experts, ...], biases), and so do the router's parameters and buffers (weight [experts, hidden], any
    bias or score correction). The router maps the block's input to (logits, top-k weights, top-k indices) and the
    experts module maps (input, indices, weights) to the weighted sum of the chosen experts' outputs, so keeping a
    subset of experts is one index along that dimension and a new count in the config."""

    experts: str
    router: str
    count_field: str = "num_local_experts"
    top_k_field: str = "num_experts_per_tok"
    # "stacked": gate_up_proj [experts, 2 x width, hidden] (gate rows, then up rows), down_proj [experts, hidden,
    # width], activation act_fn(gate) * up. "transposed" (GPT-OSS): [experts, hidden, 2 x width] with gate and up
    # interleaved, [experts, width, hidden], biases, and the module's own clamped gate.
    layout: str = "stacked"

    def write_config(self, config: object, count: int) -> None:
        setattr(config, self.count_field, count)

    def matrices(self, experts: nn.Module, expert: int) -> dict[str, torch.Tensor]:
        """One expert's gate_up_proj and down_proj as (outputs, inputs) views (writing them writes the expert)."""
        gate_up, down = experts.gate_up_proj[expert], experts.down_proj[expert]
        if self.layout == "transposed":
            return {"gate_up_proj": gate_up.T, "down_proj": down.T}
        return {"gate_up_proj": gate_up, "down_proj": down}

    def _gate_up_pairs(self, experts: nn.Module, order: torch.Tensor) -> torch.Tensor:
        """[channels, 2]: the gate row and the up row of channels `order` in gate_up_proj's (outputs, inputs) view
        (gate rows then up rows, or interleaved)."""
        if self.layout == "transposed":
            return torch.stack([2 * order, 2 * order + 1], dim=1)
        return torch.stack([order, order + experts.down_proj.shape[-1]], dim=1)

    def channel_weights(self, experts: nn.Module, expert: int) -> torch.Tensor:
        """[width, 3 x hidden]: per intermediate channel, its gate row, up row and down column."""
        matrices = self.matrices(experts, expert)
        width = matrices["down_proj"].shape[1]
        pairs = self._gate_up_pairs(experts, torch.arange(width, device=matrices["down_proj"].device))
        return torch.cat([matrices["gate_up_proj"][pairs.flatten()].reshape(width, -1), matrices["down_proj"].T], 1)

    @torch.no_grad()
    def permute_channels(self, experts: nn.Module, expert: int, order: torch.Tensor) -> None:
        """Reorder one expert's intermediate channels (channel i becomes what channel order[i] was): the expert
        computes the same function."""
        order = order.to(experts.down_proj.device)
        pairs = self._gate_up_pairs(experts, order)
        fused = pairs.flatten() if self.layout == "transposed" else pairs.T.flatten()  # as the dimension is stored
        if self.layout == "transposed":
            experts.gate_up_proj[expert] = experts.gate_up_proj[expert][:, fused]
            experts.down_proj[expert] = experts.down_proj[expert][order]
        else:
            experts.gate_up_proj[expert] = experts.gate_up_proj[expert][fused]
            experts.down_proj[expert] = experts.down_proj[expert][:, order]
        bias = getattr(experts, "gate_up_proj_bias", None)
        if bias is not None:
            bias[expert] = bias[expert][fused]

    def hidden(self, experts: nn.Module, x: torch.Tensor, expert: int) -> torch.Tensor:
        """The input of one expert's down projection for the rows of x."""
        if self.layout == "transposed":
            return experts._apply_gate(x @ experts.gate_up_proj[expert] + experts.gate_up_proj_bias[expert])
        gate, up = nn.functional.linear(x, experts.gate_up_proj[expert]).chunk(2, dim=-1)
        return experts.act_fn(gate) * up


class ExpertMatrix:
    """One expert's matrix standing in for a linear: `weight` is an (outputs, inputs) view into the experts'
    fused tensor, so weight pruning writes straight into it."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight


@dataclass(frozen=True)
class Vocabulary:
    """Token rows: the input embedding's rows with the head's output rows (one tensor when they are tied)."""

    embedding: str  # module paths from the model's root
    head: str
    size_field: str = "vocab_size"

    def write_config(self, config: object, size: int) -> None:
        setattr(config, self.size_field, size)


def separate_attention(q: str, k: str, v: str, output: str, **fields: str | None) -> AttentionHeads:
    return AttentionHeads(Rows(q), Rows(k), Rows(v), output, **fields)


def fused_attention(qkv: str, output: str, **fields: str | None) -> AttentionHeads:
    """Query, key and value rows one after the other in one matrix ([q | k | v], as Phi-3's qkv_proj)."""
    return AttentionHeads(Rows(qkv), Rows(qkv, lambda s: s.heads * s.head_dim),
                          Rows(qkv, lambda s: (s.heads + s.kv_heads) * s.head_dim), output, **fields)


def gated_mlp(gate: str, up: str, down: str, **fields: str | None) -> MlpChannels:
    return MlpChannels((Rows(gate), Rows(up)), down, **fields)


def fused_gated_mlp(gate_up: str, down: str, **fields: str | None) -> MlpChannels:
    """Gate and up rows one after the other in one matrix ([gate | up], as Phi-3's gate_up_proj)."""
    return MlpChannels((Rows(gate_up), Rows(gate_up, lambda s: s.channels)), down, **fields)


def plain_mlp(fc1: str, fc2: str, **fields: str | None) -> MlpChannels:
    return MlpChannels((Rows(fc1),), fc2, **fields)


def unit_indices(units: torch.Tensor, size: int, start: int = 0) -> torch.Tensor:
    """Row / column indices of whole units of `size` consecutive features (heads: size = head_dim)."""
    return (start + units.unsqueeze(1) * size + torch.arange(size, device=units.device)).flatten()


def _unique(paths: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(paths))
