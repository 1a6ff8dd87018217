"""`prunekit sweep`: prune at every method x sparsity (x pattern) and tabulate the results."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from prunekit.cli.common import (
    PROMPT_HELP,
    TASKS_HELP,
    AllowPickleOption,
    DeviceOption,
    DtypeOption,
    ModelArg,
    OutDirOption,
    OverwriteOption,
    TrustRemoteCodeOption,
    stdout,
    weight_methods_help,
)
from prunekit.recipe import SEED_MAX, parse_floats, split_list


def sweep(
    model: ModelArg,
    out: OutDirOption = ...,
    methods: Annotated[str, typer.Option(help=weight_methods_help() + "  Add +dsnot (DSnoT mask refinement) and/or "
                                         "+permute (N:M channel permutation; N:M points only) to a name: "
                                         "wanda+dsnot, ria+permute, wanda+++dsnot.")] = "magnitude,wanda,sparsegpt",
    sparsity: Annotated[str, typer.Option(help="Comma-separated fractions of the weights removed (unstructured "
                                          "patterns).")] = "0.3,0.5,0.6,0.7",
    pattern: Annotated[str, typer.Option(help="Comma-separated: unstructured (at every --sparsity) and/or N:M such "
                                         "as 2:4 (at its own sparsity, N/M).")] = "unstructured",
    tasks: Annotated[str | None, typer.Option(help=TASKS_HELP + "  [default: none]")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Zero-shot examples per task.  [default: all]")] = None,
    prompt: Annotated[str, typer.Option(help=PROMPT_HELP)] = "plain",
    ppl: Annotated[bool, typer.Option("--ppl/--no-ppl", help="Measure perplexity at every point.")] = True,
    eval_text: Annotated[str, typer.Option("--eval-text", help="Held-out text for perplexity.")] = "wikipedia",
    ppl_samples: Annotated[int, typer.Option(help="Perplexity windows.")] = 16,
    ppl_seq_len: Annotated[int, typer.Option(help="Tokens per perplexity window.")] = 1024,
    calib: Annotated[str, typer.Option("--calib", help="Calibration text (see `prunekit prune --help`).")
                     ] = "wikipedia",
    calib_samples: Annotated[int, typer.Option(help="Calibration windows.")] = 128,
    calib_seq_len: Annotated[int, typer.Option(help="Tokens per calibration window.")] = 512,
    save_models: Annotated[bool, typer.Option(help="Also save every pruned model (safetensors) in its point's "
                                              "folder.")] = False,
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Seed of calibration sampling and the zero-shot "
                                      "shuffle.")] = 0,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    trust_remote_code: TrustRemoteCodeOption = False,
    allow_pickle: AllowPickleOption = False,
    overwrite: OverwriteOption = False,
) -> None:
    """Prune MODEL at every method x sparsity (x pattern), evaluate each point the same way, write a results table.

    The model is loaded, calibrated and evaluated dense once; each point starts from the dense weights. OUT gets
    sweep.json, results.csv and points/NAME/{prunekit.json, recipe.yaml}; `prunekit report OUT` plots it. An
    interrupted sweep resumes from OUT.partial when rerun with the same settings.

      prunekit sweep smollm2-135m --methods magnitude,wanda,sparsegpt --sparsity 0.3,0.5,0.6,0.7 --out out/sweep

      prunekit sweep smollm2-135m --methods wanda,sparsegpt --pattern 2:4,4:8 --tasks goal_inference --out out/nm

      prunekit sweep smollm2-135m --methods wanda+dsnot,ria+permute,alps,wanda++ --pattern unstructured,2:4 --out out/os
    """
    from prunekit.recipe import CalibrationConfig, EvaluationConfig
    from prunekit.sweep import SweepConfig, results_rows, run_sweep

    config = SweepConfig(
        model=model, methods=[m.lower() for m in split_list(methods)], sparsities=parse_floats(sparsity, "--sparsity"),
        patterns=split_list(pattern), seed=seed, save_models=save_models, dtype=dtype, device=device,
        trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
        calibration=CalibrationConfig(source=calib, samples=calib_samples, seq_len=calib_seq_len),
        evaluation=EvaluationConfig(source=eval_text, samples=ppl_samples, seq_len=ppl_seq_len) if ppl else None,
        tasks=split_list(tasks) if tasks else [], limit=limit, prompt=prompt,
    )
    result = run_sweep(config, out, overwrite)
    rows = results_rows(result)
    table = Table(title=f"{model}: {len(result['points'])} points in {result['seconds']['total']:.0f} s")
    columns = list(dict.fromkeys(k for row in rows for k in row))
    for column in columns:
        table.add_column(column, justify="left" if column in ("method", "pattern") else "right")
    for row in rows:
        table.add_row(*(_cell(row.get(column)) for column in columns))
    stdout.print(table)
    stdout.print(f"saved: {out} (results.csv, sweep.json); plot it with `prunekit report {out}`")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)
