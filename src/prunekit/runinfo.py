"""What every report records about a run: prunekit's version, library versions, parameter and zero counts, peak
memory. The bottom floor: it imports nothing of prunekit, so any module may use it."""

from __future__ import annotations

import platform
import resource
import sys

import torch
from torch import nn

VERSION = "0.1.0"


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (a tied head counts once), as `model.num_parameters()` and stock loaders count them."""
    return sum(p.numel() for p in model.parameters())


def count_zeros(model: nn.Module) -> int:
    """Exact zeros over the distinct parameters (as count_parameters counts them)."""
    return sum(int((p == 0).sum()) for p in model.parameters())


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS counts bytes, Linux KiB


def versions() -> dict[str, str]:
    import transformers

    return {
        "prunekit": VERSION,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
