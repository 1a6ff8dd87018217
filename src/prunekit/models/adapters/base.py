"""Where things are in a model family. Nothing outside the adapters names a module path such as `model.layers`.

An adapter is a thin view over a loaded model: the decoder layers, the module that runs embeddings and layers
(the "base model"), the head, and which linears of a layer belong to attention and to the MLP.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from prunekit.errors import PrunekitError


class ModelAdapter:
    model_types: ClassVar[tuple[str, ...]] = ()
    family: ClassVar[str] = ""
    base_path: ClassVar[str] = "model"
    layers_path: ClassVar[str] = "model.layers"
    lm_head_path: ClassVar[str] = "lm_head"
    attention_linears: ClassVar[tuple[str, ...]] = ()  # relative to a decoder layer, in forward order: q, k, v, out
    mlp_linears: ClassVar[tuple[str, ...]] = ()  # the input projections (gate, up), then the output one (down)
    # Config fields that structured pruning rewrites. `kv_heads_field` None: no grouped-query attention; with
    # `head_dim_field` None the head size is hidden/heads, so heads cannot be removed without changing the width.
    intermediate_size_field: ClassVar[str] = "intermediate_size"
    heads_field: ClassVar[str] = "num_attention_heads"
    kv_heads_field: ClassVar[str | None] = "num_key_value_heads"
    head_dim_field: ClassVar[str | None] = "head_dim"
    # Config flags that give the output projections a bias (FLAP's compensation needs one); None: no such option.
    attention_bias_field: ClassVar[str | None] = "attention_bias"
    mlp_bias_field: ClassVar[str | None] = "mlp_bias"
    # Why heads cannot be removed from this model (one line naming what works instead), or None: set by adapters
    # whose layers hold weights sized by the head count that surgery does not slice (per-head q/k norms).
    heads_refusal: ClassVar[str | None] = None

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        layer = self.layers[0]
        missing = [name for name in self.linear_names if not isinstance(submodule(layer, name), nn.Linear)]
        if missing:
            raise PrunekitError(
                f"{type(model).__name__} does not have the layout the {self.family} adapter expects "
                f"(missing {', '.join(missing)}); this transformers version may have changed the architecture"
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
        return self.attention_linears + self.mlp_linears

    @property
    def num_heads(self) -> int:
        return int(getattr(self.config, self.heads_field))

    @property
    def num_kv_heads(self) -> int:
        return int(getattr(self.config, self.kv_heads_field)) if self.kv_heads_field else self.num_heads

    @property
    def head_dim(self) -> int:
        layer = self.layers[0]
        return submodule(layer, self.attention_linears[0]).out_features // self.num_heads

    def linears(self, layer: nn.Module) -> dict[str, nn.Linear]:
        """The prunable linears of one decoder layer, by name relative to the layer, in forward order."""
        return {name: submodule(layer, name) for name in self.linear_names}


def submodule(root: nn.Module, path: str) -> nn.Module:
    module = root
    for part in path.split("."):
        module = getattr(module, part)
    return module

