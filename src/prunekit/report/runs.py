"""Reading run directories (prune, recover, sweep) into one flat shape the page and the plots share.

Everything here is tolerant of missing optional keys and of values of the wrong type (a string where a number
belongs, a list where an object does): those count as missing, so reports from older, partial or hand-edited runs
still render, with a dash where a number is missing. What is not tolerated is a directory prunekit did not write, a
file that is not UTF-8 or not JSON, or a format version this code does not know; those raise a one-line
PrunekitError.

Nothing outside the run directories given is read: a file that resolves outside its run directory (an absolute
`report` path in sweep.json, one with `../`, a symlink pointing out) is left out with a note, so a report made from
someone else's run cannot embed the reader's own files."""

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
from prunekit.files import read_json, read_text

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
    notes: tuple[str, ...] = ()  # what could not be read for it (a recipe.yaml linking outside its run)


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

_LAYER = re.compile(r"(?:^|\.)(\d{1,6})(?:\.|$)")  # a longer number is no layer index (and would not plot)


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
        counted = _matrix_counts(matrix)
        if counted is None:
            continue
        index, size, zero = counted
        zeros[index] = zeros.get(index, 0) + zero
        numel[index] = numel.get(index, 0) + size
    return {i: zeros[i] / numel[i] for i in sorted(numel)}


def _matrix_counts(matrix: Any) -> tuple[int, int, int] | None:
    """(layer, numel, zeros) of one recorded matrix; None for one outside the layers, empty, or not well formed
    (a name or count of the wrong type, more zeros than weights)."""
    if not isinstance(matrix, dict) or not isinstance(matrix.get("name"), str):
        return None
    index, size, zeros = layer_index(matrix["name"]), _integer(matrix.get("numel")), _integer(matrix.get("zeros"))
    if index is None or not size or size < 0 or zeros is None or not 0 <= zeros <= size:
        return None
    return index, size, zeros


def accuracy_interval(result: dict) -> tuple[float, float]:
    """95% interval of a zero-shot `acc`: the one the evaluator recorded, else acc +- 1.96 stderr clipped to [0, 1]."""
    interval = result.get("acc_ci95")
    if isinstance(interval, (list, tuple)) and len(interval) == 2:
        low, high = fraction(interval[0]), fraction(interval[1])
        if low is not None and high is not None:
            return low, high
    acc, stderr = fraction(result.get("acc")) or 0.0, fraction(result.get("acc_stderr")) or 0.0
    return max(0.0, acc - Z95 * stderr), min(1.0, acc + Z95 * stderr)


def protocol_text(source: Any, samples: Any, seq_len: Any) -> str | None:
    if source is None and samples is None:
        return None
    return f"{source or '?'}, {samples or '?'} x {seq_len or '?'} tokens"


def number(value: Any) -> float | None:
    """A finite float, or None for null, missing, NaN or anything non-numeric (a report may hold any of these)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:  # an integer too large for a float
        return None
    return value if math.isfinite(value) else None


def fraction(value: Any) -> float | None:
    """A number in [0, 1] (a sparsity, an accuracy, a chance level), else None: anything else is not one."""
    value = number(value)
    return value if value is not None and 0.0 <= value <= 1.0 else None


def _integer(value: Any) -> int | None:
    value = number(value)
    return int(value) if value is not None else None


def _text(value: Any) -> str | None:
    """A string field: the string, None when absent or empty; a number or other value is shown as its JSON text."""
    if value is None or value == "" or isinstance(value, (dict, list)):
        return None
    return value if isinstance(value, str) else str(value)


def _zeroshot(value: Any) -> tuple[dict, ...]:
    """Zero-shot results that can be plotted, cleaned: a task name (string), a numeric acc, and the optional keys
    the plots read (acc_stderr, acc_ci95, chance, examples) only where they have the right type."""
    if not isinstance(value, list):
        return ()
    results = (_zeroshot_result(r) for r in value if isinstance(r, dict))
    return tuple(r for r in results if r is not None)


def _zeroshot_result(raw: dict) -> dict | None:
    acc = fraction(raw.get("acc"))
    if not isinstance(raw.get("task"), str) or not raw["task"] or acc is None:
        return None
    result: dict[str, Any] = {"task": raw["task"], "acc": acc, "acc_stderr": fraction(raw.get("acc_stderr")),
                              "chance": fraction(raw.get("chance")), "examples": _integer(raw.get("examples"))}
    interval = raw.get("acc_ci95")
    if isinstance(interval, list) and len(interval) == 2 and all(fraction(x) is not None for x in interval):
        result["acc_ci95"] = [fraction(x) for x in interval]
    return result


def _list(data: dict, key: str) -> list:
    """data[key] when it is a JSON array, else []."""
    value = data.get(key)
    return value if isinstance(value, list) else []


def _section(data: dict, key: str) -> dict:
    """data[key] when it is a JSON object, else {} (absent, null, or the wrong shape in an older report)."""
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _positive(value: Any) -> float | None:
    """A perplexity: a finite number above zero (it is at least 1), else None; it goes on a log axis."""
    value = number(value)
    return value if value is not None and value > 0 else None


def _perplexity(value: Any) -> float | None:
    return _positive(value.get("perplexity")) if isinstance(value, dict) else None


# --- reading --------------------------------------------------------------------------------------------------------

def inside(path: Path, root: Path) -> bool:
    """Whether `path`, with every symlink followed, lies in the directory `root` (also resolved)."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, ValueError, RuntimeError):  # a NUL byte, a symlink loop
        return False


def _read_json(path: Path, root: Path) -> dict:
    """A run's JSON object; `root` is its run directory, outside which nothing is read."""
    if not inside(path, root):
        raise PrunekitError(f"{path} links to {path.resolve()}, outside the run directory {root}; the report reads "
                            "only files inside the run directories given")
    data = read_json(path, "run report")
    if not isinstance(data, dict):
        raise PrunekitError(f"{path} does not hold a JSON object; re-run the command that wrote it")
    return data


def _check_version(path: Path, data: dict, key: str, what: str) -> None:
    version = data.get(key)
    if version != READS_VERSION:
        raise PrunekitError(f"{path} was written by an incompatible prunekit version ({what} version {version}, "
                            f"this prunekit reads {READS_VERSION}); re-run it with this version")


def _recipe_text(directory: Path, recipe: Any, root: Path) -> tuple[str | None, str | None]:
    """The recipe as the user would write it: recipe.yaml beside the report, else the report's copy as YAML; and a
    note when recipe.yaml was left unread because it links outside the run directory `root`."""
    saved = directory / "recipe.yaml"
    if saved.is_file() and inside(saved, root):
        return read_text(saved, "recipe"), None
    copy = yaml.safe_dump(recipe, sort_keys=False) if isinstance(recipe, dict) else None
    if saved.is_file():
        return copy, f"{saved} links outside the run directory {root}; not read (the report's copy is shown)"
    return copy, None


def _stages(report: dict) -> list[dict]:
    recipe = report.get("recipe")
    stages = recipe.get("stages") if isinstance(recipe, dict) else None
    return [s for s in stages if isinstance(s, dict)] if isinstance(stages, list) else []


def _method_and_pattern(stages: list[dict]) -> tuple[str, str]:
    methods = [_text(s.get("method")) or "?" for s in stages]
    # Structured stages have no `pattern`; the part they remove (blocks, heads, ...) plays its role.
    patterns = [_text(s.get("pattern")) or f"structured {_text(s.get('part')) or ''}".strip() for s in stages]
    return "+".join(methods) or "unknown", "+".join(dict.fromkeys(patterns)) or "unknown"


def _prune_sparsity(report: dict, stages: list[dict]) -> float | None:
    structure = report.get("structure")
    if isinstance(structure, dict):
        dense, removed = number(structure.get("dense_parameters")), number(structure.get("parameters_removed"))
        if dense and removed is not None and fraction(removed / dense) is not None:
            return removed / dense
    if len(stages) == 1 and fraction(stages[0].get("sparsity")) is not None:
        return fraction(stages[0]["sparsity"])
    return fraction(report.get("decoder_linear_sparsity"))


def prune_point(report: dict, directory: Path, run: str, root: Path | None = None) -> Point:
    """The Point of a prune report (format 1); `directory` holds it (for recipe.yaml), inside the run directory
    `root` (`directory` itself when not given)."""
    stages = _stages(report)
    method, pattern = _method_and_pattern(stages)
    perplexity = _section(report, "perplexity")
    zeroshot = report.get("zeroshot")
    seconds = _section(report, "seconds")
    recipe, note = _recipe_text(directory, report.get("recipe"), root or directory)
    return Point(
        run=run, model=_text(report.get("source_model")) or "?", method=method, pattern=pattern,
        sparsity=_prune_sparsity(report, stages), perplexity=_perplexity(perplexity.get("pruned")),
        # A pruned model's zero-shot results: a list, or {"pruned": [...], "dense": [...]} when both were measured.
        zeroshot=_zeroshot(zeroshot.get("pruned") if isinstance(zeroshot, dict) else zeroshot),
        parameters=_integer(report.get("parameters")), zero_parameters=_integer(report.get("zero_parameters")),
        prune_seconds=number(seconds.get("prune")), peak_rss_bytes=_integer(report.get("peak_rss_bytes")),
        matrices=tuple(m for m in _list(report, "matrices") if isinstance(m, dict)),
        recipe_text=recipe, notes=(note,) if note else (),
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
    notes = [str(n) for n in _list(report, "notes")]
    return Run(path=path, label=label, kind="prune", model=point.model, version=_text(versions.get("prunekit")),
               points=(point,), dense=(dense,) if dense.perplexity is not None or dense.zeroshot else (),
               protocol=protocol_text(measured.get("source"), measured.get("samples"), measured.get("seq_len")),
               seconds=number(seconds.get("total")), notes=(*notes, *point.notes))


def _recovery_run(path: Path, label: str, report: dict) -> Run:
    perplexity = _section(report, "perplexity")
    config = _section(report, "recovery")
    model = _text(report.get("model")) or "?"
    measured = next((p for p in perplexity.values() if isinstance(p, dict)), {})
    recovery = Recovery(run=label, model=model, teacher=_text(report.get("teacher")), config=config,
                        perplexity=perplexity,
                        parameters=_integer(report.get("parameters")),
                        zero_parameters=_integer(report.get("zero_parameters")),
                        decoder_linear_sparsity=_section(report, "decoder_linear_sparsity") or None)
    return Run(path=path, label=label, kind="recovery", model=model, version=_text(report.get("prunekit_version")),
               recovery=recovery, seconds=number(config.get("seconds")),
               protocol=protocol_text(measured.get("source"), measured.get("samples"), measured.get("seq_len")))


def _linked_report(raw: dict, sweep: Path, label: str) -> tuple[Point | None, str | None]:
    """The full prune report a sweep point links to, as a Point; or a note saying it is missing or lies outside the
    sweep directory (then it is not read)."""
    link = raw.get("report")
    if not link:
        return None, None
    point = f"{raw.get('method')} at sparsity {raw.get('sparsity')}: its report"
    if not isinstance(link, str) or "\0" in link:
        return None, f"{point} path {json.dumps(link)[:200]} is not a file name"
    where = f"{point} {link}"
    path = sweep / link
    if not inside(path, sweep):
        return None, f"{where} lies outside the sweep directory {sweep}; not read"
    if not path.is_file():
        return None, f"{where} is missing"
    report = _read_json(path, sweep)
    _check_version(path, report, "prunekit_report_version", "report")
    return prune_point(report, path.parent, label, sweep), None


def _sweep_point(raw: dict, sweep: Path, label: str, model: str, pattern: str) -> Point:
    """One sweep point, completed from its full report (matrices, recipe, memory); its notes say what could not be
    read (a missing report, one outside the sweep directory)."""
    method, sparsity = _text(raw.get("method")) or "?", fraction(raw.get("sparsity"))
    pattern = _text(raw.get("pattern")) or pattern
    if raw.get("error"):
        return Point(run=label, model=model, method=method, pattern=pattern, sparsity=sparsity,
                     error=str(raw["error"]))
    full, note = _linked_report(raw, sweep, label)
    full = full or Point(run=label, model=model, method=method, pattern=pattern, sparsity=sparsity)
    if sparsity is None:  # an N:M point may leave its target implicit; what was measured stands in for it
        sparsity = fraction(raw.get("decoder_linear_sparsity"))
        sparsity = full.sparsity if sparsity is None else sparsity
    # The sweep's own numbers win over the linked report's: they are what the sweep measured and summarised.
    return Point(
        run=label, model=model, method=method, pattern=pattern, sparsity=sparsity,
        perplexity=_positive(raw["perplexity"]) if "perplexity" in raw else full.perplexity,
        zeroshot=_zeroshot(raw["zeroshot"]) if "zeroshot" in raw else full.zeroshot,
        parameters=_integer(raw.get("parameters")) or full.parameters,
        zero_parameters=_integer(raw["zero_parameters"]) if "zero_parameters" in raw else full.zero_parameters,
        prune_seconds=number(raw.get("prune_seconds")) or full.prune_seconds,
        peak_rss_bytes=_integer(raw.get("peak_rss_bytes")) or full.peak_rss_bytes,
        matrices=full.matrices, recipe_text=full.recipe_text, notes=full.notes + ((note,) if note else ()),
    )


def _sweep_run(path: Path, label: str, sweep: dict) -> Run:
    model, pattern = _text(sweep.get("model")) or "?", _text(sweep.get("pattern")) or "unstructured"
    points = [_sweep_point(raw, path, label, model, pattern) for raw in _list(sweep, "points") if isinstance(raw, dict)]
    notes = [note for point in points for note in point.notes]
    dense_raw = _section(sweep, "dense")
    dense = Dense(run=label, model=model, perplexity=_positive(dense_raw.get("perplexity")),
                  zeroshot=_zeroshot(dense_raw.get("zeroshot")), parameters=_integer(dense_raw.get("parameters")),
                  zero_parameters=_integer(dense_raw.get("zero_parameters")))
    protocol = _section(sweep, "perplexity_protocol")
    seconds = _section(sweep, "seconds")
    return Run(path=path, label=label, kind="sweep", model=model,
               version=_text(_section(sweep, "versions").get("prunekit")),
               points=tuple(points), dense=(dense,) if dense_raw else (),
               protocol=protocol_text(protocol.get("source"), protocol.get("samples"), protocol.get("seq_len")),
               seconds=number(seconds.get("total")), notes=tuple(notes))


def run_directory(path: Path) -> Path:
    """The run directory; its prunekit.json or sweep.json may be named instead."""
    path = Path(path).expanduser()
    return path.parent if path.is_file() and path.name in ("prunekit.json", "sweep.json") else path


def load_run(path: Path, label: str | None = None) -> Run:
    """Read one run directory into a Run."""
    path = run_directory(path)
    if not path.exists():
        raise PrunekitError(f"run directory {path} does not exist; pass the --out directory of a prune, recover or "
                            "sweep run")
    if not path.is_dir():
        raise PrunekitError(f"{path} is not a directory; pass the --out directory of a prune, recover or sweep run")
    label = label or path.name
    if (path / "sweep.json").is_file():
        sweep = _read_json(path / "sweep.json", path)
        _check_version(path / "sweep.json", sweep, "prunekit_sweep_version", "sweep")
        return _sweep_run(path, label, sweep)
    if (path / "prunekit.json").is_file():
        report = _read_json(path / "prunekit.json", path)
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
    resolved = [run_directory(p).resolve() for p in paths]
    names = [p.name for p in resolved]
    return [p.name if names.count(p.name) == 1 else f"{p.parent.name}/{p.name}" for p in resolved]


def load_runs(paths: Sequence[Path]) -> list[Run]:
    if not paths:
        raise PrunekitError("no run directories given; pass one or more prune, recover or sweep output directories")
    return [load_run(Path(p), label) for p, label in zip(paths, labels(paths), strict=True)]
