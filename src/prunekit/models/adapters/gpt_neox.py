"""GPT-NeoX (GPTNeoXForCausalLM; Pythia, GPT-NeoX-20B): attention and MLP in parallel residual branches, one fused
query_key_value matrix interleaved per head, the head size hidden / heads (so heads cannot go: MLP width and whole
blocks can), a bias on every MLP linear."""

from prunekit.models.adapters.base import ModelAdapter
from prunekit.models.groups import plain_mlp


class GPTNeoXAdapter(ModelAdapter):
    model_types = ("gpt_neox",)
    family = "GPT-NeoX (Pythia)"
    base_path = "gpt_neox"
    layers_path = "gpt_neox.layers"
    lm_head_path = "embed_out"
    attention = None
    attention_paths = ("attention.query_key_value", "attention.dense")
    mlp = plain_mlp("mlp.dense_h_to_4h", "mlp.dense_4h_to_h", bias_field=None)
