"""One adapter per architecture family, one file each in this package; `adapter_for` picks it from the config.

Every module here is imported and every ModelAdapter subclass it defines is used: a new family is one new file."""

from __future__ import annotations

import importlib
import pkgutil

from torch import nn

from prunekit.errors import PrunekitError
from prunekit.models.adapters.base import ModelAdapter


def _discover() -> tuple[type[ModelAdapter], ...]:
    found: list[type[ModelAdapter]] = []
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        for value in vars(importlib.import_module(f"{__name__}.{module}")).values():
            if isinstance(value, type) and issubclass(value, ModelAdapter) and value.model_types \
                    and value not in found:
                found.append(value)
    return tuple(found)


ADAPTERS: tuple[type[ModelAdapter], ...] = _discover()
SUPPORTED_MODEL_TYPES = tuple(t for a in ADAPTERS for t in a.model_types)
_claimed = [t for t in SUPPORTED_MODEL_TYPES if SUPPORTED_MODEL_TYPES.count(t) > 1]
if _claimed:
    raise RuntimeError(f"model types claimed by two adapters: {sorted(set(_claimed))}")


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
