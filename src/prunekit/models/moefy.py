"""Where a dense family's converted mixture-of-experts goes: the stock MoE family with the same attention, its
config (every field the two share copied over, the experts' fields set) and an empty MoE block of it."""

from __future__ import annotations

import copy
import warnings

from torch import nn
from transformers import AutoConfig, PretrainedConfig
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

from prunekit.errors import PrunekitError

# dense model type -> the MoE family whose attention and norms are the same
TARGETS = {"llama": "mixtral", "mistral": "mixtral", "qwen2": "qwen2_moe", "qwen3": "qwen3_moe"}
BLOCKS = {"mixtral": MixtralSparseMoeBlock, "qwen2_moe": Qwen2MoeSparseMoeBlock, "qwen3_moe": Qwen3MoeSparseMoeBlock}
_NOT_COPIED = {"model_type", "architectures", "transformers_version", "auto_map", "_name_or_path",
               "intermediate_size"}


def target_family(dense: PretrainedConfig) -> str:
    """The MoE model type a dense config converts into; a one-line error for a family without one."""
    target = TARGETS.get(dense.model_type)
    if target is None:
        families = ", ".join(sorted(set(TARGETS.values())))
        raise PrunekitError(f"moefy converts {', '.join(TARGETS)} models (into {families}); {dense.model_type} has "
                            "no stock MoE family with the same attention")
    for flag in ("attention_bias", "mlp_bias"):
        if target == "mixtral" and getattr(dense, flag, False):
            raise PrunekitError(f"moefy: this {dense.model_type} model has {flag} on, which Mixtral cannot express")
    return target


def moe_config(dense: PretrainedConfig, experts: int, top_k: int, width: int) -> PretrainedConfig:
    """The config of the converted model: `experts` experts of `width` channels, `top_k` per token, gate weights
    renormalised over the top k, no shared expert, every layer MoE."""
    target = target_family(dense)
    config_class = type(AutoConfig.for_model(target))
    defaults = config_class()
    shared = {k: v for k, v in dense.to_dict().items() if k not in _NOT_COPIED and hasattr(defaults, k)}
    fields = dict(num_experts_per_tok=top_k, router_jitter_noise=0.0, output_router_logits=False)
    if target == "mixtral":
        fields |= dict(num_local_experts=experts, intermediate_size=width)
    else:
        fields |= dict(num_experts=experts, moe_intermediate_size=width, norm_topk_prob=True, decoder_sparse_step=1,
                       mlp_only_layers=[], intermediate_size=width)
        if target == "qwen2_moe":
            fields |= dict(shared_expert_intermediate_size=0)
    return config_class(**{**shared, **{k: v for k, v in fields.items() if hasattr(defaults, k)}})


def moe_block(config: PretrainedConfig) -> nn.Module:
    """An MoE block of the config's family (weights uninitialised: the caller writes them all)."""
    config = copy.copy(config)
    config._experts_implementation = "eager"  # a block built outside its model dispatches like the model's default
    with warnings.catch_warnings():  # Qwen2-MoE's empty shared expert: initialising a 0-element tensor warns
        warnings.simplefilter("ignore", UserWarning)
        block = BLOCKS[config.model_type](config)
    shared_gate = getattr(block, "shared_expert_gate", None)
    if shared_gate is not None:  # Qwen2-MoE: the shared expert has no channels; its gate is zero
        nn.init.zeros_(shared_gate.weight)
    return block
