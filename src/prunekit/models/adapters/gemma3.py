"""Gemma 3 text models (Gemma3ForCausalLM): Llama-like projections, sliding and global attention layers."""

from prunekit.models.adapters.base import ModelAdapter


class Gemma3Adapter(ModelAdapter):
    model_types = ("gemma3_text",)
    family = "Gemma 3 (text)"
    attention_linears = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
    mlp_linears = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
