"""Reading run directories (prune, recover, sweep) into one flat shape the page and the plots share.

Everything here is tolerant of missing optional keys: reports from older or partial runs still render, with a dash
where a number is missing. What is not tolerated is a directory prunekit did not write, or a format version this
code does not know; those raise a one-line PrunekitError."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prunekit.errors import PrunekitError

READS_VERSION = 1
Z95 = 1.959964  # two-sided 95% normal quantile, for results that carry a stderr but no interval


@dataclass(frozen=True)
class Point:
    """One pruned model: a single `prunekit prune` run or one point of a sweep."""

    run: str  # label of the run directory it came from
    model: str
    method: str
    pattern: str
    sparsity: float | None  # the x axis: target sparsity (structured: fraction of parameters removed)
    perplexity: float | None = None
    zeroshot: tuple[dict, ...] = ()
    parameters: int | None = None
    zero_parameters: int | None = None
    prune_seconds: float | None = None
    peak_rss_bytes: int | None = None
    matrices: tuple[dict, ...] = ()
    recipe_text: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Dense:
    """The unpruned model as a run measured it: the baseline lines in the plots."""

    run: str
    model: str
    perplexity: float | None = None
    zeroshot: tuple[dict, ...] = ()
    parameters: int | None = None
    zero_parameters: int | None = None


@dataclass(frozen=True)
class Recovery:
    run: str
    model: str
    teacher: str | None
    config: dict  # the `recovery` section of the report
    perplexity: dict  # before / teacher / after, each a perplexity result or absent
    parameters: int | None = None
    zero_parameters: int | None = None
    decoder_linear_sparsity: dict | None = None  # before / after


@dataclass(frozen=True)
class Run:
    path: Path
    label: str
    kind: str  # "prune", "sweep" or "recovery"
    model: str
    version: str | None  # the prunekit version that wrote it
    points: tuple[Point, ...] = ()
    dense: tuple[Dense, ...] = ()
    recovery: Recovery | None = None
    protocol: str | None = None  # how perplexity was measured, e.g. "wikipedia, 16 x 1024 tokens"
    seconds: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


# --- pure helpers ---------------------------------------------------------------------------------------------------

_LAYER = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def layer_index(name: str) -> int | None:
    """Decoder layer of a matrix name ("layers.3.mlp.up_proj" -> 3); None for matrices outside the layers."""
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def layer_sparsity(matrices: Iterable[dict]) -> dict[int, float]:
    """Fraction of zeros per decoder layer, weighted by matrix size (sum of zeros / sum of numel), sorted by layer.

    A plain mean of per-matrix sparsities would let a small k_proj count as much as a large MLP matrix."""
    zeros: dict[int, int] = {}
    numel: dict[int, int] = {}
    for matrix in matrices:
        index = layer_index(str(matrix.get("name", "")))
        if index is None or not matrix.get("numel"):
            continue
        zeros[index] = zeros.get(index, 0) + int(matrix.get("zeros", 0))
        numel[index] = numel.get(index, 0) + int(matrix["numel"])
    return {i: zeros[i] / numel[i] for i in sorted(numel)}


def accuracy_interval(result: dict) -> tuple[float, float]:
    """95% interval of a zero-shot `acc`: the one the evaluator recorded, else acc +- 1.96 stderr clipped to [0, 1]."""
    interval = result.get("acc_ci95")
    if isinstance(interval, (list, tuple)) and len(interval) == 2:
        return float(interval[0]), float(interval[1])
    acc, stderr = float(result["acc"]), float(result.get("acc_stderr") or 0.0)
    return max(0.0, acc - Z95 * stderr), min(1.0, acc + Z95 * stderr)


def protocol_text(source: Any, samples: Any, seq_len: Any) -> str | None:
    if source is None and samples is None:
        return None
    return f"{source or '?'}, {samples or '?'} x {seq_len or '?'} tokens"


def number(value: Any) -> float | None:
    """A finite float, or None for null, missing, NaN or anything non-numeric (a report may hold any of these)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _integer(value: Any) -> int | None:
    value = number(value)
    return int(value) if value is not None else None


def _zeroshot(value: Any) -> tuple[dict, ...]:
    """Zero-shot results that can be plotted: dicts with a task name and a numeric acc."""
    if not isinstance(value, list):
        return ()
    return tuple(r for r in value if isinstance(r, dict) and r.get("task") and number(r.get("acc")) is not None)


def _section(data: dict, key: str) -> dict:
    """data[key] when it is a JSON object, else {} (absent, null, or the wrong shape in an older report)."""
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _perplexity(value: Any) -> float | None:
    return number(value.get("perplexity")) if isinstance(value, dict) else None


# --- reading --------------------------------------------------------------------------------------------------------

def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise PrunekitError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}); "
                            "re-run the command that wrote it") from None
    except OSError as error:
        raise PrunekitError(f"cannot read {path} ({error.strerror}); check its permissions") from None
    if not isinstance(data, dict):
        raise PrunekitError(f"{path} does not hold a JSON object; re-run the command that wrote it")
    return data


def _check_version(path: Path, data: dict, key: str, what: str) -> None:
    version = data.get(key)
    if version != READS_VERSION:
        raise PrunekitError(f"{path} was written by an incompatible prunekit version ({what} version {version}, "
                            f"this prunekit reads {READS_VERSION}); re-run it with this version")


def _recipe_text(directory: Path, recipe: Any) -> str | None:
    """The recipe as the user would write it: recipe.yaml beside the report, else the report's copy as YAML."""
    saved = directory / "recipe.yaml"
    if saved.is_file():
        return saved.read_text()
    return yaml.safe_dump(recipe, sort_keys=False) if isinstance(recipe, dict) else None


def _stages(report: dict) -> list[dict]:
    recipe = report.get("recipe")
    stages = recipe.get("stages") if isinstance(recipe, dict) else None
    return [s for s in stages if isinstance(s, dict)] if isinstance(stages, list) else []


def _method_and_pattern(stages: list[dict]) -> tuple[str, str]:
    methods = [str(s.get("method", "?")) for s in stages]
    # Structured stages have no `pattern`; the part they remove (blocks, heads, ...) plays its role.
    patterns = [str(s["pattern"]) if "pattern" in s else f"structured {s.get('part') or ''}".strip() for s in stages]
    return "+".join(methods) or "unknown", "+".join(dict.fromkeys(patterns)) or "unknown"


def _prune_sparsity(report: dict, stages: list[dict]) -> float | None:
    structure = report.get("structure")
    if isinstance(structure, dict):
        dense, removed = number(structure.get("dense_parameters")), number(structure.get("parameters_removed"))
        if dense and removed is not None:
            return removed / dense
    if len(stages) == 1 and number(stages[0].get("sparsity")) is not None:
        return float(stages[0]["sparsity"])
    return number(report.get("decoder_linear_sparsity"))


def prune_point(report: dict, directory: Path, run: str) -> Point:
    """The Point of a prune report (format 1); `directory` holds it (for recipe.yaml)."""
    stages = _stages(report)
    method, pattern = _method_and_pattern(stages)
    perplexity = _section(report, "perplexity")
    zeroshot = report.get("zeroshot")
    seconds = _section(report, "seconds")
    matrices = report.get("matrices") if isinstance(report.get("matrices"), list) else []
    return Point(
        run=run, model=str(report.get("source_model") or "?"), method=method, pattern=pattern,
        sparsity=_prune_sparsity(report, stages), perplexity=_perplexity(perplexity.get("pruned")),
        # A pruned model's zero-shot results: a list, or {"pruned": [...], "dense": [...]} when both were measured.
        zeroshot=_zeroshot(zeroshot.get("pruned") if isinstance(zeroshot, dict) else zeroshot),
        parameters=_integer(report.get("parameters")), zero_parameters=_integer(report.get("zero_parameters")),
        prune_seconds=number(seconds.get("prune")), peak_rss_bytes=_integer(report.get("peak_rss_bytes")),
        matrices=tuple(m for m in matrices if isinstance(m, dict)),
        recipe_text=_recipe_text(directory, report.get("recipe")),
    )


def _prune_run(path: Path, label: str, report: dict) -> Run:
    point = prune_point(report, path, label)
    perplexity = _section(report, "perplexity")
    measured = next((p for p in (perplexity.get("pruned"), perplexity.get("dense")) if isinstance(p, dict)), {})
    zeroshot = report.get("zeroshot")
    structure = _section(report, "structure")
    dense = Dense(run=label, model=point.model, perplexity=_perplexity(perplexity.get("dense")),
                  zeroshot=_zeroshot(zeroshot.get("dense")) if isinstance(zeroshot, dict) else (),
                  # Unstructured pruning zeroes weights but keeps their count; structured pruning records the old one.
                  parameters=_integer(structure.get("dense_parameters")) or point.parameters)
    seconds = _section(report, "seconds")
    versions = _section(report, "versions")
    notes = report.get("notes") if isinstance(report.get("notes"), list) else []
    return Run(path=path, label=label, kind="prune", model=point.model, version=versions.get("prunekit"),
               points=(point,), dense=(dense,) if dense.perplexity is not None or dense.zeroshot else (),
               protocol=protocol_text(measured.get("source"), measured.get("samples"), measured.get("seq_len")),
               seconds=number(seconds.get("total")), notes=tuple(str(n) for n in notes))


def _recovery_run(path: Path, label: str, report: dict) -> Run:
    perplexity = _section(report, "perplexity")
    config = _section(report, "recovery")
    model = str(report.get("model") or "?")
    measured = next((p for p in perplexity.values() if isinstance(p, dict)), {})
    recovery = Recovery(run=label, model=model, teacher=report.get("teacher"), config=config, perplexity=perplexity,
                        parameters=_integer(report.get("parameters")),
                        zero_parameters=_integer(report.get("zero_parameters")),
                        decoder_linear_sparsity=_section(report, "decoder_linear_sparsity") or None)
    return Run(path=path, label=label, kind="recovery", model=model, version=report.get("prunekit_version"),
               recovery=recovery, seconds=number(config.get("seconds")),
               protocol=protocol_text(measured.get("source"), measured.get("samples"), measured.get("seq_len")))


def _linked_report(raw: dict, sweep: Path, label: str) -> tuple[Point | None, str | None]:
    """The full prune report a sweep point links to, as a Point; or a note saying it is missing."""
    if not raw.get("report"):
        return None, None
    path = sweep / str(raw["report"])
    if not path.is_file():
        return None, f"{raw.get('method')} at sparsity {raw.get('sparsity')}: its report {raw['report']} is missing"
    report = _read_json(path)
    _check_version(path, report, "prunekit_report_version", "report")
    return prune_point(report, path.parent, label), None


def _sweep_point(raw: dict, sweep: Path, label: str, model: str, pattern: str) -> tuple[Point, str | None]:
    """One sweep point, completed from its full report (matrices, recipe, memory); also a note if that is missing."""
    method, sparsity = str(raw.get("method") or "?"), number(raw.get("sparsity"))
    pattern = str(raw.get("pattern") or pattern)
    if raw.get("error"):
        return Point(run=label, model=model, method=method, pattern=pattern, sparsity=sparsity,
                     error=str(raw["error"])), None
    full, note = _linked_report(raw, sweep, label)
    full = full or Point(run=label, model=model, method=method, pattern=pattern, sparsity=sparsity)
    if sparsity is None:  # an N:M point may leave its target implicit; what was measured stands in for it
        sparsity = number(raw.get("decoder_linear_sparsity"))
        sparsity = full.sparsity if sparsity is None else sparsity
    # The sweep's own numbers win over the linked report's: they are what the sweep measured and summarised.
    return Point(
        run=label, model=model, method=method, pattern=pattern, sparsity=sparsity,
        perplexity=number(raw["perplexity"]) if "perplexity" in raw else full.perplexity,
        zeroshot=_zeroshot(raw["zeroshot"]) if "zeroshot" in raw else full.zeroshot,
        parameters=_integer(raw.get("parameters")) or full.parameters,
        zero_parameters=_integer(raw["zero_parameters"]) if "zero_parameters" in raw else full.zero_parameters,
        prune_seconds=number(raw.get("prune_seconds")) or full.prune_seconds,
        peak_rss_bytes=_integer(raw.get("peak_rss_bytes")) or full.peak_rss_bytes,
        matrices=full.matrices, recipe_text=full.recipe_text,
    ), note


def _sweep_run(path: Path, label: str, sweep: dict) -> Run:
    model, pattern = str(sweep.get("model") or "?"), str(sweep.get("pattern") or "unstructured")
    points, notes = [], []
    for raw in sweep.get("points") or []:
        if isinstance(raw, dict):
            point, note = _sweep_point(raw, path, label, model, pattern)
            points.append(point)
            notes += [note] if note else []
    dense_raw = _section(sweep, "dense")
    dense = Dense(run=label, model=model, perplexity=number(dense_raw.get("perplexity")),
                  zeroshot=_zeroshot(dense_raw.get("zeroshot")), parameters=_integer(dense_raw.get("parameters")),
                  zero_parameters=_integer(dense_raw.get("zero_parameters")))
    protocol = _section(sweep, "perplexity_protocol")
    seconds = _section(sweep, "seconds")
    return Run(path=path, label=label, kind="sweep", model=model, version=_section(sweep, "versions").get("prunekit"),
               points=tuple(points), dense=(dense,) if dense_raw else (),
               protocol=protocol_text(protocol.get("source"), protocol.get("samples"), protocol.get("seq_len")),
               seconds=number(seconds.get("total")), notes=tuple(notes))


def _directory(path: Path) -> Path:
    """The run directory; its prunekit.json or sweep.json may be named instead."""
    path = Path(path).expanduser()
    return path.parent if path.is_file() and path.name in ("prunekit.json", "sweep.json") else path


def load_run(path: Path, label: str | None = None) -> Run:
    """Read one run directory into a Run."""
    path = _directory(path)
    if not path.exists():
        raise PrunekitError(f"run directory {path} does not exist; pass the --out directory of a prune, recover or "
                            "sweep run")
    if not path.is_dir():
        raise PrunekitError(f"{path} is not a directory; pass the --out directory of a prune, recover or sweep run")
    label = label or path.name
    if (path / "sweep.json").is_file():
        sweep = _read_json(path / "sweep.json")
        _check_version(path / "sweep.json", sweep, "prunekit_sweep_version", "sweep")
        return _sweep_run(path, label, sweep)
    if (path / "prunekit.json").is_file():
        report = _read_json(path / "prunekit.json")
        if "prunekit_report_version" in report:
            _check_version(path / "prunekit.json", report, "prunekit_report_version", "report")
            return _prune_run(path, label, report)
        if "recovery" in report:
            return _recovery_run(path, label, report)
        raise PrunekitError(f"{path / 'prunekit.json'} is neither a prune nor a recovery report; pass the --out "
                            "directory of a prune, recover or sweep run")
    raise PrunekitError(f"not a prunekit run directory: {path} (expected prunekit.json or sweep.json)")


def labels(paths: Sequence[Path]) -> list[str]:
    """Short unique names for the runs: the directory name, with its parent where two names clash."""
    resolved = [_directory(p).resolve() for p in paths]
    names = [p.name for p in resolved]
    return [p.name if names.count(p.name) == 1 else f"{p.parent.name}/{p.name}" for p in resolved]


def load_runs(paths: Sequence[Path]) -> list[Run]:
    if not paths:
        raise PrunekitError("no run directories given; pass one or more prune, recover or sweep output directories")
    return [load_run(Path(p), label) for p, label in zip(paths, labels(paths), strict=True)]
