"""One registry for every pruning method: weight (unstructured / N:M), depth (whole blocks) and width (channels,
heads). A method is one function in one file, registered by name with the statistics it needs and the stage options
it reads; the engine collects those statistics and calls it, the recipe checks a stage's options against it, and
the command line lists methods from it.

Statistics by name (what the engine collects, on the model as it is when the stage starts):
  weights:  input_norms (per-input-feature sum of squared activations of the linear), hessian (X^T X of its input),
            gradient_norms (per-weight L2 norm over calibration samples of the loss gradient, dense model),
            channel_stats (per-input-feature sum, sum of squares and token count: mean and variance),
            regional_gradients (per-weight RMS over calibration batches of the gradient of ||block(x)||_2 through
            the one decoder block, Wanda++).
  depth:    block_influence (1 - cos between a block's input and output), angular_distance (between the inputs of
            blocks n apart), perplexity_without_block, greedy_perplexity (SLEB's removal order), block_taylor
            (sum |w x dL/dw| per block), or nothing.
  width:    channel_stats (sum, sum of squares and count of the output projection's input per channel),
            output_weight (the output projection's (outputs, inputs) matrix), taylor_terms (the group's weights with
            their loss gradients summed over samples).
  vocabulary: token_counts (occurrences of each token id in the calibration text), with the tokenizer's required
            tokens and merge parts.
  experts:  expert_routing (per expert: routing frequency and REAP's gate x output norm over routed tokens),
            subset_error (a function: kept experts -> squared error of the re-routed layer output vs the full
            layer's), expert_features (each expert's mean output over calibration tokens), layer_index.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from prunekit.errors import PrunekitError
from prunekit.methods.masks import make_mask
from prunekit.methods.patterns import SparsityPattern

Kind = Literal["weights", "depth", "width", "vocabulary", "experts", "conversion"]
KINDS: dict[str, str] = {"weights": "weight pruning (unstructured or N:M)", "depth": "remove whole blocks",
                         "width": "remove MLP channels or attention heads in every layer",
                         "vocabulary": "remove tokens: tokenizer, embedding and head rows",
                         "experts": "remove or merge the routed experts of a mixture-of-experts model",
                         "conversion": "convert a dense model into a mixture of experts"}
# Stage options that statistics read (the engine uses them while collecting, not the method).
STATISTIC_OPTIONS: dict[str, tuple[str, ...]] = {"gradient_norms": ("gradient_samples",),
                                                 "block_taylor": ("gradient_samples",),
                                                 "taylor_terms": ("gradient_samples",)}
# Every method-specific stage option: a stage may set one only if its method reads it.
METHOD_OPTIONS = ("gradient_samples", "block_size", "damping", "bias_compensation", "seed", "blocks")
# Mask refinements a weight stage may add after its method (`refine`), with the statistics they need.
REFINEMENTS: dict[str, tuple[str, ...]] = {"dsnot": ("hessian",)}


@dataclass(frozen=True)
class Pruned:
    """What a weight method decides for one matrix."""

    keep: torch.Tensor  # bool, True where a weight is kept
    weight: torch.Tensor | None = None  # new values of the kept weights, for methods that update them
    note: str | None = None  # anything the report should say about this matrix


@dataclass(frozen=True)
class MethodSpec:
    name: str
    kind: Kind
    description: str
    function: Callable[..., Any]
    needs: tuple[str, ...] = ()  # statistics, passed to `function` as keyword arguments of the same names
    options: tuple[str, ...] = ()  # stage options passed to `function` as keyword arguments
    updates_weights: bool = False  # weights: returns new weights and mask (reconstruction), not scores
    comparable_across_layers: bool = False  # weights: one global threshold over its scores is meaningful
    prepare: Callable[..., Any] | None = None  # weights: per-input work shared by the linears that see one input
    bias_by_default: bool = False  # width: bias compensation is on unless the stage turns it off
    # Options of the method's own, beyond the stage fields prunekit knows, with their defaults (which fix their
    # types): a recipe stage gives them as `parameters: {name: value}`; they reach `function` as keywords.
    parameters: dict[str, Any] = field(default_factory=dict)
    # Checks the values of the parameters (defaults filled in): one-line PrunekitError for a bad one.
    check: Callable[[dict[str, Any]], None] | None = None
    # weights: after the block's linears are pruned, the engine optimises the kept weights of the whole decoder
    # block against the dense block's outputs (engine/regional.py; Wanda++'s regional optimisation).
    regional: bool = False

    @property
    def accepted_options(self) -> tuple[str, ...]:
        """The stage options this method reads, itself or through the statistics it needs."""
        return tuple(dict.fromkeys((*self.options, *(o for n in self.needs for o in STATISTIC_OPTIONS.get(n, ())))))

    def prune(self, weight: torch.Tensor, statistics: dict[str, Any], sparsity: float, pattern: SparsityPattern,
              per_row: bool = True, **options: Any) -> Pruned:
        """A weight method on one (outputs, inputs) matrix: the statistics it needs by name, its options."""
        if self.updates_weights:
            return self.function(weight, **statistics, sparsity=sparsity, pattern=pattern, **options)
        return Pruned(make_mask(self.function(weight, **statistics, **options), sparsity, pattern, per_row=per_row))

    def check_parameters(self, given: dict[str, Any]) -> dict[str, Any]:
        """The method's own parameters with the defaults filled in; one-line errors for unknown names and types."""
        unknown = sorted(set(given) - set(self.parameters))
        if unknown:
            takes = ", ".join(f"{k} (default {v!r})" for k, v in self.parameters.items()) or "no parameters"
            raise PrunekitError(f"{self.name} has no parameter {', '.join(unknown)}: it takes {takes}")
        for name, value in given.items():
            default = self.parameters[name]
            if isinstance(default, float):  # an int is a fine float; a bool is never a number here
                fits = isinstance(value, int | float) and not isinstance(value, bool)
            else:
                fits = isinstance(value, type(default)) and isinstance(value, bool) == isinstance(default, bool)
            if not fits:
                raise PrunekitError(f"{self.name}: parameter {name} must be a {type(default).__name__} like "
                                    f"{default!r}, not {value!r}")
        merged = {**self.parameters, **given}
        if self.check is not None:
            self.check(merged)
        return merged

    def check_options(self, given: set[str]) -> None:
        """One-line error for a method-specific option this method does not read."""
        unknown = sorted(o for o in given if o in METHOD_OPTIONS and o not in self.accepted_options)
        if unknown:
            takes = ", ".join(self.accepted_options) or "no method-specific options"
            raise PrunekitError(f"{self.name} does not take {', '.join(unknown)}: it takes {takes}")


REGISTRY: dict[str, MethodSpec] = {}


def register(name: str, kind: Kind, description: str, *, needs: tuple[str, ...] = (), options: tuple[str, ...] = (),
             **flags: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated function as method `name`; flags: updates_weights, comparable_across_layers,
    prepare, parameters, check, regional (see MethodSpec)."""
    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        if name in REGISTRY:
            raise ValueError(f"method {name!r} is registered twice")
        REGISTRY[name] = MethodSpec(name, kind, description, function, needs, options, **flags)
        return function
    return decorate


def names(kind: Kind | None = None) -> list[str]:
    return [m.name for m in REGISTRY.values() if kind is None or m.kind == kind]


def get_method(name: str, kind: Kind | None = None) -> MethodSpec:
    """The method called `name` (any case); one-line error listing the known ones (of `kind`, when given)."""
    spec = REGISTRY.get(str(name).lower())
    if spec is None or (kind is not None and spec.kind != kind):
        raise PrunekitError(f"unknown method {name!r}: choose one of {', '.join(names(kind))}")
    return spec


def kind_of(name: str) -> Kind | None:
    spec = REGISTRY.get(str(name).lower())
    return spec.kind if spec else None
