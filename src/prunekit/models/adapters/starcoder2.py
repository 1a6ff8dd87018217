"""StarCoder2 (Starcoder2ForCausalLM): Llama-like attention, a non-gated MLP (mlp.c_fc, mlp.c_proj) and one flag,
`use_bias` (on by default), for the bias of every linear."""

from dataclasses import replace

from prunekit.models.adapters.base import ModelAdapter
from prunekit.models.adapters.llama import LLAMA_ATTENTION
from prunekit.models.groups import plain_mlp


class Starcoder2Adapter(ModelAdapter):
    model_types = ("starcoder2",)
    family = "StarCoder2"
    attention = replace(LLAMA_ATTENTION, bias_field="use_bias")
    mlp = plain_mlp("mlp.c_fc", "mlp.c_proj", bias_field="use_bias")
