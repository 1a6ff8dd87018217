"""The `prunekit` command line: one thin module per command group (parse, call the API, print), assembled here.

`app` is the typer application and `main` the console entry point (`prunekit`, `python -m prunekit`).
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from prunekit.cli import bench, corpus, data, export, prune, recover, report, search, sweep
from prunekit.cli import eval as evaluation
from prunekit.cli.common import say_error
from prunekit.errors import PrunekitError

__all__ = ["app", "main"]

app = typer.Typer(
    help="Prune Hugging Face causal LMs layer by layer and measure what it costs. "
    "Start with `prunekit models`, then `prunekit prune smollm2-135m --method wanda --sparsity 0.5 --out out/x`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(prune.models)
app.command()(prune.methods)
app.command()(prune.fetch)
app.command()(prune.prune)
app.command("eval")(evaluation.evaluate_command)
app.command()(recover.recover)
app.command()(sweep.sweep)
app.command()(search.search)
app.command()(report.report)
app.command()(bench.bench)
app.command()(export.export)

data_app = typer.Typer(help="Data pruning. Labelled datasets: score examples, keep a subset, run pruning-rate "
                       "experiments (prune, experiment). Text corpora: semantic dedup, perplexity filter, recipes "
                       "with cluster quotas and D4, locally or on Ray (dedup, ppl-filter, prune --recipe).",
                       no_args_is_help=True)
data_app.command("prune")(data.data_prune)
data_app.command("dedup")(corpus.data_dedup)
data_app.command("ppl-filter")(corpus.data_ppl_filter)
data_app.command("experiment")(data.data_experiment)
app.add_typer(data_app, name="data")


def main() -> None:
    """The `prunekit` entry point: a user error (PrunekitError, or a malformed command line) is one line on stderr
    and exit code 2; nothing prints a traceback for it."""
    from typer.exceptions import Abort, Exit, TyperException

    errors = Console(stderr=True)
    try:
        code = app(standalone_mode=False)
    except PrunekitError as error:
        say_error(errors, str(error))
        sys.exit(2)
    except TyperException as error:  # typer's own usage errors: unknown option, value of the wrong type
        if type(error).__name__ == "NoArgsIsHelpError":
            print(error.format_message())
            sys.exit(0)
        context = getattr(error, "ctx", None)
        command = context.command_path if context is not None else "prunekit"
        say_error(errors, f"{error.format_message()} (see `{command} --help`)")
        sys.exit(2)
    except Exit as done:
        sys.exit(done.exit_code)
    except (KeyboardInterrupt, Abort):
        errors.print("interrupted: no output was written")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
