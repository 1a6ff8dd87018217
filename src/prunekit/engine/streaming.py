"""Pruning a model bigger than memory: each decoder layer is read from the checkpoint, pruned, written, freed.

The model is built on the meta device (shapes, no storage). Before the capture pass only what it runs is loaded:
the norms, the computed buffers (rotary tables, embedding scales, initialised by transformers itself) and the rows
of the embedding table that the calibration tokens use. The layer executor then opens layers through
`StreamedLayers`, and the tensors no method changes (embeddings, head, final norm) are copied byte for byte into
the output. Peak memory is one layer plus the calibration activations.
"""

from __future__ import annotations

import ctypes
import gc

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig

from prunekit.engine.walker import LayerStore
from prunekit.models.adapters.base import ModelAdapter
from prunekit.models.checkpoint_format import to_checkpoint_names, to_model_names
from prunekit.models.shards import Checkpoint, ShardWriter


def release_memory() -> None:
    """Hand freed memory back to the system. glibc keeps freed blocks of this size class in the heap, so without
    a trim the process grows by about one layer per layer streamed."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def meta_model(config: PretrainedConfig, dtype: torch.dtype, trust_remote_code: bool = False) -> nn.Module:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    return model.eval()


def _materialize_buffers(model: nn.Module, modules: list[nn.Module]) -> None:
    """Give computed (non-persistent) buffers real storage and let transformers fill them, as its loader does."""
    for module in modules:
        names = [n for n in module._non_persistent_buffers_set if module._buffers.get(n) is not None]
        if names and any(module._buffers[n].is_meta for n in names):
            for n in names:
                module._buffers[n] = torch.empty_like(module._buffers[n], device="cpu")
            model._init_weights(module)


def _param_owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_name, _, attr = name.rpartition(".")
    return model.get_submodule(module_name), attr


def load_outside_layers(adapter: ModelAdapter, checkpoint: Checkpoint, token_ids: torch.Tensor,
                        dtype: torch.dtype) -> None:
    """Load what the embedding pass needs; the input embedding keeps only the rows of `token_ids`."""
    model = adapter.model
    prefix = adapter.layers_path + "."
    _materialize_buffers(model, [m for n, m in model.named_modules() if not n.startswith(prefix)])
    embed = model.get_input_embeddings()
    head = model.get_output_embeddings()
    for name, param in list(model.named_parameters()):
        if name.startswith(prefix) or (head is not None and param is head.weight and param is not embed.weight):
            continue  # layers are streamed; the head is not used by the capture
        owner, attr = _param_owner(model, name)
        if param is embed.weight:
            ids = torch.unique(token_ids)
            _keep_rows(embed, attr, checkpoint.rows(name, ids, dtype), ids, vocab_size=param.shape[0])
        else:
            owner._parameters[attr] = nn.Parameter(checkpoint.load(name, dtype), requires_grad=False)


def _keep_rows(embed: nn.Module, attr: str, rows: torch.Tensor, ids: torch.Tensor, vocab_size: int) -> None:
    """Make `embed` hold only the rows of token `ids`, with a pre-hook that maps token ids to those rows."""
    embed._parameters[attr] = nn.Parameter(rows, requires_grad=False)
    lookup = torch.zeros(vocab_size, dtype=torch.long)
    lookup[ids] = torch.arange(len(ids))
    embed.padding_idx = None  # only matters for gradients, and would index past the kept rows
    embed.register_forward_pre_hook(lambda _m, args: (lookup.to(args[0].device)[args[0]], *args[1:]))


class StreamedLayers(LayerStore):
    """Opens a layer by reading its tensors from the checkpoint; closing a pruned layer writes it as one shard."""

    def __init__(self, adapter: ModelAdapter, device: torch.device, checkpoint: Checkpoint, writer: ShardWriter,
                 dtype: torch.dtype, saved_dtype: torch.dtype) -> None:
        super().__init__(adapter, device)
        self.home = torch.device("cpu")
        self.checkpoint = checkpoint
        self.writer = writer
        self.dtype = dtype
        self.saved_dtype = saved_dtype
        self.parameters = 0
        self.zeros = 0

    def _prefix(self, index: int) -> str:
        return f"{self.adapter.layers_path}.{index}."

    def open(self, index: int) -> nn.Module:
        layer = self.adapter.layers[index]
        prefix = self._prefix(index)
        if all(prefix + n in self.checkpoint for n in layer.state_dict()):
            state = {n: self.checkpoint.load(prefix + n, self.dtype) for n in layer.state_dict()}
        else:  # stored in another layout (an MoE's per-expert matrices): converted as transformers loads them
            stored = {n: self.checkpoint.load(n, self.dtype) for n in self.checkpoint.entries if n.startswith(prefix)}
            state = {n[len(prefix):]: t for n, t in to_model_names(self.adapter.model, stored).items()}
        layer.to_empty(device="cpu")  # untouched, so it costs no memory before the assignment below
        _materialize_buffers(self.adapter.model, list(layer.modules()))
        layer.load_state_dict(state, assign=True)
        return layer.to(self.device)

    def close(self, index: int, layer: nn.Module, pruned: bool) -> None:
        if pruned:
            state = {self._prefix(index) + n: t.to("cpu", self.saved_dtype) for n, t in layer.state_dict().items()}
            self.writer.write(to_checkpoint_names(self.adapter.model, state))  # as transformers saves them
            for param in layer.parameters():
                self.parameters += param.numel()
                self.zeros += int((param == 0).sum())
        layer.to("meta")
        release_memory()

    def copy_rest(self) -> None:
        """Copy every tensor outside the decoder layers unchanged into the output."""
        prefix = self.adapter.layers_path + "."
        self.writer.copy(self.checkpoint, [n for n in self.checkpoint.entries if not n.startswith(prefix)])
