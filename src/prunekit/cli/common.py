"""What every command module shares: the console, the options several commands take, the method lists, errors."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

stdout = Console(width=None if sys.stdout.isatty() else 120)  # piped output: no 80-column squeeze

ModelArg = Annotated[
    str,
    typer.Argument(
        help="An offline model name (see `prunekit models`), a Hugging Face model directory, a .gguf file, "
        "or a hub id such as Qwen/Qwen2.5-0.5B (needs the network).",
        show_default=False,
    ),
]
OutDirOption = Annotated[Path, typer.Option("--out", "-o", help="Output directory (must not exist).")]
OverwriteOption = Annotated[bool, typer.Option(help="Replace --out if it exists.")]
TrustRemoteCodeOption = Annotated[bool, typer.Option(help="Allow code shipped with a model to run.")]
AllowPickleOption = Annotated[bool, typer.Option(help="Load pickled .bin/.pt weights (they can run code).")]
DeviceOption = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")]
DtypeOption = Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")]

TASKS_HELP = ("Comma-separated zero-shot tasks. The pruning papers' tasks, scored as lm-evaluation-harness scores "
              "them (data offline): arc_easy, arc_challenge, hellaswag, piqa, winogrande, boolq, openbookqa, rte, "
              "social_iqa, mmlu, mmlu_SUBJECT; closed-book generation (exact match): triviaqa, nq_open; groups: "
              "paper (the papers' table: boolq, rte, hellaswag, winogrande, arc_easy, arc_challenge, openbookqa, "
              "piqa, mmlu), knowledge (triviaqa, nq_open). BIG-bench: goal_inference, step_inference, "
              "date_understanding, physics, causal_judgment, any bigbench:TASK\\[/SUBTASK]. Or a .jsonl file of "
              "{context, choices, gold}.")
PROMPT_HELP = "How BIG-bench examples become contexts: plain (the input as is) | bigbench (Q:/A: with the choices)."


def method_choices() -> dict[str, list[str]]:
    """Every pruning method by kind (weights, blocks, width): the one place the command line reads the method
    tables, so a new method shows up in every command's help."""
    from prunekit.methods import names

    return {"weights": names("weights"), "blocks": names("depth"), "width": names("width"),
            "vocabulary": names("vocabulary")}


def methods_help() -> str:
    """The help of `prunekit prune --method`."""
    from prunekit.recipe import DEFAULT_METHOD

    kinds = method_choices()
    return (f"Weights: {' | '.join(kinds['weights'])}.  Blocks: {' | '.join(kinds['blocks'])}.  "
            f"Width (with --part): {' | '.join(kinds['width'])}.  Tokens (with --coverage or --keep-tokens): "
            f"{' | '.join(kinds['vocabulary'])}.  `prunekit methods` says what each does.  "
            f"[default: {DEFAULT_METHOD}]")


def weight_methods_help() -> str:
    """The help of `prunekit sweep --methods`: sweeps take the weight methods only."""
    return f"Comma-separated: {', '.join(method_choices()['weights'])}."


def say_error(console: Console, message: str) -> None:
    """`error: MESSAGE` on one line, whatever the message held."""
    from rich.markup import escape

    line = " ".join(message.split())
    console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
