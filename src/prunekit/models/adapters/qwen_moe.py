"""Qwen2-MoE and Qwen3-MoE: routed experts in every layer (mlp.gate, mlp.experts, fused as transformers stores
them). Qwen2-MoE adds an always-on shared expert (a gated MLP behind a sigmoid gate), which is the family's dense
MLP here: width pruning shrinks it and writes shared_expert_intermediate_size. Qwen3-MoE's attention is Qwen3's
(per-head q_norm / k_norm). Checkpoints that mix dense and MoE layers (mlp_only_layers, decoder_sparse_step > 1)
are refused."""

from dataclasses import replace

from torch import nn

from prunekit.errors import PrunekitError
from prunekit.models.adapters.base import ModelAdapter
from prunekit.models.adapters.llama import LLAMA_ATTENTION
from prunekit.models.groups import Experts, gated_mlp


class _AllLayersMoe(ModelAdapter):
    def __init__(self, model: nn.Module) -> None:
        config = model.config
        if getattr(config, "mlp_only_layers", None) or getattr(config, "decoder_sparse_step", 1) != 1:
            raise PrunekitError(f"{config.model_type}: this checkpoint mixes dense and MoE layers (mlp_only_layers or "
                                "decoder_sparse_step > 1), which prunekit does not prune yet")
        super().__init__(model)


class Qwen2MoeAdapter(_AllLayersMoe):
    model_types = ("qwen2_moe",)
    family = "Qwen2-MoE"
    attention = replace(LLAMA_ATTENTION, bias_field=None)  # qkv_bias gives q, k, v biases; o_proj never has one
    mlp = gated_mlp("mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj", "mlp.shared_expert.down_proj",
                    width_field="shared_expert_intermediate_size", bias_field=None)
    experts = Experts("mlp.experts", "mlp.gate", "num_experts")


class Qwen3MoeAdapter(_AllLayersMoe):
    model_types = ("qwen3_moe",)
    family = "Qwen3-MoE"
    attention = LLAMA_ATTENTION
    mlp = None
    experts = Experts("mlp.experts", "mlp.gate", "num_experts")
