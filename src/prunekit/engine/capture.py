"""Capturing what each decoder layer receives, so layers can then be run one at a time.

Every layer of the model is swapped for a recorder that stores its call arguments (position embeddings, masks,
...) and passes the hidden states through untouched. One cheap pass of the base model then yields the first layer's
hidden states and, for every layer, everything else it needs: nothing in the code has to know how a given family
builds its masks or rotary embeddings (Gemma 3, for example, gives local and global layers different ones).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit.models.adapters.base import ModelAdapter


@dataclass
class LayerCall:
    """The arguments of one call of a decoder layer, with the hidden states taken out."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass
class CapturedInputs:
    hidden: list[torch.Tensor] = field(default_factory=list)  # one tensor per calibration batch
    calls: list[list[LayerCall]] = field(default_factory=list)  # calls[layer][batch]


class LayerStandIn(nn.Module):
    """Takes a decoder layer's place in the model for one pass. The layer is stored unregistered (the stand-in
    owns no parameters), yet its attributes, such as Gemma's `attention_type`, stay reachable."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "layer", layer)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.layer, name)


class _Recorder(LayerStandIn):
    def __init__(self, layer: nn.Module, sink: list[LayerCall], keep_hidden: list[torch.Tensor] | None) -> None:
        super().__init__(layer)
        self.sink = sink
        self.keep_hidden = keep_hidden

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args:
            hidden, rest = args[0], args[1:]
        else:
            hidden, rest = kwargs.pop("hidden_states"), ()
        kwargs.pop("past_key_values", None)
        kwargs.pop("past_key_value", None)
        kwargs["use_cache"] = False
        self.sink.append(LayerCall(rest, kwargs))
        if self.keep_hidden is not None:
            self.keep_hidden.append(hidden.detach().clone())
        return hidden


@torch.no_grad()
def capture_layer_inputs(adapter: ModelAdapter, batches: list[torch.Tensor], device: torch.device) -> CapturedInputs:
    """Run the embeddings for every batch of token ids and record every layer's call arguments."""
    layers = adapter.layers
    captured = CapturedInputs(calls=[[] for _ in layers])
    originals = list(layers)
    for i, layer in enumerate(originals):
        layers[i] = _Recorder(layer, captured.calls[i], captured.hidden if i == 0 else None)
    try:
        base = adapter.base_model
        for ids in batches:
            base(input_ids=ids.to(device), use_cache=False)
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer
    return captured
