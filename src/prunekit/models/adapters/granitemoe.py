"""Granite-MoE (GraniteMoeForCausalLM): the Granite attention with its multipliers, and routed experts under
block_sparse_moe (router, experts) in every layer, routed by softmax over the top-k logits."""

from prunekit.models.adapters.base import ModelAdapter
from prunekit.models.adapters.llama import LLAMA_ATTENTION
from prunekit.models.groups import Experts


class GraniteMoeAdapter(ModelAdapter):
    model_types = ("granitemoe",)
    family = "Granite-MoE"
    attention = LLAMA_ATTENTION
    mlp = None
    experts = Experts("block_sparse_moe.experts", "block_sparse_moe.router", "num_local_experts")
