"""`prunekit search`: a budget in, the best per-layer allocation prunekit finds out, next to the uniform one."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from prunekit.cli.common import (
    AllowPickleOption,
    DeviceOption,
    DtypeOption,
    ModelArg,
    OutDirOption,
    OverwriteOption,
    TrustRemoteCodeOption,
    stdout,
)
from prunekit.recipe import SEED_MAX


def search(
    model: ModelArg,
    target: Annotated[str, typer.Option(help="The budget: params=F keeps the fraction F of the model's parameters "
                                        "(non-zero), e.g. params=0.75.", show_default=False)] = ...,
    out: OutDirOption = ...,
    method: Annotated[str, typer.Option(help="The score that ranks each layer's weights: magnitude | wanda | ria.")
                      ] = "wanda",
    generations: Annotated[int, typer.Option(min=0, help="Generations of the evolutionary search.")] = 40,
    offspring: Annotated[int, typer.Option(min=1, help="Children per generation, each scored on the first "
                                           "held-out window.")] = 12,
    survivors: Annotated[int, typer.Option(min=1, help="Best children scored on every held-out window against "
                                           "the parent.")] = 2,
    step: Annotated[float, typer.Option(help="Sparsity one mutation moves from one layer to another.")] = 0.05,
    max_sparsity: Annotated[float, typer.Option(help="No layer is pruned beyond this.")] = 0.9,
    max_switches: Annotated[int, typer.Option(min=1, max=64, help="Mutations per child: 1 to this, at "
                                              "random.")] = 3,
    fitness_samples: Annotated[int, typer.Option(min=1, help="Held-out calibration windows (of --calib-seq-len "
                                                 "tokens) the KL divergence is measured on.")] = 4,
    time_limit: Annotated[float | None, typer.Option(help="Stop after the generation that passes this many "
                                                     "seconds.  [default: none]")] = None,
    calib: Annotated[str, typer.Option("--calib", help="Calibration text (see `prunekit prune --help`).")
                     ] = "wikipedia",
    calib_samples: Annotated[int, typer.Option(min=1, help="Calibration windows of the scores and the final "
                                               "prune.")] = 128,
    calib_seq_len: Annotated[int, typer.Option(min=2, help="Tokens per calibration window.")] = 512,
    ppl: Annotated[bool, typer.Option("--ppl/--no-ppl", help="Perplexity of the dense, uniform and searched "
                                      "models.")] = True,
    eval_text: Annotated[str, typer.Option("--eval-text", help="Held-out text for perplexity.")] = "wikipedia",
    ppl_samples: Annotated[int, typer.Option(min=1, help="Perplexity windows.")] = 16,
    ppl_seq_len: Annotated[int, typer.Option(min=2, help="Tokens per perplexity window.")] = 1024,
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Seed of calibration sampling and the search.")] = 0,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    trust_remote_code: TrustRemoteCodeOption = False,
    allow_pickle: AllowPickleOption = False,
    overwrite: OverwriteOption = False,
) -> None:
    """Find the sparsity of each decoder layer that meets --target with the least damage, and prune MODEL with it.

    EvoPress's evolutionary search (Sieberling et al., ICML 2025): every candidate keeps exactly the budget (a
    mutation moves --step of sparsity from one layer to another), its fitness is the KL divergence from the dense
    model on held-out calibration windows, and each layer's mask comes from one table of the dense model's --method
    scores, so a candidate costs a few forward passes. The chosen allocation is then pruned by the engine like any
    `prunekit prune` run, next to the uniform allocation of the same budget. OUT gets the model, prunekit.json,
    recipe.yaml (`prunekit prune --recipe OUT/recipe.yaml` reproduces it) and search.json (the allocation, both
    fitnesses and perplexities, the search's history). A rerun with the same settings resumes an interrupted search.

      prunekit search smollm2-135m --target params=0.75 --out out/search-75

      prunekit search smollm2-135m --target params=0.6 --method ria --generations 80 --time-limit 1800 --out out/s60
    """
    from prunekit.engine.search import EvolutionSettings
    from prunekit.recipe import CalibrationConfig, EvaluationConfig
    from prunekit.search import SearchConfig, parse_target, run_search

    config = SearchConfig(
        model=model, target=parse_target(target), method=method.lower(),
        settings=EvolutionSettings(step=step, max_sparsity=max_sparsity, generations=generations,
                                   offspring=offspring, survivors=survivors, max_switches=max_switches,
                                   time_limit=time_limit),
        fitness_samples=fitness_samples,
        calibration=CalibrationConfig(source=calib, samples=calib_samples, seq_len=calib_seq_len),
        evaluation=EvaluationConfig(source=eval_text, samples=ppl_samples, seq_len=ppl_seq_len) if ppl else None,
        seed=seed, dtype=dtype, device=device, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
    )
    result = run_search(config, out, overwrite)
    kept, fitness, ppls = result["parameters"], result["fitness"], result["perplexity"]
    table = Table(title=f"{model}, params={config.target:g}: {result['evaluated']} candidates in "
                        f"{result['generations']} generations ({result['seconds']['search']:.0f} s)")
    for column in ("allocation", "parameters kept", "KL (search)", "KL (pruned)", "perplexity"):
        table.add_column(column, justify="left" if column == "allocation" else "right")
    table.add_row("dense", f"{kept['dense']:,}", "0", "0", _number(ppls["dense"]))
    table.add_row(f"uniform {result['uniform_sparsity']:.4f}", f"{kept['uniform_kept']:,}",
                  f"{fitness['uniform_table']:.5f}", f"{fitness['uniform_pruned']:.5f}", _number(ppls["uniform"]))
    table.add_row("searched", f"{kept['searched_kept']:,}", f"{fitness['searched_table']:.5f}",
                  f"{fitness['searched_pruned']:.5f}", _number(ppls["searched"]))
    stdout.print(table)
    stdout.print("layer sparsity: " + " ".join(f"{s:.2f}" for s in result["layer_sparsity"]))
    stdout.print(f"saved: {out} (model, prunekit.json, recipe.yaml, search.json)")


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
