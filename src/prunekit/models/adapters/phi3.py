"""Phi-3 (Phi3ForCausalLM; Phi-3 and Phi-3.5 mini, Phi-4 mini): the Llama layout with fused projections, qkv_proj
holding [queries | keys | values] and gate_up_proj holding [gate | up]. No linear can have a bias."""

from prunekit.models.adapters.base import ModelAdapter
from prunekit.models.groups import fused_attention, fused_gated_mlp


class Phi3Adapter(ModelAdapter):
    model_types = ("phi3",)
    family = "Phi-3 (Phi-3, Phi-3.5, Phi-4 mini)"
    attention = fused_attention("self_attn.qkv_proj", "self_attn.o_proj", bias_field=None)
    mlp = fused_gated_mlp("mlp.gate_up_proj", "mlp.down_proj", bias_field=None)
