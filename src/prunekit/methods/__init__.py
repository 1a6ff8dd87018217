"""Pruning methods: pure math on tensors, one file per method, collected here by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from prunekit.errors import PrunekitError
from prunekit.methods.gradient import gblm_scores, gradient_scores
from prunekit.methods.magnitude import magnitude_scores
from prunekit.methods.masks import make_mask
from prunekit.methods.patterns import SparsityPattern
from prunekit.methods.sparsegpt import InverseHessian, inverse_hessian, sparsegpt
from prunekit.methods.wanda import wanda_scores


@dataclass(frozen=True)
class Pruned:
    keep: torch.Tensor  # bool, True where a weight is kept
    weight: torch.Tensor | None = None  # new values of the kept weights, for methods that update them
    note: str | None = None  # anything the report should say about this matrix


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    statistic: str | None  # the input statistic the engine collects: None, "sq_sum" or "hessian"
    # score-based methods: (weight, input statistic, gradient norm) -> scores
    scores: Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None], torch.Tensor] | None = None
    needs_gradients: bool = False  # per-weight gradient norms of the LM loss on the dense model

    @property
    def comparable_across_layers(self) -> bool:
        """Whether one global threshold over this method's scores is meaningful (plain magnitudes only)."""
        return self.name == "magnitude"

    def prune(
        self,
        weight: torch.Tensor,
        statistic: torch.Tensor | InverseHessian | None,
        sparsity: float,
        pattern: SparsityPattern,
        per_row: bool = True,
        block_size: int = 128,
        damping: float = 0.01,
        gradient: torch.Tensor | None = None,
    ) -> Pruned:
        if self.scores is not None:
            return Pruned(make_mask(self.scores(weight, statistic, gradient), sparsity, pattern, per_row=per_row))
        prepared = statistic if isinstance(statistic, InverseHessian) else inverse_hessian(statistic, damping)
        result = sparsegpt(weight, prepared, sparsity, pattern, block_size=block_size)
        note = None
        if prepared.retries:
            note = f"Cholesky failed at dampening {damping:g}; retried with {prepared.damping:g} of the mean diagonal"
        return Pruned(result.keep, result.weight, note)

    def prepare(self, statistic: torch.Tensor, damping: float = 0.01) -> torch.Tensor | InverseHessian:
        """Per-statistic work shared by all linears that see the same input (SparseGPT's inverse Hessian)."""
        return inverse_hessian(statistic, damping) if self.statistic == "hessian" else statistic


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("magnitude", "|W|; needs no calibration data", None, lambda w, _s, _g: magnitude_scores(w)),
        Method("wanda", "|W| x input-feature L2 norm, per output row (Sun et al. 2023)", "sq_sum",
               lambda w, s, _g: wanda_scores(w, s)),
        Method("gradient", "|W| x L2 norm of per-sample loss gradients (GBLM-Pruner's gradient term)", None,
               lambda w, _s, g: gradient_scores(w, g), needs_gradients=True),
        Method("gblm", "GBLM-Pruner: gradient term x 100 + the Wanda term (Das et al. 2023)", "sq_sum",
               lambda w, s, g: gblm_scores(w, g, s), needs_gradients=True),
        Method("sparsegpt", "OBS reconstruction from the input Hessian (Frantar & Alistarh 2023)", "hessian"),
    )
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name.lower()]
    except KeyError:
        raise PrunekitError(f"unknown method {name!r}: choose one of {', '.join(METHODS)}") from None
