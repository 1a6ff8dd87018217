"""Mixtral (MixtralForCausalLM): Mistral's attention, and every layer's MLP a sparse block of routed experts
(mlp.gate routes, mlp.experts holds them fused: gate_up_proj [experts, 2 x width, hidden], down_proj)."""

from dataclasses import replace

from prunekit.models.adapters.base import ModelAdapter
from prunekit.models.adapters.llama import LLAMA_ATTENTION
from prunekit.models.groups import Experts


class MixtralAdapter(ModelAdapter):
    model_types = ("mixtral",)
    family = "Mixtral"
    attention = replace(LLAMA_ATTENTION, bias_field=None)  # no attention_bias option
    mlp = None
    experts = Experts("mlp.experts", "mlp.gate", "num_local_experts")
