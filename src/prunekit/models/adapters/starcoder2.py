"""StarCoder2 (Starcoder2ForCausalLM): Llama-like attention, a non-gated MLP (mlp.c_fc, mlp.c_proj) and one flag,
`use_bias` (on by default), for the bias of every linear."""

from prunekit.models.adapters.base import ModelAdapter


class Starcoder2Adapter(ModelAdapter):
    model_types = ("starcoder2",)
    family = "StarCoder2"
    attention_linears = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
    mlp_linears = ("mlp.c_fc", "mlp.c_proj")
    attention_bias_field = "use_bias"
    mlp_bias_field = "use_bias"
