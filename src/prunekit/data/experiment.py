"""Pruning-rate experiments: train on subsets chosen by each method at several kept fractions, over seeds.

1. Split the dataset (seeded) into a training and an evaluation part.
2. Score: train `score_runs` models on the whole training part with a `TrainingDynamics` recorder; EL2N, forgetting,
   AUM and entropy come from their records (EL2N averaged over the runs), the prototype score from k-means on
   embeddings when given. Run 0's final model is the full-data reference and the teacher for distillation.
3. For every method, kept fraction and seed: select, train a fresh model for the same number of epochs on the
   subset (with `+kd`: distilled from the teacher, as in "Distilling the Knowledge in Data Pruning"), evaluate.

Methods: `random`, a score name (`el2n`, `forgetting`, `aum`, `entropy`, `prototype`) keeps the hardest,
`<score>-easy` the easiest, `<score>-middle` the middle, `ccs-<score>` coverage-centric selection over that score;
any of them + `+kd`. Results: mean and spread per (method, fraction), a table, a plot and an HTML page.
"""

from __future__ import annotations

import base64
import io
import json
import multiprocessing
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from prunekit.data.dynamics import TrainingDynamics
from prunekit.data.registry import RANDOM, TRAINING_DYNAMICS, score_names
from prunekit.data.scores import prototype_distance, random_scores
from prunekit.data.select import select
from prunekit.data.sources import LabelledData
from prunekit.data.train import TrainConfig, evaluate, mlp, small_cnn, train
from prunekit.errors import PrunekitError
from prunekit.outputs import atomic_directory

DYNAMICS_SCORES = score_names(needing=TRAINING_DYNAMICS)
SCORES = tuple(name for name in score_names() if name != RANDOM)  # random is a method of its own, not a ranking


@dataclass(frozen=True)
class SelectionMethod:
    name: str
    strategy: str  # random | hardest | easiest | middle | ccs
    score: str | None
    distill: bool

    @classmethod
    def parse(cls, text: str) -> SelectionMethod:
        name = text.strip()
        base, distill = (name[:-3], True) if name.endswith("+kd") else (name, False)
        if base == RANDOM:
            return cls(name, "random", None, distill)
        strategy, score = "hardest", base
        if base.startswith("ccs-"):
            strategy, score = "ccs", base[4:]
        for suffix in ("easy", "middle"):
            if base.endswith(f"-{suffix}"):
                strategy, score = {"easy": "easiest", "middle": "middle"}[suffix], base[: -len(suffix) - 1]
        if score not in SCORES:
            raise PrunekitError(
                f"unknown selection method {text!r}: use random, a score ({', '.join(SCORES)}) for the hardest, "
                "SCORE-easy, SCORE-middle or ccs-SCORE, optionally with +kd"
            )
        return cls(name, strategy, score, distill)


@dataclass
class ExperimentConfig:
    fractions: tuple[float, ...] = (0.7, 0.5, 0.3, 0.1)
    seeds: tuple[int, ...] = (0, 1, 2)
    # ccs-aum is the pairing the CCS paper uses by default.
    methods: tuple[str, ...] = ("random", "random+kd", "el2n", "ccs-el2n", "ccs-aum", "forgetting")
    train: TrainConfig = field(default_factory=TrainConfig)
    score_runs: int = 2  # scoring trainings on the full training part (EL2N averages over them)
    prototype_clusters: int = 10
    ccs_beta: float = 0.1
    kd_alpha: float = 0.5  # +kd methods: weight of the distillation term (temperature: train.kd_temperature)
    workers: int = 1  # subset trainings run in this many processes (each seeded: results do not depend on it)

    def __post_init__(self) -> None:
        for fraction in self.fractions:
            if not 0 < fraction <= 1:
                raise PrunekitError(f"kept fraction {fraction:g} is outside (0, 1]: e.g. 0.7,0.5,0.3,0.1")
        if self.score_runs < 1:
            raise PrunekitError("score runs must be at least 1")
        if self.workers < 1:
            raise PrunekitError(f"workers={self.workers}: pass 1 or more processes")


def make_model(data: LabelledData, seed: int) -> nn.Module:
    """The small CNN for images, an MLP for feature vectors."""
    if data.is_image:
        return small_cnn(data.num_classes, in_channels=data.inputs.shape[1], seed=seed)
    return mlp(data.inputs[0].numel(), data.num_classes, seed=seed)


def default_embeddings(data: LabelledData) -> torch.Tensor:
    """ImageNet MobileNetV2 features for images; feature vectors are their own embedding."""
    if data.is_image:
        from prunekit.data.embed import image_embeddings

        return image_embeddings(data)
    return data.inputs.reshape(len(data), -1).double()


def score_examples(data: LabelledData, config: ExperimentConfig, embeddings: torch.Tensor | None = None,
                   say: Callable[[str], None] = print) -> tuple[dict[str, torch.Tensor], nn.Module, float]:
    """All scores of the training examples (in data order), run 0's model, and the seconds it took."""
    started = time.perf_counter()
    recorder = TrainingDynamics(num_classes=data.num_classes)
    reference: nn.Module | None = None
    for run in range(config.score_runs):
        say(f"scoring run {run + 1}/{config.score_runs}: {config.train.epochs} epochs on {len(data)} examples")
        model = train(make_model(data, seed=1000 + run), data, replace(config.train, seed=1000 + run),
                      recorder=recorder, run=run)
        reference = reference or model
    position = {example: i for i, example in enumerate(data.ids)}
    scores: dict[str, torch.Tensor] = {}
    for name in DYNAMICS_SCORES:
        ids, values = recorder.scores(name)
        ordered = torch.empty(len(data), dtype=torch.float64)
        ordered[torch.tensor([position[i] for i in ids])] = values
        scores[name] = ordered
    if embeddings is not None:
        scores["prototype"] = prototype_distance(embeddings, config.prototype_clusters, seed=0)
    assert reference is not None
    return scores, reference, time.perf_counter() - started


def run_experiment(train_data: LabelledData, eval_data: LabelledData, config: ExperimentConfig,
                   embeddings: torch.Tensor | None = None, say: Callable[[str], None] = print) -> dict:
    """Scores, then every (method, fraction, seed) run; returns a JSON-serialisable result."""
    methods = [SelectionMethod.parse(m) for m in config.methods]
    if any(m.score == "prototype" for m in methods) and embeddings is None:
        say("prototype score: embedding the training examples")
        embeddings = default_embeddings(train_data)
    scores, teacher, score_seconds = score_examples(train_data, config, embeddings, say)
    full_accuracy = evaluate(teacher, eval_data)
    say(f"full data: {full_accuracy:.2%} on {len(eval_data)} held-out examples (scoring took {score_seconds:.0f} s)")
    context = _SubsetRuns(train_data, eval_data, teacher, scores, config)
    jobs = [(method, fraction, seed) for fraction in config.fractions for method in methods for seed in config.seeds]
    runs = []
    if config.workers == 1:
        for job in jobs:
            runs.append(context.run(*job))
            _say_run(runs[-1], say)
    else:
        spawn = multiprocessing.get_context("spawn")  # forking a process that already ran OpenMP can hang
        with ProcessPoolExecutor(config.workers, mp_context=spawn, initializer=_start_worker,
                                 initargs=(context,)) as pool:
            for run in pool.map(_run_in_worker, jobs):
                runs.append(run)
                _say_run(run, say)
    return {"dataset": train_data.name, "train_examples": len(train_data), "eval_examples": len(eval_data),
            "config": {**asdict(config), "train": asdict(config.train)}, "full_data_accuracy": full_accuracy,
            "score_seconds": score_seconds, "runs": runs, "summary": summarize(runs)}


@dataclass
class _SubsetRuns:
    """Everything one subset training needs; sent once to every worker process."""

    train_data: LabelledData
    eval_data: LabelledData
    teacher: nn.Module
    scores: dict[str, torch.Tensor]
    config: ExperimentConfig

    def run(self, method: SelectionMethod, fraction: float, seed: int) -> dict:
        config = self.config
        values = self.scores[method.score] if method.score else random_scores(len(self.train_data), seed)
        kept = select(values, fraction, "random" if method.score is None else method.strategy,
                      labels=self.train_data.labels, seed=seed, ccs_beta=config.ccs_beta)
        started = time.perf_counter()
        settings = replace(config.train, seed=seed, kd_alpha=config.kd_alpha if method.distill else 0.0)
        model = train(make_model(self.train_data, seed), self.train_data.subset(kept), settings,
                      teacher=self.teacher if method.distill else None)
        return {"method": method.name, "fraction": fraction, "seed": seed, "kept": len(kept),
                "accuracy": evaluate(model, self.eval_data), "seconds": time.perf_counter() - started}


_worker_context: _SubsetRuns | None = None


def _start_worker(context: _SubsetRuns) -> None:
    global _worker_context
    _worker_context = context


def _run_in_worker(job: tuple[SelectionMethod, float, int]) -> dict:
    assert _worker_context is not None
    return _worker_context.run(*job)


def _say_run(run: dict, say: Callable[[str], None]) -> None:
    say(f"{run['method']} keep {run['fraction']:g} seed {run['seed']}: {run['accuracy']:.2%}")


def summarize(runs: list[dict]) -> list[dict]:
    """Mean, standard deviation, min and max accuracy per (method, fraction)."""
    groups: dict[tuple[str, float], list[float]] = {}
    for r in runs:
        groups.setdefault((r["method"], r["fraction"]), []).append(r["accuracy"])
    return [{"method": m, "fraction": f, "mean": statistics.mean(a), "std": statistics.pstdev(a), "min": min(a),
             "max": max(a), "seeds": len(a)} for (m, f), a in groups.items()]


def plot_png(result: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    methods = list(dict.fromkeys(s["method"] for s in result["summary"]))
    for method in methods:
        rows = sorted((s for s in result["summary"] if s["method"] == method), key=lambda s: s["fraction"])
        axes.errorbar([s["fraction"] for s in rows], [100 * s["mean"] for s in rows],
                      yerr=[100 * s["std"] for s in rows], marker="o", capsize=3, label=method)
    axes.axhline(100 * result["full_data_accuracy"], color="grey", linestyle="--", label="full data")
    axes.set_xlabel("fraction of training data kept")
    axes.set_ylabel("held-out accuracy (%)")
    axes.set_title(f"{result['dataset']}: {result['train_examples']} train / {result['eval_examples']} eval")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    return buffer.getvalue()


def table_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    fractions = sorted({s["fraction"] for s in result["summary"]}, reverse=True)
    cell = {(s["method"], s["fraction"]): s for s in result["summary"]}
    header = ["method", *(f"keep {f:g}" for f in fractions)]
    rows = []
    for method in dict.fromkeys(s["method"] for s in result["summary"]):
        rows.append([method, *(f"{100 * cell[method, f]['mean']:.1f} ± {100 * cell[method, f]['std']:.1f}"
                               if (method, f) in cell else "-" for f in fractions)])
    return header, rows


def write_report(result: dict, out: Path, overwrite: bool = False) -> None:
    """results.json, accuracy.png and report.html (the table and the plot), written atomically."""
    png = plot_png(result)
    header, rows = table_rows(result)
    html_rows = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    html = (f"<!doctype html><meta charset='utf-8'><title>prunekit data experiment</title>"
            "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}td,th{padding:.2em .8em;"
            "text-align:right}td:first-child{text-align:left}</style>"
            f"<h1>Data pruning: {result['dataset']}</h1><p>Held-out accuracy (%), mean ± std over "
            f"{len(result['config']['seeds'])} seeds; full data {100 * result['full_data_accuracy']:.1f}%.</p>"
            f"<table><tr>{''.join(f'<th>{h}</th>' for h in header)}</tr>{html_rows}</table>"
            f"<img alt='accuracy vs kept fraction' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    with atomic_directory(out, overwrite=overwrite) as tmp:
        (tmp / "results.json").write_text(json.dumps(result, indent=2) + "\n")
        (tmp / "accuracy.png").write_bytes(png)
        (tmp / "report.html").write_text(html)
