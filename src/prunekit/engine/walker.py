"""The one layer walker: every pass that goes through the decoder layers one at a time uses it (layer-wise pruning,
OWL's dense pass, the structured passes' statistics and hidden-state similarities, streaming).

The inputs of every layer are captured once (capture_on_device); then each layer in turn is opened from its store
(moved to the compute device, or read from the checkpoint when streaming), handed to the caller, which may collect
statistics and edit it, run on the calibration batches to give the next layer its inputs, and closed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from itertools import chain

import torch
from torch import nn

from prunekit.engine.capture import CapturedInputs, LayerCall, capture_layer_inputs
from prunekit.models.adapters.base import ModelAdapter


class LayerStore:
    """Where the decoder layers live between uses. This one keeps them in the model and moves one at a time to the
    compute device; engine.streaming reads each from the checkpoint and writes it out instead."""

    def __init__(self, adapter: ModelAdapter, device: torch.device) -> None:
        self.adapter = adapter
        self.device = device
        self.home = next(adapter.model.parameters()).device

    def open(self, index: int) -> nn.Module:
        return self.adapter.layers[index].to(self.device)

    def close(self, index: int, layer: nn.Module, pruned: bool) -> None:
        """`pruned`: the layer is final (False after a read-only pass such as OWL's)."""
        layer.to(self.home)


def forward_layer(layer: nn.Module, hidden: torch.Tensor, call: LayerCall) -> torch.Tensor:
    out = layer(hidden, *call.args, **call.kwargs)
    return out[0] if isinstance(out, tuple) else out


def forward_all(layer: nn.Module, hidden: list[torch.Tensor], calls: list[LayerCall]) -> list[torch.Tensor]:
    return [forward_layer(layer, h, call) for h, call in zip(hidden, calls, strict=True)]


def _move(tensors: list[torch.Tensor], device: torch.device) -> None:
    for t in tensors:
        if not t.is_meta:  # a streamed model leaves what the capture does not use (the head) unloaded
            t.data = t.data.to(device)


def capture_on_device(adapter: ModelAdapter, windows: torch.Tensor, batch_size: int, device: torch.device,
                      home: torch.device) -> CapturedInputs:
    """Capture every layer's inputs with everything outside the decoder layers (embeddings, rotary tables, norms)
    moved to the device for the pass, and back to `home` after it."""
    prefix = adapter.layers_path + "."
    outside = [t for n, t in chain(adapter.model.named_parameters(), adapter.model.named_buffers())
               if not n.startswith(prefix)]
    _move(outside, device)
    try:
        return capture_layer_inputs(adapter, list(windows.split(batch_size)), device)
    finally:
        _move(outside, home)


class LayerVisit:
    """One decoder layer during a walk: its index, the module (on the compute device), the calibration batches'
    inputs and call arguments, and its outputs, computed once when first asked for."""

    def __init__(self, index: int, layer: nn.Module, inputs: list[torch.Tensor], calls: list[LayerCall]) -> None:
        self.index, self.layer, self.inputs, self.calls = index, layer, inputs, calls
        self._outputs: list[torch.Tensor] | None = None

    def outputs(self) -> list[torch.Tensor]:
        if self._outputs is None:
            self._outputs = forward_all(self.layer, self.inputs, self.calls)
        return self._outputs


def walk_layers(adapter: ModelAdapter, captured: CapturedInputs, store: LayerStore, *, final: bool,
                timed: Callable[[str], AbstractContextManager[None]] | None = None) -> Iterator[LayerVisit]:
    """Each decoder layer in turn. After the caller is done with a layer, its outputs (computed on the layer as
    the caller left it) become the next layer's inputs; the last layer's are computed only if the caller asks.
    `final`: the store keeps the layers as they are (False for read-only passes). `timed(phase)` times the phases
    layer_io and recompute_outputs."""
    timer = timed or (lambda _phase: nullcontext())
    hidden = captured.hidden
    count = len(adapter.layers)
    for index in range(count):
        with timer("layer_io"):
            layer = store.open(index)
        visit = LayerVisit(index, layer, hidden, captured.calls[index] if captured.calls else [])
        yield visit
        if hidden and index < count - 1:
            with timer("recompute_outputs"):
                hidden = visit.outputs()
        with timer("layer_io"):
            store.close(index, layer, pruned=final)
