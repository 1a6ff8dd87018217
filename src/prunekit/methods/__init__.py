"""Pruning methods: pure math on tensors, one file per method, collected here by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from prunekit.errors import PrunekitError
from prunekit.methods.magnitude import magnitude_scores
from prunekit.methods.masks import make_mask
from prunekit.methods.patterns import SparsityPattern
from prunekit.methods.wanda import wanda_scores


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    statistic: str | None  # which input statistic the engine must collect: None or "sq_sum"
    scores: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
    comparable_across_layers: bool  # whether one global threshold over its scores is meaningful

    def prune(
        self,
        weight: torch.Tensor,
        statistic: torch.Tensor | None,
        sparsity: float,
        pattern: SparsityPattern,
        per_row: bool = True,
    ) -> torch.Tensor:
        """The keep-mask for `weight`."""
        return make_mask(self.scores(weight, statistic), sparsity, pattern, per_row=per_row)


METHODS: dict[str, Method] = {
    "magnitude": Method(
        "magnitude", "|W|, no calibration data", None, lambda w, _s: magnitude_scores(w), True
    ),
    "wanda": Method(
        "wanda",
        "|W| x input-feature L2 norm, per output row (Sun et al. 2023)",
        "sq_sum",
        lambda w, s: wanda_scores(w, s),
        False,
    ),
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name.lower()]
    except KeyError:
        raise PrunekitError(f"unknown method {name!r}: choose one of {', '.join(METHODS)}") from None
