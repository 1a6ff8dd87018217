"""OLMo 2 (Olmo2ForCausalLM): Llama-like projections with post-norms, and RMSNorms over the whole query and key
projections (q_norm: heads x head size, k_norm: key/value heads x head size). The MLP has no bias option."""

from prunekit.models.adapters.base import ModelAdapter


class Olmo2Adapter(ModelAdapter):
    model_types = ("olmo2",)
    family = "OLMo 2"
    attention_linears = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
    mlp_linears = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    mlp_bias_field = None  # Olmo2MLP's linears never have a bias
    heads_refusal = (
        "olmo2 normalises queries and keys over all heads at once (self_attn.q_norm / k_norm weights are sized by the "
        "head count), which prunekit's head removal does not slice: prune the MLP width (part mlp) or whole blocks "
        "instead"
    )
