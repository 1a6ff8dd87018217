"""Reading run directories (prune, recover, sweep) into one flat shape the page and the plots share.

The files are read through the typed schema (prunekit.report.schema), tolerantly: missing optional keys and values
of the wrong type (a string where a number belongs, a list where an object does) count as missing, so reports from
older, partial or hand-edited runs still render, with a dash where a number is missing. What is not tolerated is a
directory prunekit did not write, a file that is not UTF-8 or not JSON, or a format version this code does not
know; those raise a one-line PrunekitError.

Nothing outside the run directories given is read: a file that resolves outside its run directory (an absolute
`report` path in sweep.json, one with `../`, a symlink pointing out) is left out with a note, so a report made from
someone else's run cannot embed the reader's own files."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prunekit.errors import PrunekitError
from prunekit.files import read_json, read_text
from prunekit.report.record import Record, number
from prunekit.report.schema import (
    MatrixRecord,
    PerplexityScore,
    PruneReport,
    RecoveryReport,
    StageRecord,
    SweepPoint,
    SweepReport,
    ZeroShotPair,
    ZeroShotScore,
)

READS_VERSION = 1  # the format version of prune reports and sweeps this code reads
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
    matrices: tuple[MatrixRecord, ...] = ()
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
    config: dict  # the `recovery` section of the report: the keys it holds, read through the schema
    perplexity: dict  # before / teacher / after (the ones measured), each a perplexity result as a dict
    parameters: int | None = None
    zero_parameters: int | None = None
    decoder_linear_sparsity: dict | None = None  # before / after


@dataclass(frozen=True)
class Search:
    """What a `prunekit search` run chose (its search.json), next to its baseline of the same cost."""

    run: str
    model: str
    space: str
    target: str  # as the user gave it, e.g. "params=0.75" or "decode=1.3x"
    target_key: str  # params | decode | prefill: what the cost axis measures
    baseline: str
    cost: float | None  # params: fraction of the parameters kept; decode / prefill: measured (else predicted) speed-up
    baseline_cost: float | None
    kl: float | None  # the chosen model's KL from the dense model, as pruned
    baseline_kl: float | None
    perplexity: float | None
    baseline_perplexity: float | None
    dense_perplexity: float | None
    history: tuple[float, ...] = ()  # the best fitness after each generation
    start_fitness: float | None = None  # the baseline's fitness as the search measured it
    evaluated: int | None = None
    seconds: float | None = None


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
    search: Search | None = None
    protocol: str | None = None  # how perplexity was measured, e.g. "wikipedia, 16 x 1024 tokens"
    seconds: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


# --- pure helpers ---------------------------------------------------------------------------------------------------

_LAYER = re.compile(r"(?:^|\.)(\d{1,6})(?:\.|$)")  # a longer number is no layer index (and would not plot)


def layer_index(name: str) -> int | None:
    """Decoder layer of a matrix name ("layers.3.mlp.up_proj" -> 3); None for matrices outside the layers."""
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def layer_sparsity(matrices: Iterable[MatrixRecord | Any]) -> dict[int, float]:
    """Fraction of zeros per decoder layer, weighted by matrix size (sum of zeros / sum of numel), sorted by layer.
    The matrices are records, or a report's raw JSON objects (read through the schema here).

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


def _matrix_counts(matrix: MatrixRecord | Any) -> tuple[int, int, int] | None:
    """(layer, numel, zeros) of one recorded matrix; None for one outside the layers, empty, or not well formed
    (not an object, a name or count of the wrong type, more zeros than weights)."""
    if not isinstance(matrix, MatrixRecord):
        if not isinstance(matrix, dict):
            return None
        matrix = MatrixRecord.read(matrix)
    if matrix.name is None:
        return None
    index, size, zeros = layer_index(matrix.name), matrix.numel, matrix.zeros
    if index is None or not size or size < 0 or zeros is None or not 0 <= zeros <= size:
        return None
    return index, size, zeros


METRICS = ("acc", "acc_norm", "exact_match")  # what a result's `metric` may name (exact_match is held in acc)


def accuracy_interval(result: dict) -> tuple[float, float]:
    """95% interval of a zero-shot `acc`: the one the evaluator recorded, else acc +- 1.96 stderr clipped to [0, 1]."""
    return _interval(result, "acc")


def _interval(result: dict, key: str) -> tuple[float, float]:
    """95% interval of `result[key]` (acc or acc_norm): `{key}_ci95` as recorded, else the value +- 1.96 stderr
    clipped to [0, 1]; an unreadable value counts as 0."""
    interval = result.get(f"{key}_ci95")
    if isinstance(interval, (list, tuple)) and len(interval) == 2:
        low, high = fraction(interval[0]), fraction(interval[1])
        if low is not None and high is not None:
            return low, high
    value, stderr = fraction(result.get(key)) or 0.0, fraction(result.get(f"{key}_stderr")) or 0.0
    return max(0.0, value - Z95 * stderr), min(1.0, value + Z95 * stderr)


def metric_name(result: dict) -> str:
    """The metric a paper's table reports for a zero-shot result: the one it recorded (acc, acc_norm or
    exact_match), "acc" for a record that names none (older versions) or names an acc_norm it does not hold."""
    metric = result.get("metric")
    if metric == "acc_norm":
        return "acc_norm" if fraction(result.get("acc_norm")) is not None else "acc"
    return "exact_match" if metric == "exact_match" else "acc"


def _held_in(metric: str) -> str:
    return "acc_norm" if metric == "acc_norm" else "acc"  # an exact-match rate is held in acc


def metric_value(result: dict) -> float | None:
    """The value of the result's metric (see metric_name), in [0, 1]; None when not recorded."""
    return fraction(result.get(_held_in(metric_name(result))))


def metric_stderr(result: dict) -> float | None:
    """The standard error of the result's metric, as recorded; None when not recorded."""
    return fraction(result.get(f"{_held_in(metric_name(result))}_stderr"))


def metric_interval(result: dict) -> tuple[float, float]:
    """95% interval of the result's metric: the matching recorded interval (acc_ci95 or acc_norm_ci95), else the
    value +- 1.96 stderr clipped to [0, 1]."""
    return _interval(result, _held_in(metric_name(result)))


def protocol_text(source: Any, samples: Any, seq_len: Any) -> str | None:
    if source is None and samples is None:
        return None
    return f"{source or '?'}, {samples or '?'} x {seq_len or '?'} tokens"


def _measured_on(scores: Iterable[PerplexityScore | None]) -> str | None:
    """How the first perplexity that was measured was measured."""
    score = next((s for s in scores if s is not None), None)
    return protocol_text(score.source, score.samples, score.seq_len) if score is not None else None


def fraction(value: Any) -> float | None:
    """A number in [0, 1] (a sparsity, an accuracy, a chance level), else None: anything else is not one."""
    value = number(value)
    return value if value is not None and 0.0 <= value <= 1.0 else None


def _positive(value: Any) -> float | None:
    """A perplexity: a finite number above zero (it is at least 1), else None; it goes on a log axis."""
    value = number(value)
    return value if value is not None and value > 0 else None


def _perplexity(score: PerplexityScore | None) -> float | None:
    return _positive(score.perplexity) if score is not None else None


def _interval_of(values: list[Any] | None) -> list[float] | None:
    """A recorded 95% interval: two fractions, else None."""
    if values is None or len(values) != 2 or any(fraction(x) is None for x in values):
        return None
    return [fraction(x) for x in values]


def _zeroshot(results: Iterable[ZeroShotScore]) -> tuple[dict, ...]:
    """Zero-shot results that can be plotted, as the plots and tables read them: a task name, an acc in [0, 1], and
    the optional keys (acc_stderr, acc_norm, acc_norm_stderr, chance, examples; acc_ci95 and acc_norm_ci95 only where
    recorded) as None where they are not well formed. `metric` is None where none of METRICS is recorded (an older
    record: its metric is acc)."""
    cleaned = []
    for raw in results:
        acc = fraction(raw.acc)
        if not raw.task or acc is None:
            continue
        result: dict[str, Any] = {"task": raw.task, "acc": acc, "acc_stderr": fraction(raw.acc_stderr),
                                  "acc_norm": fraction(raw.acc_norm), "acc_norm_stderr": fraction(raw.acc_norm_stderr),
                                  "chance": fraction(raw.chance), "examples": raw.examples,
                                  "metric": raw.metric if raw.metric in METRICS else None}
        for key, interval in (("acc_ci95", raw.acc_ci95), ("acc_norm_ci95", raw.acc_norm_ci95)):
            if _interval_of(interval) is not None:
                result[key] = _interval_of(interval)
        cleaned.append(result)
    return tuple(cleaned)


def _dump(record: Record | None) -> dict:
    """The keys a record read from a file held (those with a value of the wrong type as None)."""
    return record.model_dump(exclude_unset=True) if record is not None else {}


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


def _check_version(path: Path, data: dict, record: type[Record], what: str) -> None:
    version = data.get(record.version_key or "")
    if version != READS_VERSION:
        raise PrunekitError(f"{path} was written by an incompatible prunekit version ({what} version {version}, "
                            f"this prunekit reads {READS_VERSION}); re-run it with this version")


def _recipe_text(directory: Path, recipe: dict | None, root: Path) -> tuple[str | None, str | None]:
    """The recipe as the user would write it: recipe.yaml beside the report, else the report's copy as YAML; and a
    note when recipe.yaml was left unread because it links outside the run directory `root`."""
    saved = directory / "recipe.yaml"
    if saved.is_file() and inside(saved, root):
        return read_text(saved, "recipe"), None
    copy = yaml.safe_dump(recipe, sort_keys=False) if recipe is not None else None
    if saved.is_file():
        return copy, f"{saved} links outside the run directory {root}; not read (the report's copy is shown)"
    return copy, None


def _method_and_pattern(stages: list[StageRecord]) -> tuple[str, str]:
    methods = [s.method or "?" for s in stages]
    # Structured stages have no `pattern`; the part they remove (blocks, heads, ...) plays its role.
    patterns = ["N:M per layer" if s.layer_pattern else s.pattern or f"structured {s.part or ''}".strip()
                for s in stages]
    return "+".join(methods) or "unknown", "+".join(dict.fromkeys(patterns)) or "unknown"


def _prune_sparsity(report: PruneReport, stages: list[StageRecord]) -> float | None:
    structure = report.structure
    if structure is not None:
        dense, removed = structure.dense_parameters, structure.parameters_removed
        if dense and removed is not None and fraction(removed / dense) is not None:
            return removed / dense
    if len(stages) == 1 and fraction(stages[0].sparsity) is not None:
        return fraction(stages[0].sparsity)
    return fraction(report.decoder_linear_sparsity)


def _pruned_zeroshot(report: PruneReport) -> list[ZeroShotScore]:
    """A pruned model's zero-shot results: a list, or {"pruned": [...], "dense": [...]} when both were measured."""
    found = report.zeroshot
    return found.pruned if isinstance(found, ZeroShotPair) else found or []


def prune_point(report: PruneReport, directory: Path, run: str, root: Path | None = None) -> Point:
    """The Point of a prune report; `directory` holds it (for recipe.yaml), inside the run directory `root`
    (`directory` itself when not given)."""
    stages = report.stages()
    method, pattern = _method_and_pattern(stages)
    recipe, note = _recipe_text(directory, report.recipe, root or directory)
    return Point(
        run=run, model=report.source_model or "?", method=method, pattern=pattern,
        sparsity=_prune_sparsity(report, stages), perplexity=_perplexity(report.perplexity.pruned),
        zeroshot=_zeroshot(_pruned_zeroshot(report)), parameters=report.parameters,
        zero_parameters=report.zero_parameters, prune_seconds=report.seconds.get("prune"),
        peak_rss_bytes=report.peak_rss_bytes, matrices=tuple(report.matrices), recipe_text=recipe,
        notes=(note,) if note else (),
    )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "?"


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def search_record(data: dict, run: str, model: str) -> Search:
    """A Search from search.json's content, whatever it holds (missing or odd values become None or "?")."""
    target, parameters, fitness = _dict(data.get("target")), _dict(data.get("parameters")), _dict(data.get("fitness"))
    ppl, cost = _dict(data.get("perplexity")), _dict(data.get("cost"))
    key = _text(target.get("key"))
    dense = number(parameters.get("dense"))

    def kept(name: str) -> float | None:
        value = number(parameters.get(name))
        return value / dense if value is not None and dense else None

    if key in ("params", "memory"):  # one dtype: the fraction of the bytes is the fraction of the parameters
        chosen, baseline = kept("searched_kept"), kept("baseline_kept")
    else:  # a depth search's baseline removes as many blocks of the same size: the same shape, the same speed
        chosen = number(cost.get("measured"))
        chosen = number(cost.get("predicted")) if chosen is None else chosen
        baseline = number(cost.get("baseline_predicted"))  # a depth,width search's baseline has its own shape
        baseline = chosen if baseline is None else baseline
    history = data.get("history")
    bests = [number(h.get("fitness")) for h in history if isinstance(h, dict)] if isinstance(history, list) else []
    evaluated = number(data.get("evaluated"))
    return Search(
        run=run, model=model, space=_text(data.get("space")), target=_text(target.get("text")), target_key=key,
        baseline=_text(data.get("baseline")), cost=chosen, baseline_cost=baseline,
        kl=number(fitness.get("searched_pruned")), baseline_kl=number(fitness.get("baseline_pruned")),
        perplexity=_positive(ppl.get("searched")), baseline_perplexity=_positive(ppl.get("baseline")),
        dense_perplexity=_positive(ppl.get("dense")), history=tuple(b for b in bests if b is not None),
        start_fitness=number(fitness.get("baseline_search")),
        evaluated=int(evaluated) if evaluated is not None else None,
        seconds=number(_dict(data.get("seconds")).get("total")),
    )


def _prune_run(path: Path, label: str, report: PruneReport) -> Run:
    point = prune_point(report, path, label)
    perplexity = report.perplexity
    structure = report.structure
    dense = Dense(run=label, model=point.model, perplexity=_perplexity(perplexity.dense),
                  zeroshot=_zeroshot(report.zeroshot.dense) if isinstance(report.zeroshot, ZeroShotPair) else (),
                  # Unstructured pruning zeroes weights but keeps their count; structured pruning records the old one.
                  parameters=(structure.dense_parameters if structure else None) or point.parameters)
    searched = path / "search.json"
    search = search_record(_read_json(searched, path), label, point.model) if searched.is_file() else None
    return Run(path=path, label=label, kind="prune", model=point.model, version=report.versions.get("prunekit"),
               points=(point,), dense=(dense,) if dense.perplexity is not None or dense.zeroshot else (),
               search=search,
               protocol=_measured_on((perplexity.pruned, perplexity.dense)),
               seconds=report.seconds.get("total"), notes=(*report.notes, *point.notes))


def _recovery_run(path: Path, label: str, report: RecoveryReport) -> Run:
    model = report.model or "?"
    recovery = Recovery(run=label, model=model, teacher=report.teacher, config=_dump(report.recovery),
                        perplexity={name: _dump(score) for name, score in report.perplexity.items()},
                        parameters=report.parameters, zero_parameters=report.zero_parameters,
                        decoder_linear_sparsity=_dump(report.decoder_linear_sparsity) or None)
    return Run(path=path, label=label, kind="recovery", model=model, version=report.prunekit_version,
               recovery=recovery, seconds=report.recovery.seconds,
               protocol=_measured_on(report.perplexity.values()))


def _linked_report(raw: SweepPoint, sweep: Path, label: str) -> tuple[Point | None, str | None]:
    """The full prune report a sweep point links to, as a Point; or a note saying it is missing or lies outside the
    sweep directory (then it is not read)."""
    link = raw.report
    if not link:
        return None, None
    point = f"{raw.method} at sparsity {raw.sparsity}: its report"
    if "\0" in link:
        return None, f"{point} path {json.dumps(link)[:200]} is not a file name"
    where = f"{point} {link}"
    path = sweep / link
    if not inside(path, sweep):
        return None, f"{where} lies outside the sweep directory {sweep}; not read"
    if not path.is_file():
        return None, f"{where} is missing"
    data = _read_json(path, sweep)
    _check_version(path, data, PruneReport, "report")
    return prune_point(PruneReport.read(data), path.parent, label, sweep), None


def _sweep_point(raw: SweepPoint, sweep: Path, label: str, model: str, pattern: str) -> Point:
    """One sweep point, completed from its full report (matrices, recipe, memory); its notes say what could not be
    read (a missing report, one outside the sweep directory)."""
    method, sparsity = raw.method or "?", fraction(raw.sparsity)
    pattern = raw.pattern or pattern
    if raw.error:
        return Point(run=label, model=model, method=method, pattern=pattern, sparsity=sparsity, error=raw.error)
    full, note = _linked_report(raw, sweep, label)
    full = full or Point(run=label, model=model, method=method, pattern=pattern, sparsity=sparsity)
    if sparsity is None:  # an N:M point may leave its target implicit; what was measured stands in for it
        sparsity = fraction(raw.decoder_linear_sparsity)
        sparsity = full.sparsity if sparsity is None else sparsity
    given = raw.model_fields_set  # a key the sweep recorded wins over the linked report's, even when unreadable
    # The sweep's own numbers win over the linked report's: they are what the sweep measured and summarised.
    return Point(
        run=label, model=model, method=method, pattern=pattern, sparsity=sparsity,
        perplexity=_positive(raw.perplexity) if "perplexity" in given else full.perplexity,
        zeroshot=_zeroshot(raw.zeroshot) if "zeroshot" in given else full.zeroshot,
        parameters=raw.parameters or full.parameters,
        zero_parameters=raw.zero_parameters if "zero_parameters" in given else full.zero_parameters,
        prune_seconds=raw.prune_seconds or full.prune_seconds,
        peak_rss_bytes=raw.peak_rss_bytes or full.peak_rss_bytes,
        matrices=full.matrices, recipe_text=full.recipe_text, notes=full.notes + ((note,) if note else ()),
    )


def _sweep_run(path: Path, label: str, sweep: SweepReport) -> Run:
    model, pattern = sweep.model or "?", sweep.pattern or "unstructured"
    points = [_sweep_point(raw, path, label, model, pattern) for raw in sweep.points]
    notes = [note for point in points for note in point.notes]
    measured = sweep.dense
    dense = () if measured is None or not measured.model_fields_set else (
        Dense(run=label, model=model, perplexity=_positive(measured.perplexity),
              zeroshot=_zeroshot(measured.zeroshot), parameters=measured.parameters,
              zero_parameters=measured.zero_parameters),)
    protocol = sweep.perplexity_protocol
    return Run(path=path, label=label, kind="sweep", model=model, version=sweep.versions.get("prunekit"),
               points=tuple(points), dense=dense,
               protocol=protocol_text(protocol.source, protocol.samples, protocol.seq_len) if protocol else None,
               seconds=sweep.seconds.get("total"), notes=tuple(notes))


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
        _check_version(path / "sweep.json", sweep, SweepReport, "sweep")
        return _sweep_run(path, label, SweepReport.read(sweep))
    if (path / "prunekit.json").is_file():
        report = _read_json(path / "prunekit.json", path)
        if PruneReport.version_key in report:
            _check_version(path / "prunekit.json", report, PruneReport, "report")
            return _prune_run(path, label, PruneReport.read(report))
        if "recovery" in report:  # recovery reports carry no format version
            return _recovery_run(path, label, RecoveryReport.read(report))
        raise PrunekitError(f"{path / 'prunekit.json'} is neither a prune nor a recovery report; pass the --out "
                            "directory of a prune, recover or sweep run")
    raise PrunekitError(f"not a prunekit run directory: {path} (expected prunekit.json or sweep.json)")


def labels(paths: Sequence[Path]) -> list[str]:
    """Short unique names for the runs: the directory name, with its parent where two names clash."""
    resolved = [run_directory(p).resolve() for p in paths]
    names = [p.name for p in resolved]
    return [p.name if names.count(p.name) == 1 else f"{p.parent.name}/{p.name}" for p in resolved]


def front_members(path: Path) -> list[Path]:
    """The search outputs of a `prunekit search --target A,B,...` front (its front.json lists them), or [path]."""
    front = run_directory(path) / "front.json"
    if not front.is_file():
        return [path]
    points = _read_json(front, path).get("points")
    folders = [p.get("folder") for p in points if isinstance(p, dict)] if isinstance(points, list) else []
    if not folders or not all(isinstance(f, str) and f and "/" not in f and f != ".." for f in folders):
        raise PrunekitError(f"{front} lists no search outputs; pass the --out directory of a finished search")
    return [run_directory(path) / f for f in folders]


def load_runs(paths: Sequence[Path]) -> list[Run]:
    if not paths:
        raise PrunekitError("no run directories given; pass one or more prune, recover or sweep output directories")
    paths = [member for p in paths for member in front_members(Path(p))]
    return [load_run(Path(p), label) for p, label in zip(paths, labels(paths), strict=True)]
