"""OPT (Meta, 2022): the older pre-LayerNorm decoder with learned positions and fc1/fc2 MLPs."""

from prunekit.models.adapters.base import ModelAdapter
from prunekit.models.groups import plain_mlp


class OPTAdapter(ModelAdapter):
    model_types = ("opt",)
    family = "OPT"
    base_path = "model.decoder"
    layers_path = "model.decoder.layers"
    attention = None  # OPT derives the head size from hidden_size / heads
    attention_paths = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")
    mlp = plain_mlp("fc1", "fc2", width_field="ffn_dim", bias_field="enable_bias")  # one flag for every linear
