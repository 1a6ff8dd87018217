"""StableLM (StableLmForCausalLM; StableLM 2 and 3B-4E1T): LayerNorm decoder with partial rotary embeddings and
optional q/k bias (`use_qkv_bias`), per-head q/k LayerNorms (`qk_layernorm`) and a parallel residual."""

from dataclasses import replace

from prunekit.models.adapters.base import ModelAdapter
from prunekit.models.adapters.llama import LLAMA_ATTENTION, LLAMA_MLP


class StableLmAdapter(ModelAdapter):
    model_types = ("stablelm",)
    family = "StableLM"
    attention = None  # StableLmAttention's head size is hidden / heads: no fewer heads
    attention_paths = LLAMA_ATTENTION.paths
    mlp = replace(LLAMA_MLP, bias_field=None)  # no bias option
