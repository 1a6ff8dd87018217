"""Pruning methods: pure math on tensors, one file per method, each registered by name (see registry.py).

The files below are imported first, in the order the command line lists their methods; any other file in this
package is imported after them, so a new method is one new file with a @register function."""

from __future__ import annotations

import importlib
import pkgutil

# isort: off
from prunekit.methods import magnitude, wanda, gradient, sparsegpt, depth, width  # noqa: F401
# isort: on
from prunekit.methods.registry import REGISTRY, MethodSpec, Pruned, get_method, kind_of, names, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["REGISTRY", "MethodSpec", "Pruned", "get_method", "kind_of", "names", "register"]
