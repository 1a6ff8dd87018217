"""Phi (phi-1, phi-1.5, phi-2; PhiForCausalLM): attention and MLP in parallel after one LayerNorm, partial rotary
embeddings, a bias on every linear, and a non-gated fc1/fc2 MLP. The head size is read from `head_dim` when the
config has one (hidden / heads otherwise), so heads can be removed."""

from prunekit.models.adapters.base import ModelAdapter


class PhiAdapter(ModelAdapter):
    model_types = ("phi",)
    family = "Phi (phi-1, phi-1.5, phi-2)"
    attention_linears = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.dense")
    mlp_linears = ("mlp.fc1", "mlp.fc2")
    attention_bias_field = None  # every linear has a bias already: FLAP's compensation needs no flag
    mlp_bias_field = None
