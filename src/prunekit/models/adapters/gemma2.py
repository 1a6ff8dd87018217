"""Gemma 2 (Gemma2ForCausalLM): Llama-like projections with extra pre/post norms; sliding and global attention
layers listed per layer in `layer_types`, which depth pruning keeps in step. The MLP has no bias option."""

from prunekit.models.adapters.base import ModelAdapter


class Gemma2Adapter(ModelAdapter):
    model_types = ("gemma2",)
    family = "Gemma 2"
    attention_linears = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
    mlp_linears = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    mlp_bias_field = None  # Gemma2MLP's linears never have a bias
