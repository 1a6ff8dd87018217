"""StableLM (StableLmForCausalLM; StableLM 2 and 3B-4E1T): LayerNorm decoder with partial rotary embeddings and
optional q/k bias (`use_qkv_bias`), per-head q/k LayerNorms (`qk_layernorm`) and a parallel residual."""

from prunekit.models.adapters.base import ModelAdapter


class StableLmAdapter(ModelAdapter):
    model_types = ("stablelm",)
    family = "StableLM"
    attention_linears = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
    mlp_linears = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    # StableLmAttention computes head_dim = hidden_size / heads and o_proj is hidden x hidden: no fewer heads.
    head_dim_field = None
    attention_bias_field = None  # use_qkv_bias covers q, k, v only; o_proj never has a bias
    mlp_bias_field = None
