"""GPTBigCode (GPTBigCodeForCausalLM; StarCoder 1, SantaCoder): GPT-2's layout with nn.Linear, multi-query
attention fused into c_attn [queries | key | value], the head size hidden / heads (so heads cannot go: MLP width and
whole blocks can), a bias on every linear, and the MLP width in `n_inner` (None means 4 x hidden)."""

from prunekit.models.adapters.base import ModelAdapter
from prunekit.models.groups import plain_mlp


class GPTBigCodeAdapter(ModelAdapter):
    model_types = ("gpt_bigcode",)
    family = "GPTBigCode (StarCoder 1, SantaCoder)"
    base_path = "transformer"
    layers_path = "transformer.h"
    attention = None
    attention_paths = ("attn.c_attn", "attn.c_proj")
    mlp = plain_mlp("mlp.c_fc", "mlp.c_proj", width_field="n_inner", bias_field=None)
