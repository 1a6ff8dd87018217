"""What a structured candidate costs, as pure functions: a straight-line latency model in the number of decoder
blocks (time = fixed + per_block * blocks, fitted to measurements of the model itself at a few depths), and the
largest number of blocks that meets a speed-up or a parameter budget."""

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


def line_time(intercept: float, slope: float, blocks: int) -> float:
    return intercept + slope * blocks


def blocks_for_speedup(intercept: float, slope: float, total: int, speedup: float) -> int:
    """The most blocks (of `total`) a model may keep to run `speedup` times faster than with all of them, by the
    line; 0 when even one block is too slow."""
    if slope <= 0:
        return 0
    budget = line_time(intercept, slope, total) / speedup
    return max(0, min(total, math.floor((budget - intercept) / slope + 1e-9)))


def max_speedup(intercept: float, slope: float, total: int) -> float:
    """The speed-up of keeping a single block, the most depth pruning can give."""
    return line_time(intercept, slope, total) / line_time(intercept, slope, 1)


def blocks_for_params(parameters: int, per_block: int, total: int, fraction: float) -> int:
    """The most blocks a model may keep so that it holds at most `fraction` of its `parameters`."""
    outside = parameters - per_block * total
    return max(0, min(total, math.floor((fraction * parameters - outside) / per_block + 1e-9)))
