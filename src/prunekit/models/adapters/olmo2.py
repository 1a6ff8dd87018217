"""OLMo 2 (Olmo2ForCausalLM): Llama-like projections with post-norms, and RMSNorms over the whole query and key
projections (q_norm: heads x head size, k_norm: key/value heads x head size). The MLP has no bias option."""

from dataclasses import replace

from prunekit.models.adapters.base import ModelAdapter
from prunekit.models.adapters.llama import LLAMA_ATTENTION, LLAMA_MLP


class Olmo2Adapter(ModelAdapter):
    model_types = ("olmo2",)
    family = "OLMo 2"
    attention = LLAMA_ATTENTION
    mlp = replace(LLAMA_MLP, bias_field=None)  # no bias option
    heads_refusal = (  # type: ignore[assignment]  # a fixed answer in place of the base class's property
        "olmo2 normalises queries and keys over all heads at once (self_attn.q_norm / k_norm weights are sized by the "
        "head count), which prunekit's head removal does not slice: prune the MLP width (part mlp) or whole blocks "
        "instead"
    )
