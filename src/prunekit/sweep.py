"""A grid of pruning runs (methods x sparsities x patterns) on one model, each point evaluated the same way.

The model is loaded, its calibration windows drawn and the dense model evaluated once; every point starts from a copy
of the dense weights. Methods prune sequentially (a layer's statistics come from the already-pruned layers before
it, as in the Wanda and SparseGPT papers), so per-layer statistics differ between points and are recomputed; the
calibration tokens and the dense evaluation are what is shared.

The sweep writes into `OUT.partial` and renames it to OUT at the end; a point whose prunekit.json is there is not
rerun, so an interrupted sweep resumes where it stopped when started again with the same settings.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from prunekit.api import calibration_data, evaluate, evaluation_data, prune, prune_report
from prunekit.engine.layerwise import check_selection
from prunekit.errors import PrunekitError
from prunekit.eval.zeroshot import evaluate_tasks, expand_tasks, load_task
from prunekit.methods import kind_of
from prunekit.methods import names as method_names
from prunekit.methods.patterns import SparsityPattern
from prunekit.models.adapters import adapter_for
from prunekit.models.loading import LoadedModel, load_model, resolve_device
from prunekit.outputs import WORK_MARKER, check_output, check_work_directory, work_directory
from prunekit.progress import console
from prunekit.recipe import SEED_MAX, CalibrationConfig, EvaluationConfig, Recipe, StageConfig
from prunekit.report.schema import (
    PruneReport,
    SweepDense,
    SweepPoint,
    SweepReport,
    TextProtocol,
    ZeroShotProtocol,
    ZeroShotScore,
)
from prunekit.rundir import REPORT_FILE, report_text, write_run
from prunekit.runinfo import count_parameters, count_zeros, peak_rss_bytes, versions

SWEEP_FILE = "sweep.json"
# Suffixes of a sweep's method names: a weight method, then any of these, e.g. wanda+dsnot, ria+permute, wanda+++dsnot
# (wanda++ with DSnoT). +permute points are N:M only: a sweep skips its unstructured sparsities.
SUFFIXES: dict[str, dict[str, Any]] = {"dsnot": {"refine": "dsnot"}, "permute": {"permute": True}}
RESULTS_FILE = "results.csv"


@dataclass
class SweepConfig:
    model: str
    methods: list[str]
    sparsities: list[float] = field(default_factory=lambda: [0.5])
    patterns: list[str] = field(default_factory=lambda: ["unstructured"])
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    evaluation: EvaluationConfig | None = field(default_factory=EvaluationConfig)  # None: no perplexity
    tasks: list[str] = field(default_factory=list)  # zero-shot tasks (see prunekit.eval.zeroshot.load_task)
    limit: int | None = None  # zero-shot examples per task
    prompt: str = "plain"
    seed: int = 0
    save_models: bool = False  # also write each pruned model (safetensors) into its point's folder
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    allow_pickle: bool = False

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise PrunekitError(f"limit {self.limit} must be at least 1 zero-shot example per task")
        if not 0 <= self.seed <= SEED_MAX:
            raise PrunekitError(f"seed {self.seed} must be between 0 and {SEED_MAX}")

    def stages(self) -> list[StageConfig]:
        """One validated stage per grid point: unstructured at each sparsity, N:M patterns at their own."""
        if not self.methods:
            raise PrunekitError("no methods to sweep: pass e.g. --methods magnitude,wanda,sparsegpt")
        structured = [m for m in self.methods if kind_of(split_method(m)["method"]) in ("depth", "width")]
        if structured:
            raise PrunekitError(f"{', '.join(structured)} removes blocks or channels; a sweep covers weight pruning "
                                f"({', '.join(method_names('weights'))}): use `prunekit prune --method "
                                f"{structured[0]}` per size")
        points = []
        for label in self.methods:
            method = split_method(label)
            before = len(points)
            for pattern in self.patterns:
                if SparsityPattern.parse(pattern).is_nm:
                    points.append(StageConfig.parse({**method, "pattern": pattern}))
                    continue
                if method.get("permute"):
                    continue  # a channel permutation is for N:M patterns
                if not self.sparsities:
                    raise PrunekitError("an unstructured sweep needs sparsities: pass e.g. --sparsity 0.3,0.5,0.7")
                points += [StageConfig.parse({**method, "sparsity": s, "pattern": pattern})
                           for s in self.sparsities]
            if len(points) == before:
                raise PrunekitError(f"{label}: +permute is for N:M patterns and the sweep has none: add e.g. "
                                    "--pattern unstructured,2:4")
        names = [point_name(p) for p in points]
        if len(set(names)) != len(names):
            raise PrunekitError("the sweep lists a point twice: remove the repeated method, sparsity or pattern")
        return points

    def fingerprint(self) -> dict:
        """The settings that make two sweeps' points comparable (what a resumed sweep must match)."""
        return {"model": self.model, "calibration": self.calibration.model_dump(),
                "evaluation": self.evaluation.model_dump() if self.evaluation else None, "tasks": self.tasks,
                "limit": self.limit, "prompt": self.prompt, "seed": self.seed, "dtype": self.dtype}


def split_method(label: str) -> dict[str, Any]:
    """A sweep's method name as stage settings: "sparsegpt+dsnot" -> {method: sparsegpt, refine: dsnot}; a name
    the registry knows is never split (wanda++)."""
    name, settings = label.strip().lower(), {}
    while kind_of(name) is None and "+" in name:
        base, _, suffix = name.rpartition("+")
        if suffix not in SUFFIXES or not base:
            break
        settings.update(SUFFIXES[suffix])
        name = base
    return {"method": name, **settings}


def method_label(stage: StageConfig) -> str:
    """The sweep's name for a stage's method with its refinement and permutation (inverse of split_method)."""
    return stage.method + ("+dsnot" if stage.refine == "dsnot" else "") + ("+permute" if stage.permute else "")


def point_name(stage: StageConfig) -> str:
    pattern = "" if stage.pattern == "unstructured" else f"-{stage.pattern.replace(':', 'of')}"
    return f"{method_label(stage)}{pattern}-{stage.sparsity:g}"


def _work_path(out: Path) -> Path:
    return out.with_name(f"{out.name}.partial")


def _check_work_dir(out: Path, config: SweepConfig, inputs: tuple) -> None:
    """Fail before any work when OUT.partial holds finished points of a sweep with other settings."""
    work = check_work_directory(_work_path(out), "sweep", inputs, output=out, flag="the sweep's work folder")
    settings = work / "settings.json"
    if work.exists() and _has_results(work) and (
            not settings.exists() or settings.read_text() != json.dumps(config.fingerprint(), sort_keys=True)):
        raise PrunekitError(f"{work} holds an unfinished sweep with other settings: delete it or rerun with the "
                            "same model, calibration, evaluation, tasks and seed")


def _has_results(work: Path) -> bool:
    return (work / "dense.json").exists() or any((work / "points").glob(f"*/{REPORT_FILE}"))


def _work_dir(out: Path, config: SweepConfig, inputs: tuple) -> Path:
    """OUT.partial, resumed when it was started with the same settings (one with no results yet is restarted)."""
    _check_work_dir(out, config, inputs)
    wanted = json.dumps(config.fingerprint(), sort_keys=True)
    work = _work_path(out)
    settings = work / "settings.json"
    if work.exists() and settings.exists() and settings.read_text() == wanted and _has_results(work):
        console.log(f"resuming the sweep in {work}")
    work = work_directory(work, "sweep", inputs, output=out, flag="the sweep's work folder")
    settings.write_text(wanted)
    return work


def _evaluate(loaded: LoadedModel, config: SweepConfig, device: torch.device, label: str,
              windows: torch.Tensor | None) -> dict[str, Any]:
    model, tokenizer = loaded.model, loaded.tokenizer
    model.to(device)
    try:
        ppl = (evaluate(model, tokenizer, config.evaluation, f"{label} perplexity", windows=windows)
               if config.evaluation else None)
        zeroshot = evaluate_tasks(model, tokenizer, config.tasks, config.limit, config.seed,
                                  prompt=config.prompt) if config.tasks else []
    finally:
        model.to("cpu")
    return {"perplexity": ppl, "zeroshot": [r.to_dict() for r in zeroshot]}


def _point_recipe(config: SweepConfig, stage: StageConfig) -> Recipe:
    evaluation = config.evaluation or EvaluationConfig(ppl=False)
    return Recipe(model=config.model, seed=config.seed, dtype=config.dtype, device=config.device,
                  trust_remote_code=config.trust_remote_code, allow_pickle=config.allow_pickle,
                  calibration=config.calibration, stages=[stage],
                  evaluation=evaluation.model_copy(update={"dense": False}))


def _run_point(loaded: LoadedModel, dense_state: dict[str, torch.Tensor], windows: torch.Tensor | None,
               eval_windows: torch.Tensor | None, stage: StageConfig, config: SweepConfig, folder: Path,
               device: torch.device) -> PruneReport:
    name = point_name(stage)
    loaded.model.load_state_dict(dense_state)
    console.log(f"[bold]{name}[/bold]")
    result = prune(loaded.model, loaded.tokenizer, stages=[stage], calibration=windows, seed=config.seed,
                   device=config.device, batch_size=config.calibration.batch_size)
    scores = _evaluate(loaded, config, device, name, eval_windows)
    parameters = count_parameters(loaded.model)
    zeros = count_zeros(loaded.model)
    recipe = _point_recipe(config, stage)
    report = prune_report(recipe, result, parameters, zeros, None, scores["perplexity"],
                          {"prune": round(result.seconds, 2)}, zeroshot=scores["zeroshot"])
    # Older versions wrote a point into this fixed name first; one a killed run of theirs left would end up in OUT.
    shutil.rmtree(folder.with_name(f".{folder.name}.partial"), ignore_errors=True)
    write_run(folder, report, recipe, loaded if config.save_models else None, overwrite=True,
              inputs=(config.model,))
    return report


def _point_row(stage: StageConfig, report: PruneReport, folder: str) -> SweepPoint:
    ppl = report.perplexity.pruned
    return SweepPoint(method=method_label(stage), sparsity=stage.sparsity, pattern=stage.pattern,
                      perplexity=ppl.perplexity if ppl else None,
                      zeroshot=report.zeroshot if isinstance(report.zeroshot, list) else [],
                      prune_seconds=report.seconds["prune"], decoder_linear_sparsity=report.decoder_linear_sparsity,
                      parameters=report.parameters, zero_parameters=report.zero_parameters,
                      report=f"{folder}/{REPORT_FILE}")


def results_rows(sweep: dict) -> list[dict]:
    """The sweep as flat rows (dense first): one per point, a column per metric and zero-shot task."""
    dense = sweep["dense"]
    points = [{"method": "dense", "sparsity": 0.0, "pattern": "", "perplexity": dense["perplexity"],
               "zeroshot": dense["zeroshot"], "prune_seconds": 0.0, "decoder_linear_sparsity": 0.0},
              *sweep["points"]]
    rows = []
    for p in points:
        row = {k: p[k] for k in ("method", "pattern", "sparsity", "decoder_linear_sparsity", "perplexity",
                                 "prune_seconds")}
        for r in p["zeroshot"]:
            row[f"{r['task']} acc"] = r["acc"]
            row[f"{r['task']} acc_norm"] = r["acc_norm"]
        rows.append(row)
    return rows


def _write_results(work: Path, sweep: SweepReport) -> None:
    (work / SWEEP_FILE).write_text(report_text(sweep))
    rows = results_rows(sweep.to_json())
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with (work / RESULTS_FILE).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)


def run_sweep(config: SweepConfig, out: Path, overwrite: bool = False) -> dict:
    """Run every point of the grid; write OUT/sweep.json, OUT/results.csv and OUT/points/NAME/{prunekit.json,
    recipe.yaml} (+ the model with save_models). Returns the sweep.json content."""
    started = time.perf_counter()
    inputs = (config.model,)
    out = check_output(out, overwrite, inputs)
    stages = config.stages()  # every point is validated before any work
    for task in expand_tasks(config.tasks):
        load_task(task, config.prompt)
    _check_work_dir(out, config, inputs)
    device = resolve_device(config.device)
    with console.status(f"loading {config.model}"):
        loaded = load_model(config.model, config.dtype, config.device, config.trust_remote_code, config.allow_pickle)
    for stage in stages:
        check_selection(adapter_for(loaded.model), stage.to_stage())
    # Both texts are read before the work folder is made, so bad text or lengths leave nothing behind.
    eval_windows = evaluation_data(loaded.model, loaded.tokenizer, config.evaluation) if config.evaluation else None
    windows = None
    if any(s.to_stage().needs_calibration for s in stages):
        windows = calibration_data(loaded.model, loaded.tokenizer, config.calibration, config.seed)
    work = _work_dir(out, config, inputs)
    dense_file = work / "dense.json"
    if dense_file.exists():
        dense = SweepDense.parse(json.loads(dense_file.read_text()))
    else:
        scores = _evaluate(loaded, config, device, "dense", eval_windows)
        ppl = scores["perplexity"]
        dense = SweepDense(perplexity=ppl.perplexity if ppl else None,
                           zeroshot=[ZeroShotScore(**r) for r in scores["zeroshot"]],
                           parameters=count_parameters(loaded.model), zero_parameters=count_zeros(loaded.model))
        dense_file.write_text(report_text(dense))
    dense_state = {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}
    points = []
    for index, stage in enumerate(stages, 1):
        folder = f"points/{point_name(stage)}"
        done = work / folder / REPORT_FILE
        console.log(f"point {index}/{len(stages)}")
        report = (PruneReport.parse(json.loads(done.read_text())) if done.exists()
                  else _run_point(loaded, dense_state, windows, eval_windows, stage, config, work / folder, device))
        points.append(_point_row(stage, report, folder))
    sweep = SweepReport(
        versions=versions(),
        model=config.model,
        methods=config.methods,
        sparsities=config.sparsities,
        patterns=config.patterns,
        seed=config.seed,
        calibration=config.calibration.model_dump(),
        perplexity_protocol=TextProtocol(**config.evaluation.model_dump()) if config.evaluation else None,
        zeroshot_protocol=ZeroShotProtocol(tasks=config.tasks, limit=config.limit, prompt=config.prompt,
                                           seed=config.seed) if config.tasks else None,
        dense=dense,
        points=points,
        seconds={"total": round(time.perf_counter() - started, 2)},
        peak_rss_bytes=peak_rss_bytes(),
    )
    _write_results(work, sweep)
    (work / WORK_MARKER).unlink()  # from here on it is the output, not a work folder
    if out.exists():  # overwrite was allowed by check_output
        shutil.rmtree(out)
    os.replace(work, out)
    return sweep.to_json()

