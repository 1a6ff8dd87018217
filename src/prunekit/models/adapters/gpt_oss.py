"""GPT-OSS (GptOssForCausalLM): attention with biases and one learned sink logit per head, alternating sliding and
full attention, and routed experts in every layer with a different layout: mlp.router (with a bias) picks the top
k by logit, and mlp.experts stores gate_up_proj as [experts, hidden, 2 x width] with gate and up interleaved, plus
biases. Expert pruning only indexes the leading expert dimension, so the layout does not matter to it."""

from prunekit.models.adapters.base import ModelAdapter
from prunekit.models.adapters.llama import LLAMA_ATTENTION
from prunekit.models.groups import Experts


class GptOssAdapter(ModelAdapter):
    model_types = ("gpt_oss",)
    family = "GPT-OSS"
    attention = LLAMA_ATTENTION
    mlp = None
    experts = Experts("mlp.experts", "mlp.router", "num_local_experts", layout="transposed")
    heads_refusal = ("gpt_oss keeps one attention-sink logit per head (self_attn.sinks), which prunekit's head "  # type: ignore[assignment]
                     "removal does not slice: prune experts or whole blocks instead")
