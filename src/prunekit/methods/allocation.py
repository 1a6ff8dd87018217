"""How a target sparsity is spread over the pruned matrices.

uniform: every matrix gets the target.
global: one score threshold across all matrices (for scores comparable across layers, such as magnitudes), with a
    floor so no matrix keeps less than `min_density` of its weights (Global-MP's guard against layer collapse).
owl: Outlier-Weighed Layerwise sparsity (Yin et al., 2024): layers with more activation outliers keep more weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def global_threshold_sparsities(
    scores: Mapping[str, torch.Tensor], target: float, min_density: float = 0.0
) -> dict[str, float]:
    """Per-matrix sparsities from a single threshold chosen so the total fraction removed equals `target`."""
    total = sum(s.numel() for s in scores.values())
    wanted = round(target * total)
    caps = {name: int((1.0 - min_density) * s.numel()) for name, s in scores.items()}

    def removed(threshold: float) -> dict[str, int]:
        return {name: min(int((s <= threshold).sum()), caps[name]) for name, s in scores.items()}

    if wanted == 0:
        return dict.fromkeys(scores, 0.0)
    # Bisection on the threshold: never materialises all scores at once, so it scales with the model.
    low, high = 0.0, max(float(s.max()) for s in scores.values())
    for _ in range(64):
        mid = (low + high) / 2
        if sum(removed(mid).values()) >= wanted:
            high = mid
        else:
            low = mid
    return {name: count / scores[name].numel() for name, count in removed(high).items()}


def outlier_ratio(scores: Sequence[torch.Tensor], m: float) -> float:
    """OWL's layerwise outlier distribution: the fraction of a layer's scores above `m` times their mean."""
    flat = torch.cat([s.flatten() for s in scores])
    return float((flat > m * flat.mean()).float().mean())


def owl_sparsities(ratios: Sequence[float], target: float, lam: float) -> list[float]:
    """Per-layer sparsities: outlier ratios rescaled to [0, 2*lam], centred so the mean sparsity is `target`;
    the layer with the most outliers is pruned least (target - lam), the one with the fewest most (target + lam)."""
    r = torch.tensor(ratios, dtype=torch.float64)
    spread = r.max() - r.min()
    if spread == 0:
        return [target] * len(ratios)
    density = (r - r.min()) / spread * 2 * lam
    density = density - density.mean() + (1.0 - target)
    return [float(1.0 - d) for d in density]
