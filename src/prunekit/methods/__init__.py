"""Pruning methods: pure math on tensors, one file per method, each registered by name (see registry.py)."""

from __future__ import annotations

# Importing the method files registers them, in the order the command line lists them.
# isort: off
from prunekit.methods import magnitude, wanda, gradient, sparsegpt, depth, width  # noqa: F401
# isort: on
from prunekit.methods.registry import REGISTRY, MethodSpec, Pruned, get_method, kind_of, names, register

__all__ = ["REGISTRY", "MethodSpec", "Pruned", "get_method", "kind_of", "names", "register"]
