"""Cohere Command R (CohereForCausalLM): one LayerNorm feeding attention and MLP in parallel, tied embeddings with
a logit scale; with `use_qk_norm` (Command R+) per-head q/k LayerNorms. The MLP has no bias option."""

from prunekit.models.adapters.base import ModelAdapter


class CohereAdapter(ModelAdapter):
    model_types = ("cohere",)
    family = "Cohere (Command R)"
    attention_linears = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
    mlp_linears = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    mlp_bias_field = None  # CohereMLP's linears never have a bias

    @property
    def heads_refusal(self) -> str | None:
        if getattr(self.config, "use_qk_norm", False):
            return ("cohere with use_qk_norm has per-head self_attn.q_norm / k_norm weights, which prunekit's head "
                    "removal does not slice: prune the MLP width (part mlp) or whole blocks instead")
        return None
