"""The one table of per-example data scores: name -> formula, a description and what computing it needs.

The training-dynamics recorder, the pruning-rate experiment, `prunekit.data.score` and the command line all read
this table, so a score is named in one place. The formulas live in `prunekit.data.scores`; every score is oriented
HIGHER = HARDER.

What a score needs:

- training_dynamics: per-epoch logits of small models trained on the whole dataset (`TrainingDynamics`);
- embeddings: one feature vector per example;
- labels: each example's assigned class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from prunekit.data import scores as formulas
from prunekit.errors import PrunekitError

TRAINING_DYNAMICS = "training_dynamics"
EMBEDDINGS = "embeddings"
LABELS = "labels"
RANDOM = "random"


@dataclass(frozen=True)
class DataScore:
    """One per-example score: its name, the formula in `prunekit.data.scores`, what it measures, what it needs."""

    name: str
    formula: Callable[..., torch.Tensor]
    description: str
    needs: frozenset[str]
    # Training-dynamics scores: the value of one recorded epoch, (logits [N, C], labels [N]) -> [N], which the
    # recorder averages over the epochs it reads ("early": the first tenth, "last", or "all") and the runs.
    per_record: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    epochs: str = "all"

    @property
    def needs_training(self) -> bool:
        return TRAINING_DYNAMICS in self.needs


DATA_SCORES: dict[str, DataScore] = {
    entry.name: entry
    for entry in (
        DataScore("el2n", formulas.el2n, "||softmax - onehot(label)||_2 early in training, averaged over runs "
                  "(Paul et al. 2021)", frozenset({TRAINING_DYNAMICS, LABELS}),
                  lambda logits, labels: formulas.el2n_per_record(logits.softmax(-1), labels), "early"),
        DataScore("forgetting", formulas.forgetting_events, "times an example goes from classified correctly "
                  "to wrongly between epochs (Toneva et al. 2019)", frozenset({TRAINING_DYNAMICS, LABELS})),
        DataScore("aum", formulas.aum, "minus the mean logit margin of the assigned label over epochs "
                  "(Pleiss et al. 2020)", frozenset({TRAINING_DYNAMICS, LABELS}),
                  lambda logits, labels: -formulas.margins(logits, labels)),
        DataScore("entropy", formulas.entropy, "predictive entropy of the trained model",
                  frozenset({TRAINING_DYNAMICS}), lambda logits, _labels: formulas.entropy_per_record(
                      logits.softmax(-1)), "last"),
        DataScore("prototype", formulas.prototype_distance, "distance to the nearest k-means centroid of the "
                  "embeddings (Sorscher et al. 2022)", frozenset({EMBEDDINGS})),
        DataScore(RANDOM, formulas.random_scores, "uniform in [0, 1), seeded: the baseline", frozenset()),
    )
}


def score_names(needing: str | None = None) -> tuple[str, ...]:
    """The registered score names in table order; with `needing`, only the scores that need it."""
    return tuple(name for name, entry in DATA_SCORES.items() if needing is None or needing in entry.needs)


def get_score(name: str) -> DataScore:
    """The registered score `name`; an unknown name is a one-line error naming the known ones."""
    entry = DATA_SCORES.get(name)
    if entry is None:
        *others, last = score_names()
        raise PrunekitError(f"unknown score {name!r}: use {', '.join(others)} or {last}")
    return entry
