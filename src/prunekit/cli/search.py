"""`prunekit search`: a budget in, the best pruning prunekit finds out, next to the baseline of the same cost."""

from __future__ import annotations

from pathlib import Path
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
                                        "(non-zero), e.g. params=0.75; memory=SIZE fits the weights in SIZE "
                                        "(e.g. memory=400MB); decode=X / prefill=X makes decoding / "
                                        "prefill X times faster on this machine, e.g. decode=1.3x. Several "
                                        "budgets of one kind (params=0.6,0.75,0.9) run one search each into "
                                        "OUT/<budget> and write the front to OUT/front.json.",
                                        show_default=False)] = ...,
    out: OutDirOption = ...,
    space: Annotated[str | None, typer.Option(help="What the search chooses: sparsity (one sparsity per layer) | "
                                              "depth,sparsity (the same, or the layer's block removed) | depth "
                                              "(which blocks to remove) | depth,width (which blocks, and "
                                              "one MLP width for all) | depth,heads (which blocks, and one number "
                                              "of attention heads for all) | depth,heads,width (both) | "
                                              "sparsity,width, heads,sparsity, heads,sparsity,width (one width "
                                              "and / or number of heads for all blocks, then one sparsity per "
                                              "layer), each also with depth (depth,sparsity,width ...).  "
                                              "\\[default: sparsity for params, depth "
                                              "for memory and a speed-up]", show_default=False)] = None,
    method: Annotated[str, typer.Option(help="Sparsity spaces: how each layer is pruned: magnitude | wanda | ria "
                                        "(one score table ranks the weights at every level) | sparsegpt | alps "
                                        "(the kept weights updated: each layer pruned once per level, one copy of "
                                        "the decoder linears per level).")] = "wanda",
    pattern: Annotated[str, typer.Option(help="Space sparsity: unstructured, or N:M to give every layer an N:M "
                                         "pattern of its own: the levels are j/M (2:4 searches dense, 3:4, 2:4 and "
                                         "1:4 per layer, starting from the nearest to uniform).")] = "unstructured",
    generations: Annotated[int, typer.Option(min=0, help="Generations of the evolutionary search.")] = 40,
    offspring: Annotated[int, typer.Option(min=1, help="Children per generation, each scored on the first "
                                           "held-out window.")] = 12,
    survivors: Annotated[int, typer.Option(min=1, help="Best children scored on every held-out window against "
                                           "the parent.")] = 2,
    step: Annotated[float, typer.Option(help="Sparsity spaces: sparsity one mutation moves from one layer to "
                                        "another (depth,sparsity: shrunk to the nearest that divides 1 - the "
                                        "uniform sparsity).")] = 0.05,
    max_sparsity: Annotated[float, typer.Option(help="Sparsity spaces: no layer is pruned beyond this.")] = 0.9,
    max_steps: Annotated[int | None, typer.Option(min=1, help="Sparsity spaces: no layer moves more than this many "
                                                  "--step from the uniform sparsity.  \\[default: no limit; 4 "
                                                  "for sparsegpt and alps]", show_default=False)] = None,
    width_step: Annotated[float, typer.Option(help="Width spaces: levels every this fraction of the MLP channels "
                                              "and of the query heads...")] = 0.1,
    min_width: Annotated[float, typer.Option(help="...down to this fraction of the channels (and the widest "
                                             "uniform width that meets the target with every block)...")] = 0.5,
    min_heads: Annotated[float, typer.Option(help="...and of the query heads (and the most uniform heads that "
                                             "meet it).")] = 0.5,
    width_method: Annotated[str, typer.Option(help="Width spaces: how each MLP's channels and each attention's "
                                              "heads are ranked: wanda-sp | activation | flap.")] = "wanda-sp",
    max_switches: Annotated[int, typer.Option(min=1, max=64, help="Mutations per child: 1 to this, at "
                                              "random.")] = 3,
    fitness_samples: Annotated[int, typer.Option(min=1, help="Held-out calibration windows (of --calib-seq-len "
                                                 "tokens) the KL divergence is measured on.")] = 4,
    time_limit: Annotated[float | None, typer.Option(help="Stop after the generation that passes this many "
                                                     "seconds.  \\[default: none]")] = None,
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
    refresh_latency: Annotated[bool, typer.Option(help="decode= / prefill=: time the model at a few depths again "
                                                  "(the cost model is cached per model, machine, dtype and "
                                                  "threads; refresh it after the machine's load changed).")
                               ] = False,
    recover: Annotated[str | None, typer.Option(help="Then fine-tune the chosen model: lora | distill (from the "
                                                "dense model), as `prunekit recover` does, into --recover-out.  "
                                                "\\[default: none]", show_default=False)] = None,
    recover_steps: Annotated[int, typer.Option(min=1, help="--recover: optimizer steps.")] = 100,
    recover_out: Annotated[Path | None, typer.Option(help="--recover: where the recovered model goes.  \\[default: "
                                                     "OUT-lora or OUT-distill]", show_default=False)] = None,
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Seed of calibration sampling and the search.")] = 0,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    trust_remote_code: TrustRemoteCodeOption = False,
    allow_pickle: AllowPickleOption = False,
    overwrite: OverwriteOption = False,
) -> None:
    """Find the pruning of MODEL that meets --target with the least damage, and prune MODEL with it.

    EvoPress's evolutionary search (Sieberling et al., ICML 2025): every candidate meets the budget exactly, its fitness
    is the KL divergence from the dense model on held-out calibration windows, and a candidate costs a few forward
    passes. Space sparsity: one sparsity per decoder layer (a mutation moves --step from one layer to another; each
    layer at each level comes from one calibration pass of the dense model: a table of --method scores, or the layer
    pruned by SparseGPT / ALPS at every level), against the uniform sparsity of the same budget. Space depth,sparsity:
    the same, where a mutation may also remove a block (the parameters it frees go to the other layers as lower
    sparsity, a step at a time) or restore one. With --pattern N:M every layer gets an N:M pattern of its own (the
    levels j/M), against the nearest-uniform N:M allocation. Space sparsity,width (and heads,sparsity,
    heads,sparsity,width, each also with depth): one MLP width / number of heads for every block, each width level
    pruned uniformly to the budget, then the sparsity search on the best of them. Space depth: which blocks to remove (a
    mutation swaps a removed block for a kept one), starting from and compared with ShortGPT's block influence; a
    speed-up target sets the number of blocks from a latency model measured on this machine, and the result is timed
    like `prunekit bench` (median of 5). Space depth,width: one MLP width for every block (levels every --width-step
    down to --min-width, channels ranked by --width-method) and which blocks to remove at that width, against uniform
    depth and uniform width of the same cost. Space depth,heads: the same with one number of query heads per attention
    (levels every --width-step down to --min-heads; with GQA a key/value group's worth at a time, the keys and values
    kept), and depth,heads,width both at once (every combination of the levels), also against uniform heads.

    OUT gets the model, prunekit.json, recipe.yaml (`prunekit prune --recipe OUT/recipe.yaml` reproduces it) and
    search.json (the choice, both fitnesses and perplexities, the cost, the history). A rerun with the same settings
    resumes an interrupted search.

      prunekit search smollm2-135m --target params=0.75 --out out/search-75

      prunekit search smollm2-135m --target params=0.75 --method sparsegpt --out out/search-75-sparsegpt

      prunekit search smollm2-135m --target params=0.6 --space depth,sparsity --out out/search-60-ds

      prunekit search smollm2-135m --target params=0.6 --space sparsity,width --out out/search-60-sw

      prunekit search smollm2-135m --target params=0.605 --pattern 2:4 --out out/search-nm

      prunekit search smollm2-135m --target decode=1.3x --out out/search-decode

      prunekit search smollm2-135m --target decode=1.3x --space depth,width --out out/search-decode-dw

      prunekit search smollm2-135m --target params=0.75 --space depth,heads,width --out out/search-75-dhw

      prunekit search smollm2-135m --target params=0.6,0.75,0.9 --out out/front

      prunekit search smollm2-135m --target params=0.6 --method ria --generations 80 --time-limit 1800 --out out/s60
    """
    from prunekit.engine.search import EvolutionSettings
    from prunekit.recipe import CalibrationConfig, EvaluationConfig
    from prunekit.recovery.finetune import RecoveryConfig
    from prunekit.search import SearchConfig, front_targets, run_front, run_search

    recovery = None
    if recover is not None:
        recovery = RecoveryConfig(method=recover.lower(), steps=recover_steps, source=calib, seed=seed,
                                  seq_len=min(256, calib_seq_len))

    config = SearchConfig(
        model=model, target=target, space=space and space.lower(), method=method.lower(), pattern=pattern,
        settings=EvolutionSettings(step=step, max_sparsity=max_sparsity, max_steps=max_steps, generations=generations,
                                   offspring=offspring, survivors=survivors, max_switches=max_switches,
                                   time_limit=time_limit),
        fitness_samples=fitness_samples,
        calibration=CalibrationConfig(source=calib, samples=calib_samples, seq_len=calib_seq_len),
        evaluation=EvaluationConfig(source=eval_text, samples=ppl_samples, seq_len=ppl_seq_len) if ppl else None,
        seed=seed, dtype=dtype, device=device, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
        refresh_latency=refresh_latency, recover=recovery, recover_out=recover_out, width_step=width_step,
        min_width=min_width, min_heads=min_heads, width_method=width_method.lower(),
    )
    if "," in target:
        _print_front(run_front(config, front_targets(target), out, overwrite), out)
        return
    result = run_search(config, out, overwrite)
    kept, fitness, ppls = result["parameters"], result["fitness"], result["perplexity"]
    table = Table(title=f"{model}, {result['target']['text']} ({result['space']}): {result['evaluated']} candidates "
                        f"in {result['generations']} generations ({result['seconds']['search']:.0f} s)")
    for column in ("model", "parameters kept", "KL (search)", "KL (pruned)", "perplexity"):
        table.add_column(column, justify="left" if column == "model" else "right")
    table.add_row("dense", f"{kept['dense']:,}", "0", "0", _number(ppls["dense"]))
    for baseline in result.get("baselines") or [{
            "name": result["baseline"], "parameters_kept": kept["baseline_kept"], "perplexity": ppls["baseline"],
            "fitness_search": fitness["baseline_search"], "fitness_pruned": fitness["baseline_pruned"]}]:
        searched_as = baseline["fitness_search"]  # None: a uniform recipe the search did not start from
        table.add_row(baseline["name"], f"{baseline['parameters_kept']:,}",
                      "-" if searched_as is None else f"{searched_as:.5f}", f"{baseline['fitness_pruned']:.5f}",
                      _number(baseline["perplexity"]))
    table.add_row("searched", f"{kept['searched_kept']:,}", f"{fitness['searched_search']:.5f}",
                  f"{fitness['searched_pruned']:.5f}", _number(ppls["searched"]))
    stdout.print(table)
    sparsity = "sparsity" in result["space"]
    if "width" in result:
        width = result["width"]
        heads = f"; heads kept: {width['searched_heads']} of {width['heads']}" if "heads" in result["space"] else ""
        blocks = "" if sparsity else f"; blocks removed: {result['blocks']['searched'] or 'none'}"
        stdout.print(f"MLP channels kept: {width['searched']} of {width['channels']} ({width['method']}){heads}"
                     f"{blocks}")
    if "layer_pattern" in result:
        stdout.print("layer pattern: " + " ".join(result["layer_pattern"]))
    elif sparsity:
        stdout.print("layer sparsity: " + " ".join("removed" if s == 1 else f"{s:.2f}"
                                                   for s in result["layer_sparsity"]))
    elif result["space"] == "depth":
        blocks = result["blocks"]
        stdout.print(f"blocks removed: {blocks['searched']} (block influence: {blocks['baseline']})")
    cost = result.get("cost") or {}
    if "measured" in cost:
        kind = result["target"]["key"]
        verdict = ("within 5% of the target" if cost["within_tolerance"] else
                   "faster than the target by more than 5%: the cost model overestimates the time" if cost["met"] else
                   "NOT met: more than 5% slower than the target")
        stdout.print(f"{kind} speed-up: predicted {cost['predicted']:.3f}x, measured {cost['measured']:.3f}x "
                     f"(median of 5; target {result['target']['value']:g}x: {verdict})")
    stdout.print(f"saved: {out} (model, prunekit.json, recipe.yaml, search.json)")
    if "recovered" in result:
        recovered = result["recovered"]
        after = recovered["perplexity"].get("after")
        stdout.print(f"recovered ({recovered['method']}, {recovered['steps']} steps): {recovered['path']}"
                     + (f", perplexity {after:.2f}" if after is not None else ""))


def _print_front(front: dict, out: Path) -> None:
    table = Table(title=f"{front['model']} ({front['space']}): one search per budget; * on the Pareto front")
    for column in ("budget", "cost", "KL", "perplexity", "baseline", "baseline KL", "baseline perplexity"):
        table.add_column(column, justify="left" if column in ("budget", "baseline") else "right")
    for index, point in enumerate(front["points"]):
        mark = " *" if index in front["pareto"] else ""
        table.add_row(point["target"] + mark, f"{point['cost']:.4g}", f"{point['fitness']:.5f}",
                      _number(point["perplexity"]), point["baseline"], f"{point['baseline_fitness']:.5f}",
                      _number(point["baseline_perplexity"]))
    stdout.print(table)
    stdout.print(f"saved: {out} (front.json, and one search output per budget: "
                 f"{', '.join(p['folder'] for p in front['points'])}); `prunekit report {out}` draws the front")


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
