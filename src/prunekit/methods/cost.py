"""What a structured candidate costs, as pure functions: a latency model linear in the number of decoder blocks and,
for narrower MLPs or fewer heads, in their width (time = fixed + blocks * (per_block + per_width * (width - 1) +
per_heads * (heads - 1)), width and heads the fractions of MLP channels and query heads kept, fitted to
measurements of the model itself), and the largest number of blocks that meets a
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


def fit_plane(points: Sequence[Sequence[float]], ys: Sequence[float]) -> tuple[float, ...]:
    """Least-squares (intercept, per_block, per_fraction...) of time = intercept + blocks * (per_block +
    sum_i per_fraction_i * (fraction_i - 1)) through measurements at (blocks, fraction_1, ...) points, each fraction
    what a block keeps of one part (its MLP channels, its attention heads); needs two depths with every part whole
    and, for each part, a point where it is narrower."""
    import torch

    parts = len(points[0]) - 1 if points else 0
    whole = {p[0] for p in points if all(f == 1 for f in p[1:])}
    if (len(points) != len(ys) or not parts or len(whole) < 2
            or any(all(p[1 + i] == 1 for p in points) for i in range(parts))):
        raise ValueError("a plane needs two depths with every part whole and each part narrower somewhere")
    features = torch.tensor([[1.0, p[0], *(p[0] * (f - 1) for f in p[1:])] for p in points], dtype=torch.float64)
    solution = torch.linalg.lstsq(features, torch.tensor(ys, dtype=torch.float64).unsqueeze(1)).solution
    return tuple(solution.squeeze(1).tolist())


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
