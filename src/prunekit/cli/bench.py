"""`prunekit bench`: speed and size of models side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from prunekit.cli.common import DeviceOption, DtypeOption, OverwriteOption, TrustRemoteCodeOption, stdout
from prunekit.errors import PrunekitError
from prunekit.recipe import SEED_MAX


def bench(
    models: Annotated[list[str], typer.Argument(help="Models to compare; the first is the baseline of the ratios "
                                                "(offline names, directories, .gguf files or hub ids).")],
    prompt_len: Annotated[int, typer.Option(help="Prompt tokens (prefill).")] = 128,
    new_tokens: Annotated[int, typer.Option(help="Tokens decoded after the prompt.")] = 64,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated decode batch sizes.")] = "1,8",
    repeats: Annotated[
        int | None, typer.Option(help="Measured runs per model (medians reported). \\[default: 5; 1 with --draft]",
                                 show_default=False)
    ] = None,
    warmup: Annotated[int, typer.Option(help="Discarded runs per model first.")] = 1,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads per model (default: torch's, one per core; use 1 on a busy "
                                 "machine).")
    ] = None,
    interleave: Annotated[
        bool, typer.Option("--interleave/--sequential", help="Alternate the models' runs (all loaded at once), "
                           "or run one model after another.")
    ] = True,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Seed of the random prompt ids.")] = 0,
    trust_remote_code: TrustRemoteCodeOption = False,
    draft: Annotated[
        list[str] | None, typer.Option("--draft", help="Speculative decoding instead of the speed table: a draft "
                                       "model for the one TARGET (repeatable). Measures greedy assisted generation "
                                       "with each draft against the target alone: acceptance rate, tokens/s, "
                                       "speedup, prompts whose output equals the target's. A draft with another "
                                       "tokenizer (a vocabulary-trimmed copy) is mapped by token string.",
                                       show_default=False)
    ] = None,
    prompts: Annotated[
        Path | None, typer.Option(help="With --draft: prompts, one per line, or JSONL (a string or "
                                  '{"prompt": ...} per line) for prompts that span lines. \\[default: 8 built-in '
                                  "Python signatures with docstrings]", show_default=False)
    ] = None,
    draft_tokens: Annotated[
        int | None, typer.Option(help="With --draft: tokens a draft proposes per round at most (transformers' "
                                 "num_assistant_tokens). \\[default: 20]", show_default=False)
    ] = None,
    ignore_eos: Annotated[
        bool, typer.Option("--ignore-eos", help="With --draft: always generate --new-tokens (EOS suppressed); by "
                           "default a prompt stops at EOS.")
    ] = False,
    sparse_kernels: Annotated[
        bool, typer.Option("--sparse-kernels", help="CUDA only: run the model's 2:4-sparse linear weights through "
                           "PyTorch's semi-structured sparse kernels and compare prefill and decode speed with the "
                           "same model dense, and the logits' largest difference.")
    ] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also write the result as JSON here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON instead of a table.")] = False,
    overwrite: OverwriteOption = False,
) -> None:
    """Speed and size side by side: parameters, file size, prefill tokens/s, time to first token, decode
    tokens/s per batch size and peak memory, each model in its own process, medians of repeated runs.

    Decode is a greedy loop with the KV cache on a fixed random prompt (no EOS), timed alone. Uses the GPU when
    there is one. Compare figures within one run only.

    With --draft, one TARGET decodes greedily alone and with each draft (transformers' assisted generation) on
    code prompts, in this process. With --sparse-kernels (CUDA), one model runs dense and through the 2:4 sparse
    kernels.

    Examples:

      prunekit bench smollm2-135m out/smol-minus8 out/smol-mlp75 --out bench.json

      prunekit bench qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b --draft out/coder-0.5b-vocab --threads 1 \
        --dtype bfloat16

      prunekit bench out/smol-wanda-2to4 --sparse-kernels --batch-sizes 1,16
    """
    from prunekit.outputs import check_output

    _check_modes(models, draft, sparse_kernels, prompts, draft_tokens, ignore_eos)
    if out is not None:
        check_output(out, overwrite, [*models, *(draft or [])], kind="file")
    if draft:
        result, table = _assisted(models[0], draft, prompts, new_tokens, repeats, warmup, draft_tokens, ignore_eos,
                                  threads, device, dtype, trust_remote_code)
        _emit(result, table, out, overwrite, tuple(models) + tuple(draft), as_json)
        return
    sizes = _batch_sizes(batch_sizes)
    if sparse_kernels:
        result, table = _sparse(models[0], prompt_len, new_tokens, sizes, repeats, warmup, threads, device, dtype,
                                seed, trust_remote_code)
        _emit(result, table, out, overwrite, tuple(models), as_json)
        return
    from prunekit.eval.speed import SpeedConfig, benchmark_models, render_table

    config = SpeedConfig(prompt_len=prompt_len, new_tokens=new_tokens, batch_sizes=sizes,
                         repeats=5 if repeats is None else repeats, warmup=warmup, device=device, dtype=dtype,
                         seed=seed, interleave=interleave, threads=threads, trust_remote_code=trust_remote_code)
    result = benchmark_models(models, config)
    _emit(result, render_table(result), out, overwrite, tuple(models), as_json)


def _check_modes(models: list[str], draft: list[str] | None, sparse_kernels: bool, prompts: Path | None,
                 draft_tokens: int | None, ignore_eos: bool) -> None:
    """--draft and --sparse-kernels each take one model; the --draft options mean nothing without it."""
    if draft and sparse_kernels:
        raise PrunekitError("--draft and --sparse-kernels are two separate benchmarks: run them one at a time")
    mode = "--draft" if draft else "--sparse-kernels" if sparse_kernels else None
    if mode is not None and len(models) != 1:
        raise PrunekitError(f"{mode} takes one model, not {len(models)}: prunekit bench MODEL {mode}"
                            f"{' DRAFT' if draft else ''}")
    if not draft:
        given = [name for name, value in (("--prompts", prompts), ("--draft-tokens", draft_tokens),
                                          ("--ignore-eos", ignore_eos or None)) if value is not None]
        if given:
            raise PrunekitError(f"{', '.join(given)} only apply with --draft: add --draft DRAFT, or leave them out")


def _batch_sizes(batch_sizes: str) -> tuple[int, ...]:
    try:
        return tuple(int(b) for b in batch_sizes.split(","))
    except ValueError:
        raise PrunekitError(f"--batch-sizes {batch_sizes!r} must be comma-separated integers, e.g. 1,8") from None


def _assisted(target: str, drafts: list[str], prompts: Path | None, new_tokens: int, repeats: int | None,
              warmup: int, draft_tokens: int | None, ignore_eos: bool, threads: int | None, device: str, dtype: str,
              trust_remote_code: bool) -> tuple[dict, Any]:
    from prunekit.eval.assisted import AssistedConfig, compare_drafts, read_prompts, render_table

    config = AssistedConfig(new_tokens=new_tokens, repeats=1 if repeats is None else repeats, warmup=warmup,
                            draft_tokens=20 if draft_tokens is None else draft_tokens, ignore_eos=ignore_eos,
                            device=device, dtype=dtype, threads=threads, trust_remote_code=trust_remote_code)
    result = compare_drafts(target, drafts, None if prompts is None else read_prompts(prompts), config)
    return result, render_table(result)


def _sparse(model: str, prompt_len: int, new_tokens: int, sizes: tuple[int, ...], repeats: int | None, warmup: int,
            threads: int | None, device: str, dtype: str, seed: int, trust_remote_code: bool) -> tuple[dict, Any]:
    from prunekit.eval.sparse_kernels import SparseKernelConfig, benchmark_sparse_kernels, render_table

    config = SparseKernelConfig(prompt_len=prompt_len, new_tokens=new_tokens, batch_sizes=sizes,
                                repeats=5 if repeats is None else repeats, warmup=warmup, device=device, dtype=dtype,
                                seed=seed, threads=threads, trust_remote_code=trust_remote_code)
    result = benchmark_sparse_kernels(model, config)
    return result, render_table(result)


def _emit(result: dict, table: Any, out: Path | None, overwrite: bool, inputs: tuple, as_json: bool) -> None:
    from prunekit.eval.speed import write_json

    if out is not None:
        write_json(result, out, overwrite, inputs)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        stdout.print(table)
