"""Gemma 2 (Gemma2ForCausalLM): Llama-like projections with extra pre/post norms; sliding and global attention
layers listed per layer in `layer_types`, which depth pruning keeps in step. The MLP has no bias option."""

from dataclasses import replace

from prunekit.models.adapters.base import ModelAdapter
from prunekit.models.adapters.llama import LLAMA_ATTENTION, LLAMA_MLP


class Gemma2Adapter(ModelAdapter):
    model_types = ("gemma2",)
    family = "Gemma 2"
    attention = LLAMA_ATTENTION
    mlp = replace(LLAMA_MLP, bias_field=None)  # no bias option
