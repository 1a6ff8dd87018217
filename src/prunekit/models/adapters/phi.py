"""Phi (phi-1, phi-1.5, phi-2; PhiForCausalLM): attention and MLP in parallel after one LayerNorm, partial rotary
embeddings, a bias on every linear, and a non-gated fc1/fc2 MLP. The head size is read from `head_dim` when the
config has one (hidden / heads otherwise), so heads can be removed."""

from prunekit.models.adapters.base import ModelAdapter
from prunekit.models.groups import plain_mlp, separate_attention


class PhiAdapter(ModelAdapter):
    model_types = ("phi",)
    family = "Phi (phi-1, phi-1.5, phi-2)"
    # every linear has a bias already, so FLAP's compensation needs no config flag
    attention = separate_attention("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.dense",
                                   bias_field=None)
    mlp = plain_mlp("mlp.fc1", "mlp.fc2", bias_field=None)
