"""Dense-to-MoE conversion, one decoder layer at a time (methods/moefy.py has the math).

Each layer sees the calibration tokens as the already converted layers before it leave them. Its MLP's input and
intermediate activation (the output projection's input) are captured; the channels are split into experts, the
router is fitted and scaled, and the layer's MLP is replaced in place by a stock MoE block holding them. The
converted layers keep the dense layers' parameter names for attention and norms, so at the end the MoE family's
model is built from its config and takes the whole state dict as it is.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from prunekit.engine.experts import CHUNK, sample
from prunekit.engine.walker import LayerStore, capture_on_device, forward_all, walk_layers
from prunekit.errors import PrunekitError
from prunekit.methods import get_method
from prunekit.methods.moefy import fit_router, router_scale
from prunekit.models import surgery
from prunekit.models.adapters.base import ModelAdapter, submodule
from prunekit.models.groups import weight_matrix
from prunekit.models.moefy import moe_block, moe_config, target_family

ACTIVATION_SAMPLE = 4096  # tokens whose activations describe each channel for the clustering


def check_split(adapter: ModelAdapter, experts: int, top_k: int) -> int:
    """Channels per expert; one-line errors for families and counts it cannot convert."""
    target_family(adapter.config)
    mlp = adapter.require_mlp()
    if len(mlp.inputs) != 2 or len({r.path for r in mlp.inputs}) != 2:
        raise PrunekitError(f"moefy splits gated MLPs with separate gate and up projections; {adapter.family} "
                            "has another layout")
    width = adapter.mlp_width
    if experts < 2 or width % experts:
        raise PrunekitError(f"cannot split {width} MLP channels into {experts} equal experts: give an expert count "
                            f"of at least 2 that divides {width}")
    if not 0 < top_k <= experts:
        raise PrunekitError(f"--top-k {top_k}: each token uses from 1 to {experts} experts")
    return width // experts


def _capture(layer: nn.Module, visit_inputs: list, calls: list, mlp: nn.Module, down: nn.Module
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(MLP input, output projection input) on every calibration token, [tokens, features]."""
    inputs: list[torch.Tensor] = []
    activations: list[torch.Tensor] = []

    def grab(sink: list[torch.Tensor]) -> Callable:
        def hook(_module: nn.Module, args: tuple) -> None:
            sink.append(args[0].detach().reshape(-1, args[0].shape[-1]))
        return hook

    handles = [mlp.register_forward_pre_hook(grab(inputs)), down.register_forward_pre_hook(grab(activations))]
    try:
        forward_all(layer, visit_inputs, calls)
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat(inputs), torch.cat(activations)


def convert_layer(x: torch.Tensor, activations: torch.Tensor, gate: torch.Tensor, up: torch.Tensor,
                  down: torch.Tensor, channels: list[torch.Tensor], top_k: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gate_up_proj [experts, 2 x width, hidden], down_proj [experts, hidden, width], router [experts, hidden])
    for one MLP: its (outputs, inputs) gate, up and down matrices, the channels of each expert, and the
    calibration tokens' MLP inputs x and intermediate activations."""
    experts = len(channels)
    xtx = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
    xty = torch.zeros(x.shape[1], experts, dtype=torch.float64, device=x.device)
    for xs, acts in zip(x.split(CHUNK), activations.split(CHUNK), strict=True):  # float32 products, summed in float64
        xs = xs.float()
        share = torch.stack([(acts[:, c].float() @ down[:, c].T.float()).norm(dim=1) for c in channels], dim=1)
        xtx += xs.T @ xs
        xty += xs.T @ share
    router = fit_router(xtx.cpu(), xty.cpu()).to(x.device)
    logits = torch.cat([xs.float() @ router.T.float() for xs in x.split(CHUNK)])
    router = router * router_scale(logits)
    gate_up = torch.stack([torch.cat([gate[c], up[c]]) for c in channels])
    down_proj = torch.stack([down[:, c] * top_k for c in channels])
    return gate_up, down_proj, router.to(gate.dtype)


@torch.no_grad()
def moefy(adapter: ModelAdapter, experts: int, top_k: int, windows: torch.Tensor, device: torch.device,
          batch_size: int, seed: int = 0, step: Callable[[str], None] | None = None) -> tuple[nn.Module, dict]:
    """The converted model (a new module of the MoE family; `adapter.model` is consumed) and what was done."""
    step = step or (lambda _message: None)
    width = check_split(adapter, experts, top_k)
    dense = adapter.model
    config = moe_config(dense.config, experts, top_k, width)
    mlp_group = adapter.require_mlp()
    mlp_path = mlp_group.output.rpartition(".")[0]
    split = get_method("moefy", "conversion").function
    store = LayerStore(adapter, device)
    captured = capture_on_device(adapter, windows, batch_size, device, store.home)
    for visit in walk_layers(adapter, captured, store, final=True):
        step(f"moefy: layer {visit.index + 1} of {len(adapter.layers)}")
        layer = visit.layer
        down = submodule(layer, mlp_group.output)
        x, activations = _capture(layer, visit.inputs, visit.calls, submodule(layer, mlp_path), down)
        channels = split(experts, sample(activations, ACTIVATION_SAMPLE).float().cpu(), seed=seed)
        gate, up = (weight_matrix(submodule(layer, r.path)).detach() for r in mlp_group.inputs)
        gate_up, down_proj, router = convert_layer(x, activations, gate, up, weight_matrix(down).detach(),
                                                   [c.to(x.device) for c in channels], top_k)
        block = moe_block(config).to(device=x.device, dtype=gate.dtype)
        block.experts.gate_up_proj.copy_(gate_up)
        block.experts.down_proj.copy_(down_proj)
        block.gate.weight.copy_(router)
        surgery.set_submodule(layer, mlp_path, block)
    with warnings.catch_warnings():  # Qwen2-MoE's empty shared expert: initialising a 0-element tensor warns
        warnings.simplefilter("ignore", UserWarning)
        converted = AutoModelForCausalLM.from_config(config, dtype=next(dense.parameters()).dtype)
    missing, unexpected = converted.load_state_dict(dense.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise PrunekitError(f"moefy: the {config.model_type} layout does not match the converted layers "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); this transformers version may "
                            "have changed it")
    converted.tie_weights()
    converted.generation_config = dense.generation_config
    converted.eval()
    active = width * 3 * adapter.hidden_size * top_k * len(adapter.layers)
    return converted, {"family": config.model_type, "experts": experts, "top_k": top_k, "expert_width": width,
                       "active_expert_parameters": active,
                       "dense_mlp_parameters": width * experts * 3 * adapter.hidden_size * len(adapter.layers)}
