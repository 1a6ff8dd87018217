"""OLMoE (OlmoeForCausalLM): Llama-like projections with RMSNorms over the whole query and key projections (as
OLMo 2) and routed experts in every layer (mlp.gate, mlp.experts)."""

from prunekit.models.adapters.base import ModelAdapter
from prunekit.models.adapters.llama import LLAMA_ATTENTION
from prunekit.models.adapters.olmo2 import Olmo2Adapter
from prunekit.models.groups import Experts


class OlmoeAdapter(ModelAdapter):
    model_types = ("olmoe",)
    family = "OLMoE"
    attention = LLAMA_ATTENTION
    mlp = None
    experts = Experts("mlp.experts", "mlp.gate", "num_experts")
    heads_refusal = Olmo2Adapter.heads_refusal.replace("olmo2", "olmoe")  # type: ignore[assignment]
