"""IBM Granite 3 (GraniteForCausalLM): the Llama layout, with embedding / residual / attention / logit multipliers
that pruning leaves alone. `attention_bias` and `mlp_bias` exist, as in Llama."""

from prunekit.models.adapters.base import ModelAdapter
from prunekit.models.adapters.llama import LLAMA_ATTENTION, LLAMA_MLP


class GraniteAdapter(ModelAdapter):
    model_types = ("granite",)
    family = "Granite"
    attention = LLAMA_ATTENTION
    mlp = LLAMA_MLP
