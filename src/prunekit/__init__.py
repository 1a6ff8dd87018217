"""prunekit: make neural networks and their training data smaller without losing what matters."""

from __future__ import annotations

__version__ = "0.1.0"

from prunekit.api import PruneResult, calibration_data, evaluate, prune, run, save  # noqa: E402
from prunekit.errors import PrunekitError  # noqa: E402
from prunekit.models.loading import load_model  # noqa: E402
from prunekit.recipe import CalibrationConfig, EvaluationConfig, Recipe, StageConfig  # noqa: E402

__all__ = [
    "CalibrationConfig",
    "EvaluationConfig",
    "PruneResult",
    "PrunekitError",
    "Recipe",
    "StageConfig",
    "calibration_data",
    "evaluate",
    "load_model",
    "prune",
    "run",
    "save",
]
