"""One adapter per architecture family; `adapter_for` picks it from the model's config."""

from __future__ import annotations

from torch import nn

from prunekit.errors import PrunekitError
from prunekit.models.adapters.base import ModelAdapter
from prunekit.models.adapters.cohere import CohereAdapter
from prunekit.models.adapters.falcon import FalconAdapter
from prunekit.models.adapters.gemma2 import Gemma2Adapter
from prunekit.models.adapters.gemma3 import Gemma3Adapter
from prunekit.models.adapters.gpt2 import GPT2Adapter
from prunekit.models.adapters.gpt_neox import GPTNeoXAdapter
from prunekit.models.adapters.granite import GraniteAdapter
from prunekit.models.adapters.llama import LlamaAdapter
from prunekit.models.adapters.olmo2 import Olmo2Adapter
from prunekit.models.adapters.opt import OPTAdapter
from prunekit.models.adapters.phi import PhiAdapter
from prunekit.models.adapters.phi3 import Phi3Adapter
from prunekit.models.adapters.stablelm import StableLmAdapter
from prunekit.models.adapters.starcoder2 import Starcoder2Adapter

ADAPTERS: tuple[type[ModelAdapter], ...] = (
    LlamaAdapter, Gemma3Adapter, OPTAdapter,
    Gemma2Adapter, Olmo2Adapter, GraniteAdapter, StableLmAdapter, Starcoder2Adapter, CohereAdapter, PhiAdapter,
    Phi3Adapter, GPTNeoXAdapter, GPT2Adapter, FalconAdapter,
)
SUPPORTED_MODEL_TYPES = tuple(t for a in ADAPTERS for t in a.model_types)


def adapter_class_for(model_type: str) -> type[ModelAdapter]:
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise PrunekitError(
        f"unsupported architecture {model_type!r}: prunekit supports model types {', '.join(SUPPORTED_MODEL_TYPES)}"
    )


def adapter_for(model: nn.Module) -> ModelAdapter:
    return adapter_class_for(getattr(model.config, "model_type", type(model).__name__))(model)


__all__ = ["ADAPTERS", "SUPPORTED_MODEL_TYPES", "ModelAdapter", "adapter_class_for", "adapter_for"]
