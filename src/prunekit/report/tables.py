"""The paper-style table of zero-shot results: one row per task, one column per model (the dense model, then each
pruned point), as the pruning papers print them (Wanda, SparseGPT, LLM-Pruner: a task's metric in percent, then the
mean over the tasks).

A cell is the task's metric (see prunekit.report.runs.metric_name: acc, acc_norm or exact_match) with its 95%
interval: the recorded one for that metric (acc_ci95 or acc_norm_ci95), else value +- 1.96 stderr clipped to [0, 1].
A task measured with two metrics (an older record, read as acc, beside a newer acc_norm one) makes two rows: numbers
of different metrics are never put side by side.

The "mean" row averages the multiple-choice tasks every column has, so each column's mean is over the same tasks;
with the tasks taken as independent, its standard error is sqrt(sum of se_i^2) / k over those k tasks, and its 95%
interval mean +- 1.96 se clipped to [0, 1]. A task without a recorded stderr lends one from its interval's width,
(high - low) / (2 * 1.96). Generation tasks (exact_match) get their own "knowledge mean" row, by the same rule.
A mean is shown over two tasks or more."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from prunekit.report.runs import Z95, Dense, Point, metric_interval, metric_name, metric_stderr, metric_value

TITLES = {"arc_easy": "ARC-e", "arc_challenge": "ARC-c", "hellaswag": "HellaSwag", "piqa": "PIQA",
          "winogrande": "WinoGrande", "boolq": "BoolQ", "openbookqa": "OpenBookQA", "rte": "RTE",
          "social_iqa": "SIQA", "mmlu": "MMLU", "triviaqa": "TriviaQA", "nq_open": "NQ-Open"}
GENERATION = "exact_match"  # the metric of the generation tasks; every other metric is a multiple-choice one
MINIMUM_MEAN = 2  # a mean over fewer tasks would only repeat a row


@dataclass(frozen=True)
class Cell:
    """One number of the table, as a fraction in [0, 1] (the page shows percent)."""

    value: float
    low: float  # the 95% interval
    high: float
    stderr: float | None  # None: neither a stderr nor an interval was recorded


@dataclass(frozen=True)
class Row:
    label: str  # "HellaSwag", "mean", "knowledge mean"
    metric: str  # acc, acc_norm, exact_match; a mean row: the metrics it averages, joined by "/"
    cells: tuple[Cell | None, ...]  # one per column; None: not measured there
    task: str | None = None  # the task's name as recorded; None for a mean row
    tasks: tuple[str, ...] = ()  # a mean row: the tasks averaged
    left_out: tuple[str, ...] = ()  # a mean row: the tasks of its kind some column lacks

    @property
    def text(self) -> str:
        """The row's heading: "HellaSwag (acc_norm)"."""
        return f"{self.label} ({self.metric})" if self.task is not None else self.label


@dataclass(frozen=True)
class PaperTable:
    columns: tuple[str, ...]
    rows: tuple[Row, ...]  # the tasks (multiple choice first, then generation), then the mean rows


def title(task: str) -> str:
    """The name a paper prints for a task ("arc_easy" -> "ARC-e"); a task without one keeps its own name."""
    if task.startswith("mmlu_") and len(task) > len("mmlu_"):
        return f"MMLU {task[len('mmlu_'):].replace('_', ' ')}"
    return TITLES.get(task, task)


def _cell(result: dict) -> Cell | None:
    value = metric_value(result)
    if value is None:
        return None
    low, high = metric_interval(result)
    stderr = metric_stderr(result)
    recorded = ("acc_norm_ci95" if metric_name(result) == "acc_norm" else "acc_ci95") in result
    if stderr is None and recorded:
        stderr = (high - low) / (2 * Z95)
    return Cell(value, low, high, stderr)


def _columns(points: Sequence[Point], dense: Sequence[Dense]) -> list[tuple[str, tuple[dict, ...]]]:
    """(label, zero-shot results) of every model with results: the dense models, then the pruned points by run,
    method (in the order first seen), pattern and sparsity."""
    measured = [d for d in dense if d.zeroshot]
    out = [("dense" + (f" ({d.run})" if len(measured) > 1 else ""), d.zeroshot) for d in measured]
    pruned = [p for p in points if p.error is None and p.zeroshot]
    runs = {run: i for i, run in enumerate(dict.fromkeys(p.run for p in pruned))}
    methods = {m: i for i, m in enumerate(dict.fromkeys(p.method for p in pruned))}
    pruned.sort(key=lambda p: (runs[p.run], methods[p.method], p.pattern, -1.0 if p.sparsity is None else p.sparsity))
    several_patterns = len({p.pattern for p in pruned}) > 1
    for p in pruned:
        parts = [p.method, *([p.pattern] if several_patterns else []),
                 "?" if p.sparsity is None else f"{p.sparsity:.0%}"]
        out.append(((f"{p.run}: " if len(runs) > 1 else "") + " ".join(parts), p.zeroshot))
    return out


def _mean(label: str, rows: Sequence[Row], width: int) -> Row | None:
    """The mean row over the rows every column has; None below MINIMUM_MEAN of them."""
    complete = [r for r in rows if all(c is not None for c in r.cells)]
    if len(complete) < MINIMUM_MEAN:
        return None
    cells = []
    for column in range(width):
        found = [r.cells[column] for r in complete]
        value = sum(c.value for c in found) / len(found)
        if any(c.stderr is None for c in found):
            cells.append(Cell(value, value, value, None))
            continue
        stderr = math.sqrt(sum(c.stderr ** 2 for c in found)) / len(found)
        cells.append(Cell(value, max(0.0, value - Z95 * stderr), min(1.0, value + Z95 * stderr), stderr))
    return Row(label, "/".join(dict.fromkeys(r.metric for r in complete)), tuple(cells),
               tasks=tuple(r.task for r in complete), left_out=tuple(r.task for r in rows if r not in complete))


def paper_table(points: Sequence[Point], dense: Sequence[Dense]) -> PaperTable | None:
    """The table over the report's models; None when none has a zero-shot result."""
    columns = _columns(points, dense)
    if not columns:
        return None
    keys = list(dict.fromkeys((r["task"], metric_name(r)) for _, results in columns for r in results))
    keys.sort(key=lambda k: k[1] == GENERATION)  # stable: the order first seen within each kind
    rows = []
    for task, metric in keys:
        cells = []
        for _, results in columns:
            found = next((r for r in results if r["task"] == task and metric_name(r) == metric), None)
            cells.append(None if found is None else _cell(found))
        rows.append(Row(title(task), metric, tuple(cells), task=task))
    means = [_mean("mean", [r for r in rows if r.metric != GENERATION], len(columns)),
             _mean("knowledge mean", [r for r in rows if r.metric == GENERATION], len(columns))]
    return PaperTable(tuple(label for label, _ in columns), tuple(rows + [m for m in means if m is not None]))
