"""Cohere Command R (CohereForCausalLM): one LayerNorm feeding attention and MLP in parallel, tied embeddings with
a logit scale; with `use_qk_norm` (Command R+) per-head q/k LayerNorms. The MLP has no bias option."""

from dataclasses import replace

from prunekit.models.adapters.base import ModelAdapter
from prunekit.models.adapters.llama import LLAMA_ATTENTION, LLAMA_MLP


class CohereAdapter(ModelAdapter):
    model_types = ("cohere",)
    family = "Cohere (Command R)"
    attention = LLAMA_ATTENTION
    mlp = replace(LLAMA_MLP, bias_field=None)  # no bias option

    @property
    def heads_refusal(self) -> str | None:
        if getattr(self.config, "use_qk_norm", False):
            return ("cohere with use_qk_norm has per-head self_attn.q_norm / k_norm weights, which prunekit's head "
                    "removal does not slice: prune the MLP width (part mlp) or whole blocks instead")
        return None
