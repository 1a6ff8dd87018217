"""The one writer of a run directory: what `prunekit prune` and `prunekit recover` write to --out, and what a sweep
writes for each point.

A run directory holds the model when there is one (safetensors weights, config, tokenizer), `prunekit.json` (the
report: a record of prunekit.report.schema, or a caller's own dict) and `recipe.yaml` when the run had a recipe.
It is written into a temporary sibling that is renamed into place at the end (prunekit.outputs.atomic_directory):
it exists complete or not at all, is never written over an input, and an existing one is replaced only with
`overwrite`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunekit.outputs import atomic_directory
from prunekit.report.record import Record

if TYPE_CHECKING:
    from prunekit.models.loading import LoadedModel
    from prunekit.recipe import Recipe

REPORT_FILE = "prunekit.json"
RECIPE_FILE = "recipe.yaml"


def report_text(report: Record | Mapping[str, Any]) -> str:
    """A report as the file holds it (the one JSON layout of prunekit.json, sweep.json and the sweep's work files)."""
    data = report.to_json() if isinstance(report, Record) else report
    return json.dumps(data, indent=2) + "\n"


class RunDirectory:
    """The temporary directory being written; `path` is where the model files go."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.finished = False

    def finish(self, report: Record | Mapping[str, Any], recipe: Recipe | None = None) -> None:
        """Write prunekit.json and recipe.yaml: the last files, so the directory is complete after them."""
        (self.path / REPORT_FILE).write_text(report_text(report))
        if recipe is not None:
            (self.path / RECIPE_FILE).write_text(recipe.to_yaml())
        self.finished = True


@contextmanager
def run_directory(out: Path, overwrite: bool = False, inputs: Iterable[Path | str | None] = ()
                  ) -> Iterator[RunDirectory]:
    """Yield a RunDirectory to write the model into and `finish`; renamed to `out` only when the block ends without
    an error after `finish`, so a failure anywhere (saving the model, a bug) leaves no `out`."""
    with atomic_directory(out, overwrite=overwrite, inputs=inputs) as tmp:
        run = RunDirectory(tmp)
        yield run
        if not run.finished:  # a writer's bug, never a user's: a run directory always has its report
            raise RuntimeError(f"{out}: the run directory was closed before its report was written")


def save_model(loaded: LoadedModel, directory: Path) -> None:
    """The model (safetensors, in the checkpoint's own dtype) and its tokenizer; the model's dtype in memory is
    restored afterwards, even when saving fails."""
    model = loaded.model
    original = next(model.parameters()).dtype
    model.to(loaded.saved_dtype)
    try:
        model.save_pretrained(directory)
    finally:
        model.to(original)
    loaded.tokenizer.save_pretrained(directory)


def write_run(out: Path, report: Record | Mapping[str, Any], recipe: Recipe | None = None,
              loaded: LoadedModel | None = None, overwrite: bool = False,
              inputs: Iterable[Path | str | None] = ()) -> None:
    """A whole run directory at once: `loaded`'s model (if given), the report and the recipe; never over the
    model's own directory or the other `inputs`."""
    sources = (loaded.local_path if loaded is not None else None, *inputs)
    with run_directory(out, overwrite, sources) as run:
        if loaded is not None:
            save_model(loaded, run.path)
        run.finish(report, recipe)
