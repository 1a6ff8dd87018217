"""`prunekit data prune` and `prunekit data experiment`: score, select and compare subsets of labelled data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from prunekit.cli.common import OutDirOption, OverwriteOption, stdout
from prunekit.cli.corpus import run_corpus
from prunekit.data.experiment import SCORES
from prunekit.data.registry import score_names
from prunekit.errors import PrunekitError
from prunekit.recipe import SEED_MAX

if TYPE_CHECKING:
    from prunekit.data.train import TrainConfig

DatasetArg = Annotated[
    str, typer.Argument(help="cifar10-test (offline, 10,000 images) | digits (scikit-learn) | an image folder (one "
                        "subfolder per class) | a .npz with x, y (and ids) | hf:NAME[:CONFIG]\\[@SPLIT].",
                        show_default=False),
]
SCORE_NOTES = {"prototype": "(distance to the nearest k-means centroid of MobileNetV2 features, or of the features "
                            "themselves)"}
SCORE_HELP = " | ".join(f"{name} {SCORE_NOTES[name]}" if name in SCORE_NOTES else name
                        for name in score_names()) + "; higher = harder."


def train_options(epochs: int, batch_size: int, lr: float | None, threads: int | None) -> TrainConfig:
    """The training settings the flags give; the ones not given keep TrainConfig's defaults."""
    from prunekit.data.train import TrainConfig

    given = {"lr": lr, "num_threads": threads}
    return TrainConfig(epochs=epochs, batch_size=batch_size, **{k: v for k, v in given.items() if v is not None})


def data_prune(
    dataset: Annotated[
        str | None, typer.Argument(help="cifar10-test (offline, 10,000 images) | digits (scikit-learn) | an image "
                                   "folder (one subfolder per class) | a .npz with x, y (and ids) | "
                                   "hf:NAME[:CONFIG]\\[@SPLIT]. With --recipe: the text corpus (or the recipe's "
                                   "input).",
                                   show_default=False)
    ] = None,
    out: OutDirOption = ...,
    recipe: Annotated[
        Path | None, typer.Option(help="A text-corpus recipe (YAML: input, executor, steps); see `prunekit data "
                                  "dedup --help` for the outputs.")
    ] = None,
    score: Annotated[str, typer.Option(help=SCORE_HELP)] = "el2n",
    keep: Annotated[float, typer.Option(help="Fraction of examples kept, in (0, 1].")] = 0.5,
    strategy: Annotated[str, typer.Option(help="hardest | easiest | middle | random | ccs.")] = "hardest",
    class_balanced: Annotated[bool, typer.Option(help="Per-class quotas proportional to class sizes.")] = False,
    ccs_beta: Annotated[float, typer.Option(help="CCS: fraction of hardest examples dropped first.")] = 0.1,
    epochs: Annotated[int, typer.Option(help="Epochs of each scoring training run.")] = 10,
    runs: Annotated[int, typer.Option(help="Scoring runs (EL2N is averaged over them).")] = 2,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 128,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (one-cycle).")] = None,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads per training (default 1: these models gain little from more).")
    ] = None,
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Seed of the selection.")] = 0,
    overwrite: OverwriteOption = False,
) -> None:
    """Score every example of DATASET by training dynamics (a small model trained on all of it) and keep a subset;
    or, with --recipe, run a text-corpus pipeline.

    Writes scores.parquet (id, score, label, kept), kept.parquet and summary.json. Examples:

      prunekit data prune cifar10-test --score el2n --keep 0.3 --strategy ccs --out out/cifar-ccs30

      prunekit data prune corpus.jsonl --recipe data.yaml --out out/corpus-pruned
    """
    if recipe is not None:
        from prunekit.corpus.recipe import load_recipe

        plan = load_recipe(recipe)
        source = dataset or plan.input
        if source is None:
            raise PrunekitError(f"no corpus: give it as the argument or as `input:` in {recipe}")
        run_corpus(source, plan.build(), out, text_column=plan.text_column, id_column=plan.id_column,
                   executor=plan.executor, ray_address=plan.ray_address, output_format=plan.output_format,
                   overwrite=overwrite)
        return
    if dataset is None:
        raise PrunekitError("no dataset: give one (e.g. cifar10-test), or --recipe for a text corpus")
    import prunekit.data as data_api
    from prunekit.data.selection_io import write_selection
    from prunekit.outputs import check_output

    training = data_api.get_score(score).needs_training
    check_output(out, overwrite, (dataset,))
    data = data_api.load_dataset_spec(dataset)
    values = data_api.score(data, score, seed=seed, runs=runs, say=stdout.print,
                            train=train_options(epochs, batch_size, lr, threads) if training else None)
    kept = data_api.select(data, values, keep, strategy, seed=seed, class_balanced=class_balanced, ccs_beta=ccs_beta)
    summary = {"dataset": dataset, "score": score, "strategy": strategy, "class_balanced": class_balanced,
               "seed": seed, "scoring": {"epochs": epochs, "runs": runs} if training else None}
    write_selection(out, data.ids, values, kept, data.labels, summary, overwrite=overwrite)
    stdout.print(f"kept {len(kept)} of {len(data)} examples ({strategy} by {score}) -> {out}")


def data_experiment(
    dataset: DatasetArg,
    out: OutDirOption = ...,
    methods: Annotated[
        str, typer.Option(help="Comma-separated: random, SCORE (keeps the hardest), SCORE-easy, SCORE-middle, "
                          "ccs-SCORE, each optionally +kd (distilled from a model trained on all the data); "
                          f"SCORE: {', '.join(SCORES)}.")
    ] = "random,random+kd,el2n,ccs-el2n,ccs-aum,forgetting",
    fractions: Annotated[str, typer.Option(help="Kept fractions.")] = "0.7,0.5,0.3,0.1",
    seeds: Annotated[str, typer.Option(help="Seeds per (method, fraction).")] = "0,1,2",
    eval_size: Annotated[float, typer.Option(help="Held-out part: a count, or a fraction if < 1.")] = 2000,
    split_seed: Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Seed of the train/eval split.")] = 0,
    epochs: Annotated[int, typer.Option(help="Epochs of every training run (scoring and subsets).")] = 10,
    score_runs: Annotated[int, typer.Option(help="Scoring runs on the full training part.")] = 2,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 128,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (one-cycle).")] = None,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads per training (default 1: these models gain little from more).")
    ] = None,
    workers: Annotated[int | None, typer.Option(
        min=1, help="Subset trainings run in parallel processes (default: one per CPU core; results do not depend "
        "on it)."
    )] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Train on subsets chosen by each method at each kept fraction, over seeds; evaluate on a held-out split.

    Writes results.json, accuracy.png (accuracy vs kept fraction per method) and report.html. Example:

      prunekit data experiment cifar10-test --eval-size 2000 --out out/cifar-experiment
    """
    from prunekit.data.experiment import ExperimentConfig, run_experiment, table_rows, write_report
    from prunekit.data.sources import load_dataset_spec
    from prunekit.outputs import check_output

    check_output(out, overwrite, (dataset,))
    try:
        config = ExperimentConfig(fractions=tuple(float(f) for f in fractions.split(",")),
                                  seeds=tuple(int(s) for s in seeds.split(",")),
                                  methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
                                  train=train_options(epochs, batch_size, lr, threads), score_runs=score_runs,
                                  workers=workers or os.cpu_count() or 1)
    except ValueError as e:
        raise PrunekitError(f"--fractions and --seeds take comma-separated numbers: {e}") from None
    data = load_dataset_spec(dataset)
    train_data, eval_data = data.split(int(eval_size) if eval_size >= 1 else eval_size, seed=split_seed)
    result = run_experiment(train_data, eval_data, config, say=stdout.print)
    write_report(result, out, overwrite=overwrite)
    header, rows = table_rows(result)
    table = Table(title=f"held-out accuracy (%), mean ± std over seeds; full data "
                  f"{100 * result['full_data_accuracy']:.1f}%")
    for column in header:
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in rows:
        table.add_row(*row)
    stdout.print(table)
    stdout.print(f"report: {out / 'report.html'}")
