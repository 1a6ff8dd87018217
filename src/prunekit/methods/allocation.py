"""How a target sparsity is spread over the pruned matrices.

uniform: every matrix gets the target. global: one score threshold across all matrices (for scores comparable across
layers, such as magnitudes), each matrix then gets the fraction of its weights below that threshold.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def global_threshold_sparsities(scores: Mapping[str, torch.Tensor], target: float) -> dict[str, float]:
    """Per-matrix sparsities from a single threshold chosen so the total fraction removed equals `target`."""
    total = sum(s.numel() for s in scores.values())
    wanted = round(target * total)
    if wanted == 0:
        return dict.fromkeys(scores, 0.0)
    # Bisection on the threshold: never materialises all scores at once, so it scales with the model.
    low, high = 0.0, max(float(s.max()) for s in scores.values())
    for _ in range(64):
        mid = (low + high) / 2
        if sum(int((s <= mid).sum()) for s in scores.values()) >= wanted:
            high = mid
        else:
            low = mid
    return {name: float((s <= high).sum()) / s.numel() for name, s in scores.items()}
