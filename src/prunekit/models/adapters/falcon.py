"""Falcon (FalconForCausalLM): one fused query_key_value matrix (multi-query, grouped or per-head interleaved,
depending on the config), the head size hidden / heads (so heads cannot go: MLP width and whole blocks can), and one
config flag, `bias`, for the bias of every linear."""

from prunekit.models.adapters.base import ModelAdapter
from prunekit.models.groups import plain_mlp


class FalconAdapter(ModelAdapter):
    model_types = ("falcon",)
    family = "Falcon"
    base_path = "transformer"
    layers_path = "transformer.h"
    attention = None
    attention_paths = ("self_attention.query_key_value", "self_attention.dense")
    mlp = plain_mlp("mlp.dense_h_to_4h", "mlp.dense_4h_to_h", width_field="ffn_hidden_size", bias_field="bias")
