"""OPT (Meta, 2022): the older pre-LayerNorm decoder with learned positions and fc1/fc2 MLPs."""

from prunekit.models.adapters.base import ModelAdapter


class OPTAdapter(ModelAdapter):
    model_types = ("opt",)
    family = "OPT"
    base_path = "model.decoder"
    layers_path = "model.decoder.layers"
    attention_linears = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")
    mlp_linears = ("fc1", "fc2")
    intermediate_size_field = "ffn_dim"
    kv_heads_field = None
    head_dim_field = None  # OPT derives the head size from hidden_size / heads
    attention_bias_field = "enable_bias"  # one flag for every linear (on by default)
    mlp_bias_field = "enable_bias"
