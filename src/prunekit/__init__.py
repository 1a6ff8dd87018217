"""prunekit: make neural networks and their training data smaller without losing what matters."""

from __future__ import annotations

from prunekit.api import PruneResult, calibration_data, evaluate, prune, run, save  # noqa: E402
from prunekit.errors import PrunekitError  # noqa: E402
from prunekit.models.loading import load_model  # noqa: E402
from prunekit.recipe import (  # noqa: E402
    CalibrationConfig,
    EvaluationConfig,
    Recipe,
    StageConfig,
    StructuredStageConfig,
)
from prunekit.runinfo import VERSION as __version__  # noqa: E402, F401

__all__ = [
    "CalibrationConfig",
    "EvaluationConfig",
    "PruneResult",
    "PrunekitError",
    "Recipe",
    "StageConfig",
    "StructuredStageConfig",
    "calibration_data",
    "evaluate",
    "load_model",
    "prune",
    "run",
    "save",
]
