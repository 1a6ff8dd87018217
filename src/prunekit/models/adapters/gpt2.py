"""GPT-2 (GPT2LMHeadModel): Conv1D linears, which store their weight as (inputs, outputs), a fused c_attn
[queries | keys | values], the head size hidden / heads (so heads cannot go: MLP width and whole blocks can), a bias
on every linear, and the MLP width in `n_inner` (None means 4 x hidden)."""

from prunekit.models.adapters.base import ModelAdapter
from prunekit.models.groups import plain_mlp


class GPT2Adapter(ModelAdapter):
    model_types = ("gpt2",)
    family = "GPT-2"
    base_path = "transformer"
    layers_path = "transformer.h"
    attention = None
    attention_paths = ("attn.c_attn", "attn.c_proj")
    mlp = plain_mlp("mlp.c_fc", "mlp.c_proj", width_field="n_inner", bias_field=None)
