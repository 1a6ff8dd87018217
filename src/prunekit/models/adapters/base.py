"""Where things are in a model family. Nothing outside the adapters names a module path such as `model.layers`.

An adapter is a thin view over a loaded model: the decoder layers, the module that runs embeddings and layers
(the "base model"), the head, and the groups of a decoder layer's linears that shrink together (attention heads and
MLP channels, see prunekit.models.groups), which also name the linears that weight pruning visits.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from prunekit.errors import PrunekitError
from prunekit.models.groups import (
    LINEAR_TYPES,
    AttentionHeads,
    ExpertMatrix,
    Experts,
    MlpChannels,
    Sizes,
    Vocabulary,
    weight_matrix,
)


class ModelAdapter:
    model_types: ClassVar[tuple[str, ...]] = ()
    family: ClassVar[str] = ""
    base_path: ClassVar[str] = "model"
    layers_path: ClassVar[str] = "model.layers"
    lm_head_path: ClassVar[str] = "lm_head"
    # None for a mixture-of-experts family whose layers have no dense MLP (Qwen2-MoE's shared expert is one).
    mlp: ClassVar[MlpChannels | None]
    experts: ClassVar[Experts | None] = None  # the routed experts of an MoE family
    # None when the family's config cannot express fewer heads (the head size is hidden / heads); then
    # `attention_paths` names the attention linears for weight pruning.
    attention: ClassVar[AttentionHeads | None]
    attention_paths: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        layer = self.layers[0]
        missing = [name for name in self.linear_names if not isinstance(_find(layer, name), LINEAR_TYPES)]
        if missing:
            raise PrunekitError(
                f"{type(model).__name__} does not have the layout the {self.family} adapter expects "
                f"(missing {', '.join(missing)}); this transformers version may have changed the architecture"
            )
        if self.experts and (_find(layer, self.experts.experts) is None or _find(layer, self.experts.router) is None):
            raise PrunekitError(
                f"{type(model).__name__} does not have the experts layout the {self.family} adapter expects "
                f"({self.experts.experts} and {self.experts.router}); this transformers version may have changed it"
            )

    @property
    def config(self) -> object:
        return self.model.config

    @property
    def layers(self) -> nn.ModuleList:
        return submodule(self.model, self.layers_path)

    @property
    def base_model(self) -> nn.Module:
        return submodule(self.model, self.base_path)

    @property
    def lm_head(self) -> nn.Linear:
        return submodule(self.model, self.lm_head_path)

    @property
    def linear_names(self) -> tuple[str, ...]:
        """The prunable linears of a decoder layer, relative to it, in forward order."""
        attention = self.attention.paths if self.attention else self.attention_paths
        return attention + (self.mlp.paths if self.mlp else ())

    def require_mlp(self) -> MlpChannels:
        """The dense MLP's channels; a one-line error for an MoE family that has none."""
        if self.mlp is None:
            raise PrunekitError(f"{self.config.model_type} has no dense MLP (its MLP is routed experts): remove "
                                "experts instead (--method reap, expert-frequency, expert-search or expert-merge)")
        return self.mlp

    def require_experts(self) -> Experts:
        """The routed experts; a one-line error for a dense family."""
        if self.experts is None:
            raise PrunekitError(f"{self.config.model_type} is not a mixture-of-experts model: expert methods need "
                                "routed experts; prune its MLP width (--part mlp) or blocks instead")
        return self.experts

    @property
    def num_experts(self) -> int:
        return int(getattr(self.config, self.require_experts().count_field))

    @property
    def top_k(self) -> int:
        return int(getattr(self.config, self.require_experts().top_k_field))

    def expert_matrices(self, layer: nn.Module) -> dict[str, ExpertMatrix]:
        """Every expert's matrices in one decoder layer, named like linears ('mlp.experts.3.down_proj'); empty for
        a dense family."""
        if self.experts is None:
            return {}
        experts = submodule(layer, self.experts.experts)
        return {f"{self.experts.experts}.{e}.{name}": ExpertMatrix(weight)
                for e in range(experts.gate_up_proj.shape[0])
                for name, weight in self.experts.matrices(experts, e).items()}

    def moe(self, layer: nn.Module) -> tuple[nn.Module, nn.Module]:
        """(experts module, router) of one decoder layer."""
        experts = self.require_experts()
        return submodule(layer, experts.experts), submodule(layer, experts.router)

    @property
    def heads_refusal(self) -> str | None:
        """Why heads cannot be removed from this model (one line naming what works instead), or None."""
        if self.attention is None or self.attention.head_dim_field is None:
            return (f"{self.config.model_type} derives its head size from hidden_size / heads, so stock transformers "
                    "cannot load it with fewer heads: prune the MLP width or whole blocks instead")
        return None

    @property
    def num_heads(self) -> int:
        field = self.attention.heads_field if self.attention else "num_attention_heads"
        return int(getattr(self.config, field))

    @property
    def num_kv_heads(self) -> int:
        field = self.attention.kv_heads_field if self.attention else None
        return int(getattr(self.config, field)) if field else self.num_heads

    @property
    def grouped_query(self) -> bool:
        """Fewer key/value heads than query heads (GQA): query heads go a key/value group's worth at a time (the
        width part "heads", keys and values kept); otherwise whole heads with their keys and values ("kv-heads")."""
        return self.num_kv_heads < self.num_heads

    @property
    def head_part(self) -> str:
        """The width stage's part that removes query heads from this attention."""
        return "heads" if self.grouped_query else "kv-heads"

    @property
    def head_unit(self) -> int:
        """Query heads removed at a time: one from each key/value group (GQA), or one."""
        return self.num_kv_heads if self.grouped_query else 1

    @property
    def head_dim(self) -> int:
        return self.sizes().head_dim

    @property
    def mlp_width(self) -> int:
        self.require_mlp()
        return self.sizes().channels

    @property
    def _attention_output(self) -> str:
        return self.attention.output if self.attention else self.attention_paths[-1]

    @property
    def hidden_size(self) -> int:
        return weight_matrix(submodule(self.layers[0], self._attention_output)).shape[0]

    def sizes(self, layer: nn.Module | None = None) -> Sizes:
        """Head count and size and MLP width (0 without a dense MLP), as `layer` (default: the first) has them."""
        layer = self.layers[0] if layer is None else layer
        attention_width = weight_matrix(submodule(layer, self._attention_output)).shape[1]
        channels = weight_matrix(submodule(layer, self.mlp.output)).shape[1] if self.mlp else 0
        return Sizes(self.num_heads, self.num_kv_heads, attention_width // self.num_heads, channels)

    @property
    def vocabulary(self) -> Vocabulary:
        """The token rows of the embedding and the head, found through transformers' own accessors."""
        paths = {id(module): name for name, module in self.model.named_modules()}
        return Vocabulary(paths[id(self.model.get_input_embeddings())], paths[id(self.model.get_output_embeddings())])

    def linears(self, layer: nn.Module) -> dict[str, nn.Module]:
        """The prunable linears of one decoder layer, by name relative to the layer, in forward order."""
        return {name: submodule(layer, name) for name in self.linear_names}


def submodule(root: nn.Module, path: str) -> nn.Module:
    module = root
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _find(root: nn.Module, path: str) -> nn.Module | None:
    try:
        return submodule(root, path)
    except AttributeError:
        return None
