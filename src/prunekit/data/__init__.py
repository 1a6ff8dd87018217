"""Data pruning for labelled datasets: sources, training-dynamics scores, selectors, a small trainer, experiments.

The Python API is `score` (one score per example, HIGHER = HARDER) and `select` (the indices kept); the scores
they know are the table `DATA_SCORES`. The attribute `prunekit.data.select` is that function, not the module of
selection rules: `from prunekit.data.select import keep_count, ...` still imports from the module.
"""

from prunekit.data.api import score, select
from prunekit.data.registry import DATA_SCORES, DataScore, get_score, score_names
from prunekit.data.sources import LabelledData, load_dataset_spec

__all__ = ["DATA_SCORES", "DataScore", "LabelledData", "get_score", "load_dataset_spec", "score", "score_names",
           "select"]
