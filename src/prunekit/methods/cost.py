"""What a structured candidate costs, as pure functions: a latency model linear in the number of decoder blocks and,
for a narrower MLP, in its width (time = fixed + blocks * (per_block + per_width * (width - 1)), width the fraction
of MLP channels kept, fitted to measurements of the model itself), and the largest number of blocks that meets a
speed-up or a parameter budget."""

from __future__ import annotations

import math
from collections.abc import Sequence


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of ys against xs; needs two distinct xs."""
    if len(xs) != len(ys) or len(set(xs)) < 2:
        raise ValueError("a line needs at least two distinct points")
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def fit_plane(points: Sequence[tuple[float, float]], ys: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares (intercept, per_block, per_width) of time = intercept + blocks * (per_block + per_width *
    (width - 1)) through measurements at (blocks, width) points; needs two depths at full width and one narrower
    width."""
    import torch

    if len(points) != len(ys) or len({b for b, w in points if w == 1}) < 2 or all(w == 1 for _, w in points):
        raise ValueError("a plane needs two depths at full width and a narrower width")
    features = torch.tensor([[1.0, b, b * (w - 1)] for b, w in points], dtype=torch.float64)
    solution = torch.linalg.lstsq(features, torch.tensor(ys, dtype=torch.float64).unsqueeze(1)).solution
    intercept, per_block, per_width = solution.squeeze(1).tolist()
    return intercept, per_block, per_width


def line_time(intercept: float, slope: float, blocks: int) -> float:
    return intercept + slope * blocks


def blocks_within(budget: float, fixed: float, per_block: float, total: int) -> int:
    """The most blocks (of `total`) with fixed + per_block * blocks <= budget; 0 when not even one fits."""
    if per_block <= 0:
        return total if fixed <= budget else 0
    return max(0, min(total, math.floor((budget - fixed) / per_block + 1e-9)))


def blocks_for_speedup(intercept: float, slope: float, total: int, speedup: float) -> int:
    """The most blocks (of `total`) a model may keep to run `speedup` times faster than with all of them, by the
    line (slope: the time of one block as it is now); 0 when even one block is too slow."""
    if slope <= 0:
        return 0
    return blocks_within(line_time(intercept, slope, total) / speedup, intercept, slope, total)


def max_speedup(intercept: float, slope: float, total: int) -> float:
    """The speed-up of keeping a single block, the most depth pruning can give."""
    return line_time(intercept, slope, total) / line_time(intercept, slope, 1)


def blocks_for_params(parameters: int, per_block: int, total: int, fraction: float) -> int:
    """The most blocks a model may keep so that it holds at most `fraction` of its `parameters`."""
    return blocks_within(fraction * parameters, parameters - per_block * total, per_block, total)
