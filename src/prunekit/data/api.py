"""Data pruning from Python: score every example of a labelled dataset, then choose which examples to keep.

    from prunekit.data import load_dataset_spec, score, select
    from prunekit.data.train import TrainConfig

    data = load_dataset_spec("digits")
    values = score(data, "el2n", train=TrainConfig(epochs=2), runs=1)
    kept = select(data, values, keep=0.3, strategy="ccs")
    subset = data.subset(kept)

`prunekit data prune` is these two calls followed by `prunekit.data.selection_io.write_selection`. The score
names, their formulas and what each needs are in `prunekit.data.registry.DATA_SCORES`; the selection rules are in
`prunekit.data.select`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from prunekit.data.experiment import ExperimentConfig, default_embeddings, score_examples
from prunekit.data.registry import EMBEDDINGS, get_score
from prunekit.data.select import select as select_indices
from prunekit.data.sources import LabelledData
from prunekit.data.train import TrainConfig


def score(
    data: LabelledData,
    name: str = "el2n",
    *,
    seed: int = 0,
    train: TrainConfig | None = None,
    runs: int = 2,
    embeddings: torch.Tensor | None = None,
    say: Callable[[str], None] = print,
) -> torch.Tensor:
    """One score per example of `data`, in data order: float64 [N], HIGHER = HARDER.

    Training-dynamics scores (el2n, forgetting, aum, entropy) train `runs` small models on the whole of `data`
    with `train` (default `TrainConfig()`; each run is seeded 1000 + run, whatever `train.seed` says) and read the
    recorded logits; EL2N is averaged over the runs. `prototype` clusters `embeddings` (default: MobileNetV2
    features of images, or the feature vectors themselves) into max(2, classes) k-means clusters seeded by `seed`.
    `random` draws uniform scores from `seed`. `say` receives one progress line per training run.

    An unknown `name` is a one-line `PrunekitError` naming the known scores."""
    entry = get_score(name)
    if entry.needs_training:
        config = ExperimentConfig(train=train or TrainConfig(), score_runs=runs)
        return score_examples(data, config, say=say)[0][entry.name]
    if EMBEDDINGS in entry.needs:
        features = embeddings if embeddings is not None else default_embeddings(data)
        return entry.formula(features, clusters=max(2, data.num_classes), seed=seed)
    return entry.formula(len(data), seed)


def select(
    data: LabelledData,
    scores: torch.Tensor,
    keep: float,
    strategy: str = "hardest",
    *,
    seed: int = 0,
    class_balanced: bool = False,
    ccs_beta: float = 0.1,
) -> torch.Tensor:
    """Indices (int64, ascending) of the examples of `data` kept by `strategy` given one score per example.

    `keep` is the fraction kept, in (0, 1]. Strategies: hardest | easiest | middle | random | ccs (coverage-centric:
    drop the `ccs_beta` hardest, then sample evenly over score strata). `class_balanced` gives every class a quota
    proportional to its size. `seed` drives random and ccs sampling. Every rule is in `prunekit.data.select`."""
    return select_indices(scores, keep, strategy, labels=data.labels, seed=seed, class_balanced=class_balanced,
                          ccs_beta=ccs_beta)
