"""Gemma 3 text models (Gemma3ForCausalLM): Llama-like projections, sliding and global attention layers."""

from prunekit.models.adapters.base import ModelAdapter
from prunekit.models.adapters.llama import LLAMA_ATTENTION, LLAMA_MLP


class Gemma3Adapter(ModelAdapter):
    model_types = ("gemma3_text",)
    family = "Gemma 3 (text)"
    attention = LLAMA_ATTENTION
    mlp = LLAMA_MLP
