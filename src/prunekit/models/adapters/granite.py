"""IBM Granite 3 (GraniteForCausalLM): the Llama layout, with embedding / residual / attention / logit multipliers
that pruning leaves alone. `attention_bias` and `mlp_bias` exist, as in Llama."""

from prunekit.models.adapters.base import ModelAdapter


class GraniteAdapter(ModelAdapter):
    model_types = ("granite",)
    family = "Granite"
    attention_linears = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
    mlp_linears = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
