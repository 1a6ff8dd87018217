"""Corpus recipes: the steps by name, presets (dedup, D4) and the YAML file of `prunekit data prune --recipe`.

    input: corpus.jsonl          # or give it on the command line
    text_column: text
    executor: local              # or ray (ray_address: HOST:PORT to join a running cluster)
    output_format: parquet       # or jsonl
    steps:
      - embed: {model: all-minilm-l6-v2}
      - cluster: {clusters: 100}
      - semdedup: {}
      - dedup-filter: {epsilon: 0.05}
      - perplexity: {model: smollm2-135m}
      - score-filter: {column: perplexity, keep: 0.8, keep_from: lowest}
      - quotas: {keep: 0.5}
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

from prunekit.corpus.cluster import CENTROID_DISTANCE, ClusterStep
from prunekit.corpus.embed import EmbedStep
from prunekit.corpus.perplexity import PerplexityStep
from prunekit.corpus.quotas import ComplexityQuotaStep
from prunekit.corpus.select import DuplicateFilter, ScoreFilter, ThresholdFilter
from prunekit.corpus.semdedup import SemDedupStep
from prunekit.corpus.step import Step
from prunekit.errors import PrunekitError
from prunekit.files import read_yaml

STEPS: dict[str, type[Step]] = {
    "embed": EmbedStep,
    "perplexity": PerplexityStep,
    "cluster": ClusterStep,
    "semdedup": SemDedupStep,
    "dedup-filter": DuplicateFilter,
    "score-filter": ScoreFilter,
    "threshold-filter": ThresholdFilter,
    "quotas": ComplexityQuotaStep,
}
PRESETS = ("dedup", "d4")


def dedup_steps(epsilon: float = 0.05, clusters: int | None = None, seed: int = 0) -> list[Step]:
    """SemDeDup: cluster, similarity to earlier members, drop above 1 - epsilon."""
    return [ClusterStep(clusters=clusters, seed=seed), SemDedupStep(), DuplicateFilter(epsilon)]


def d4_steps(epsilon: float = 0.05, keep: float = 0.5, clusters: int | None = None, seed: int = 0) -> list[Step]:
    """D4 (Tirumala et al. 2023): SemDeDup, then cluster again and keep the `keep` fraction of what is left that is
    farthest from its centroid (the self-supervised prototype metric)."""
    return [*dedup_steps(epsilon, clusters, seed), ClusterStep(clusters=clusters, seed=seed + 1),
            ScoreFilter(column=CENTROID_DISTANCE, keep=keep, keep_from="highest")]


def build_step(name: str, settings: dict | None) -> list[Step]:
    """One step (or a preset's steps) from its recipe name and settings; one-line errors for bad ones."""
    settings = dict(settings or {})
    if name in PRESETS:
        factory = {"dedup": dedup_steps, "d4": d4_steps}[name]
        allowed = list(inspect.signature(factory).parameters)
        unknown = sorted(set(settings) - set(allowed))
        if unknown:  # checked here: a TypeError from inside the factory would say something else
            raise PrunekitError(f"{name}: {', '.join(unknown)} is not a setting of this preset; it takes "
                                f"{', '.join(allowed)}")
        return factory(**settings)
    if name not in STEPS:
        raise PrunekitError(f"unknown corpus step {name!r}: use one of {', '.join([*STEPS, *PRESETS])}")
    step_class = STEPS[name]
    allowed = [f.name for f in dataclasses.fields(step_class) if not f.name.startswith("_")]
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise PrunekitError(f"{name}: {', '.join(unknown)} is not a setting of this step; it takes "
                            f"{', '.join(allowed) or 'no settings'}")
    return [step_class(**settings)]


class CorpusRecipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str | None = None
    text_column: str = "text"
    id_column: str | None = None
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    output_format: Literal["parquet", "jsonl"] = "parquet"
    steps: list[dict[str, dict | None]]
    _path: Path | None = PrivateAttr(default=None)

    def build(self) -> list[Step]:
        """The steps; a bad one is a one-line error naming the recipe file, the step and the setting."""
        where = f"recipe {self._path}: " if self._path else "recipe: "
        steps: list[Step] = []
        for number, entry in enumerate(self.steps, 1):
            if len(entry) != 1:
                raise PrunekitError(f"{where}step {number} {entry}: write each step as `- NAME: {{settings}}`, "
                                    "one per item")
            (name, settings), = entry.items()
            try:
                steps.extend(build_step(name, settings))
            except PrunekitError as e:
                message = str(e).removeprefix(f"{name}: ")  # the step is named in the prefix already
                raise PrunekitError(f"{where}step {number} ({name}): {message}") from None
        if not steps:
            raise PrunekitError(f"{where}the recipe has no steps: list them under `steps:`")
        return steps


def load_recipe(path: Path) -> CorpusRecipe:
    """The recipe at `path`, every field and step checked (steps are built once here, so a bad setting fails before
    any corpus is read)."""
    data = read_yaml(Path(path), "recipe")
    if data is not None and not isinstance(data, dict):
        raise PrunekitError(f"recipe {path}: expected a mapping with `steps:` (and input, executor...), got a "
                            f"{type(data).__name__}")
    try:
        recipe = CorpusRecipe.model_validate(data or {})
    except ValidationError as e:
        error = e.errors()[0]
        # Items counted from 1, as in the step messages: ("steps", 0, "embed") -> "steps: step 1: embed".
        field = ": ".join(f"step {p + 1}" if isinstance(p, int) else str(p) for p in error["loc"]) or "recipe"
        got = repr(error.get("input"))
        got = got if len(got) <= 60 else got[:57] + "..."
        raise PrunekitError(f"recipe {path}: {field}: {error['msg'].lower()} (got {got})") from None
    recipe._path = Path(path)
    recipe.build()
    return recipe
