"""`prunekit bench`: speed and size of models side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

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
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Seed of the random prompt ids.")] = 0,
    trust_remote_code: TrustRemoteCodeOption = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also write the result as JSON here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON instead of a table.")] = False,
    overwrite: OverwriteOption = False,
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
