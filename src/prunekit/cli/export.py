"""`prunekit export`: a saved model directory as a file another runtime runs (GGUF for llama.cpp)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunekit.cli.common import OverwriteOption, stdout
from prunekit.errors import PrunekitError


def export(
    model_dir: Annotated[Path, typer.Argument(help="A saved model directory: a `prunekit prune` output or any "
                                              "Hugging Face directory with config.json, *.safetensors and "
                                              "tokenizer.json.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="The GGUF file to write (must not exist).",
                                      show_default=False)],
    to: Annotated[str, typer.Option(help="Output format: gguf.")] = "gguf",
    type: Annotated[str, typer.Option("--type", help="f32 (exact) | f16 | q8_0 (2-D weights in 8-bit blocks; "
                                      "norms and biases stay f32).")] = "f16",
    overwrite: OverwriteOption = False,
) -> None:
    """Write a model directory as one GGUF file for llama.cpp (llama-cli, llama-server, llama-bench, Ollama).

    Structurally pruned models export as they are: the file's block count, MLP width and head counts are read
    off the weights. The tokenizer (vocabulary, merges, special tokens, chat template) comes from the
    directory's tokenizer.json. Families: llama, mistral, qwen2, qwen3.

    Example:

      prunekit prune smollm2-135m --method block-influence --sparsity 0.25 --out out/smol-depth25

      prunekit export out/smol-depth25 --to gguf --type q8_0 --out smol-depth25.q8_0.gguf

      llama-cli -m smol-depth25.q8_0.gguf -p "The capital of France is"
    """
    from prunekit.models.export_gguf import TYPES, export_gguf

    if to != "gguf":
        raise PrunekitError(f"unknown export format {to!r}: use --to gguf")
    if type not in TYPES:
        raise PrunekitError(f"unknown --type {type!r}: use {', '.join(TYPES)}")
    result = export_gguf(model_dir, out, type=type, overwrite=overwrite)
    for note in result.notes:
        stdout.print(f"[yellow]note:[/] {note}", soft_wrap=True)
    stdout.print(f"wrote {result.path} ({result.bytes / 1e6:,.1f} MB, {result.type}, llama.cpp architecture "
                 f"{result.architecture}, {result.tensors} tensors, vocabulary {result.vocab_size:,}, "
                 f"pre-tokenizer {result.pre_tokenizer})", soft_wrap=True)
