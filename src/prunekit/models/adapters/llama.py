"""The Llama family: Llama, Mistral, Qwen2, Qwen3 and SmolLM (all share LlamaDecoderLayer's layout)."""

from prunekit.models.adapters.base import ModelAdapter
from prunekit.models.groups import gated_mlp, separate_attention

LLAMA_ATTENTION = separate_attention("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
LLAMA_MLP = gated_mlp("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


class LlamaAdapter(ModelAdapter):
    model_types = ("llama", "mistral", "qwen2", "qwen3")
    family = "Llama (Llama, Mistral, Qwen2, Qwen3, SmolLM)"
    attention = LLAMA_ATTENTION
    mlp = LLAMA_MLP
