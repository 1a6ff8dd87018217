"""`prunekit search`: give the budget, get the model. EvoPress's evolutionary search (engine/search.py) in one of
these spaces, with the least KL divergence from the dense model on held-out calibration tokens as the goal:

- sparsity: one sparsity per decoder layer, for a parameter budget (params=F);
- depth,sparsity: the same, where a layer may also be removed (its block dropped, the budget it frees spread over
  the other layers as lower sparsity);
- sparsity,width / heads,sparsity / heads,sparsity,width (each also with depth): one MLP width and / or number of
  query heads for every block first, then the sparsity per layer on what is left: every width level is pruned
  uniformly to the budget, and the search refines the best of them;
- depth: which decoder blocks to remove, for a parameter budget or a speed-up on this machine (decode=X,
  prefill=X), with a latency cost model measured on the model itself (engine/latency.py);
- depth,width / depth,heads / depth,heads,width: which blocks, with one MLP width and / or one number of query
  heads for every block (width levels, each built by the engine's width stages).

The chosen model is pruned through the engine and saved with a recipe that reproduces it (`prunekit prune --recipe
OUT/recipe.yaml`), next to the baseline of the same cost it must beat: the uniform sparsity, ShortGPT's block
influence with as many blocks removed, or the uniform widths (with the uniform sparsity that meets the budget). A
latency target is then checked with `prunekit bench`'s measurement.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from prunekit.api import (
    calibration_data,
    check_seq_len,
    evaluate,
    evaluation_data,
    prune,
    prune_report,
    recover_model,
)
from prunekit.assets.cache import cache_dir
from prunekit.budget import LATENCY, Target, memory_fraction, parse_target, weight_bytes
from prunekit.engine.cache import fingerprint
from prunekit.engine.latency import LatencyModel, LatencyProbe, head_indices, latency_model
from prunekit.engine.layerwise import PruneStage
from prunekit.engine.search import (
    Candidates,
    DepthSpace,
    EvolutionSettings,
    KLFitness,
    ScoreLevels,
    SearchState,
    SparsityDepthSpace,
    SparsitySpace,
    WeightLevels,
    WidthDepthSpace,
    WidthLevel,
    check_searchable,
    dense_scores,
    dense_variants,
    evolve,
    layer_numel,
    level_pattern,
    line_neighbours,
)
from prunekit.engine.structured import StructuredStage, choose_blocks, running_layers
from prunekit.errors import PrunekitError
from prunekit.eval.perplexity import PerplexityResult
from prunekit.eval.speed import SpeedConfig, benchmark_models
from prunekit.methods import get_method
from prunekit.methods.cost import blocks_for_params, blocks_for_speedup, blocks_within, max_speedup
from prunekit.methods.evolution import layer_sparsities, nm_allocation, offset_bounds
from prunekit.methods.patterns import SparsityPattern
from prunekit.methods.registry import MethodSpec
from prunekit.models import surgery
from prunekit.models.adapters import adapter_for
from prunekit.models.adapters.base import ModelAdapter
from prunekit.models.loading import load_model, resolve_device
from prunekit.outputs import atomic_directory, atomic_file, check_output
from prunekit.progress import console, progress_bar
from prunekit.recipe import CalibrationConfig, EvaluationConfig, Recipe, StageConfig, StructuredStageConfig
from prunekit.recovery.finetune import RecoveryConfig
from prunekit.rundir import run_directory, save_model
from prunekit.runinfo import count_parameters, count_zeros, peak_rss_bytes, versions
from prunekit.text.sources import load_texts
from prunekit.text.tokens import held_out_windows, token_stream

SEARCH_FILE = "search.json"
FRONT_FILE = "front.json"  # a search over several budgets: one search output per budget next to it
MAX_SWITCHES = 64  # more mutations per child than this is a random restart, not a search step
# the parts, sorted: sparsity spaces (a parameter budget), each with the blocks and / or widths too; then the structured
SPACES = ("sparsity", "depth,sparsity", "sparsity,width", "heads,sparsity", "heads,sparsity,width",
          "depth,sparsity,width", "depth,heads,sparsity", "depth,heads,sparsity,width",
          "depth", "depth,width", "depth,heads", "depth,heads,width")
WIDTH_PROBES = (0.75, 0.5)  # MLP widths the latency plane is timed at, with every block
HEAD_PROBES = (0.75, 0.5)  # fractions of the query heads it is timed at (rounded to what can be kept)
CHANNEL_MULTIPLE = 8  # width levels keep a multiple of this many MLP channels (when the MLP has 64 or more)
BASELINE_DEPTH = "block-influence"  # ShortGPT: the depth baseline, and where the depth search starts
# A weight-updating method's levels are one copy of the decoder linears each: by default a layer moves at most this
# many steps from the uniform sparsity (2 x this + 1 levels).
WEIGHT_LEVEL_STEPS = 4
VERIFY_TOLERANCE = 0.05  # met: measured speed-up >= (1 - this) x target; within tolerance: |measured / target - 1|


@dataclass
class SearchConfig:
    model: str
    target: str | float  # "params=0.75", "decode=1.3x", "prefill=1.3x" (a bare number: params)
    space: str | None = None  # sparsity | depth; default: sparsity for params, depth for a speed-up
    method: str = "wanda"  # sparsity space: how each layer is pruned: magnitude, wanda, ria, sparsegpt or alps
    pattern: str = "unstructured"  # sparsity space: N:M makes the levels j/M, each layer one (M - j):M pattern
    settings: EvolutionSettings = field(default_factory=EvolutionSettings)
    fitness_samples: int = 4  # held-out calibration windows (of calibration.seq_len tokens) the KL is measured on
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    evaluation: EvaluationConfig | None = field(default_factory=EvaluationConfig)  # None: no perplexity
    seed: int = 0
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    allow_pickle: bool = False
    refresh_latency: bool = False  # measure the latency cost model again instead of reading it from the cache
    width_step: float = 0.1  # width spaces: width levels every this fraction of the MLP channels / heads ...
    min_width: float = 0.5  # ... down to this fraction of the channels (and the widest uniform width that meets
    min_heads: float = 0.5  # the target), of the query heads (and the most uniform heads that meet it)
    width_method: str = "wanda-sp"  # width spaces: the width method that ranks each MLP's channels and heads
    recover: RecoveryConfig | None = None  # fine-tune the chosen model afterwards (distill: from the dense model)
    recover_out: Path | None = None  # where the recovered model goes; default: OUT-<recovery method>

    @property
    def parsed_target(self) -> Target:
        return parse_target(self.target)

    @property
    def nm_group(self) -> int:
        """M of an N:M --pattern (the levels are then j / M); 0 for unstructured."""
        return SparsityPattern.parse(self.pattern).m

    @property
    def resolved_space(self) -> str:
        if self.space is None:
            return "sparsity" if self.parsed_target.key == "params" else "depth"
        parts = (p.strip() for p in self.space.lower().split(","))
        return ",".join(sorted(p for p in parts if p))  # width,depth is depth,width

    def check(self) -> None:
        target = self.parsed_target
        if self.resolved_space not in SPACES:
            raise PrunekitError(f"unknown search space {self.space!r}: choose {', '.join(SPACES[:-1])} or "
                                f"{SPACES[-1]}")
        unstructured = "sparsity" in self.resolved_space.split(",")
        if unstructured and target.key in LATENCY:
            raise PrunekitError(f"--target {target} needs structure: unstructured sparsity leaves the dense kernels "
                                "as slow as before; use --space depth")
        if unstructured and target.key == "memory":
            raise PrunekitError("--target memory= needs structure: zeros take as many bytes as other weights in a "
                                "dense checkpoint; use --space depth")
        if self.nm_group and self.resolved_space != "sparsity":
            raise PrunekitError(f"--pattern {self.pattern} gives each layer an N:M pattern of its own in --space "
                                f"sparsity; with --space {self.resolved_space} use the default unstructured pattern")
        parts = set(self.resolved_space.split(",")) - {"depth", "sparsity"}
        for part, least in (("width", self.min_width), ("heads", self.min_heads)):
            if part not in parts:
                continue
            what = "the MLP channels" if part == "width" else "the query heads"
            if not 0.0 < least < 1.0:
                raise PrunekitError(f"min {part} {least:g} must lie in (0, 1): the smallest fraction of {what} a "
                                    "width level keeps, e.g. 0.5")
            if not 0.0 < self.width_step <= 1.0 - least:
                raise PrunekitError(f"width step {self.width_step:g} must lie in (0, 1 - min {part} {least:g}], "
                                    "e.g. 0.1")
        if parts and (get_method(self.width_method).kind != "width" or self.width_method == "taylor"):
            raise PrunekitError(f"width method {self.width_method!r} must rank MLP channels and heads from one "
                                "calibration pass: use wanda-sp, activation or flap")
        s = self.settings
        if not 0.0 < s.max_sparsity < 1.0:
            raise PrunekitError(f"max sparsity {s.max_sparsity:g} must lie in (0, 1), e.g. 0.9")
        if not 0.0 < s.step <= s.max_sparsity:
            raise PrunekitError(f"step {s.step:g} must lie in (0, max sparsity {s.max_sparsity:g}], e.g. 0.05")
        small = {"generations": (s.generations, 0), "offspring": (s.offspring, 1), "survivors": (s.survivors, 1),
                 "fitness samples": (self.fitness_samples, 1)}
        for name, (value, least) in small.items():
            if value < least:
                raise PrunekitError(f"{name} {value} must be at least {least}")
        if not 1 <= s.max_switches <= MAX_SWITCHES:
            raise PrunekitError(f"max switches {s.max_switches} must be between 1 and {MAX_SWITCHES} (mutations per "
                                "child; default 3)")
        if s.max_steps is not None and s.max_steps < 1:
            raise PrunekitError(f"max steps {s.max_steps} must be at least 1 (how far a layer may move from the "
                                "uniform sparsity, in steps)")
        if s.time_limit is not None and s.time_limit <= 0:
            raise PrunekitError(f"time limit {s.time_limit:g} s must be positive")


def uniform_sparsity(parameters: int, layers: int, per_layer: int, target: float, max_sparsity: float) -> float:
    """The sparsity of every decoder linear that keeps `target` of `parameters`; error when out of reach."""
    prunable = layers * per_layer
    lowest = 1.0 - max_sparsity * prunable / parameters
    base = (1.0 - target) * parameters / prunable
    if base > max_sparsity:
        raise PrunekitError(f"params={target:g} is out of reach: the decoder linears hold {prunable / parameters:.1%} "
                            f"of the parameters, and pruning them all to {max_sparsity:g} keeps {lowest:.4f}; give "
                            f"params between {lowest:.4f} and 1, or raise --max-sparsity")
    return base


def held_out_data(model: torch.nn.Module, tokenizer: Any, config: CalibrationConfig, samples: int, seed: int
                  ) -> torch.Tensor:
    """Windows of the calibration text that `calibration_data(..., config, seed)` does not draw."""
    check_seq_len(model, config.seq_len, "calibration")
    stream = token_stream(tokenizer, load_texts(config.source, "calibration", config.text_column))
    return held_out_windows(stream, samples, config.seq_len, seed, config.samples)


def _state_path(key: str) -> Path:
    return cache_dir() / "search" / f"{key}.json"


@dataclass
class _Setup:
    """What both spaces share: the loaded model and the data the search and its evaluation read."""

    config: SearchConfig
    loaded: Any
    adapter: ModelAdapter
    parameters: int
    windows: torch.Tensor  # calibration: the scores and the final prune
    held: torch.Tensor  # held out: the fitness
    eval_windows: torch.Tensor | None  # the evaluation text: perplexity
    device: torch.device
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model

    def perplexity(self, label: str, model: torch.nn.Module | None = None) -> PerplexityResult | None:
        """Of `model` (default: the model being searched) on the evaluation text; None without one."""
        if self.config.evaluation is None:
            return None
        return evaluate(self.model if model is None else model, self.loaded.tokenizer, self.config.evaluation,
                        f"{label} perplexity", windows=self.eval_windows)

    def search(self, space: SparsitySpace | DepthSpace, key: str, describe: str) -> SearchState:
        """The evolutionary loop with a progress bar, resumed from (and saved to) the cache's state for `key`."""
        t0 = time.perf_counter()
        settings = self.config.settings
        path = _state_path(key)
        state = SearchState.load(path)
        if state is not None:
            console.log(f"resuming the search at generation {state.generation} ({path})")
        with progress_bar() as bar:
            task = bar.add_task("searching", total=settings.generations, completed=state.generation if state else 0)

            def on_generation(current: SearchState) -> None:
                current.save(path)
                bar.update(task, completed=current.generation, description=f"searching: KL {current.fitness:.5f} "
                           f"({describe} {current.start_fitness:.5f})")

            state = evolve(space, settings, self.config.seed, state, on_generation)
        self.seconds["search"] = round(time.perf_counter() - t0, 2)
        return state

    def key(self, *parts: object) -> str:
        settings = {k: v for k, v in asdict(self.config.settings).items() if k not in ("generations", "time_limit")}
        return fingerprint(self.adapter, torch.cat([self.windows, self.held]), "search", *parts, settings,
                           self.config.seed)


def run_search(config: SearchConfig, out: Path, overwrite: bool = False) -> dict:
    """Search, prune with the chosen allocation, save OUT (model, prunekit.json, recipe.yaml, search.json). Returns
    search.json's content."""
    started = time.perf_counter()
    config.check()
    target, space = config.parsed_target, config.resolved_space
    out = check_output(out, overwrite, (config.model,))
    recovered = None
    if config.recover is not None:
        recovered = check_output(config.recover_out or out.with_name(f"{out.name}-{config.recover.method}"),
                                 overwrite, (config.model, out))
    method = get_method(config.method, "weights") if "sparsity" in space.split(",") else None
    with console.status(f"loading {config.model}"):
        loaded = load_model(config.model, config.dtype, config.device, config.trust_remote_code, config.allow_pickle)
    model, tokenizer = loaded.model, loaded.tokenizer
    adapter = adapter_for(model)
    device = resolve_device(config.device)
    parameters = count_parameters(model)
    parts = set(space.split(","))
    if method is not None:
        check_searchable(method, adapter)
        base = uniform_sparsity(parameters, len(adapter.layers), layer_numel(adapter, 0), target.value,
                                config.settings.max_sparsity)
        widths = sparsity_width_levels(config, adapter) if parts & {"width", "heads"} else None
    elif len(adapter.layers) < 2:
        raise PrunekitError(f"the model has {len(adapter.layers)} decoder block: depth search needs at least two")
    elif space == "depth":
        keep, cost = blocks_to_keep(adapter, parameters, target, device, config.refresh_latency)
    else:
        levels, cost = width_levels(config, adapter, parameters, target, device)
    setup = _Setup(config, loaded, adapter, parameters,
                   calibration_data(model, tokenizer, config.calibration, config.seed),
                   held_out_data(model, tokenizer, config.calibration, config.fitness_samples, config.seed),
                   evaluation_data(model, tokenizer, config.evaluation) if config.evaluation else None, device)
    if method is not None and widths:
        stages, result, search = _search_width_sparsity(setup, method.name, widths, removable="depth" in parts)
    elif method is not None:
        stages, result, search = _search_sparsity(setup, method.name, base, removable="depth" in parts)
    elif space == "depth":
        stages, result, search = _search_depth(setup, keep, cost)
    else:
        stages, result, search = _search_width_depth(setup, levels, cost)
    model.to("cpu")
    zeros = count_zeros(model)
    remaining = count_parameters(model)
    recipe = Recipe(model=config.model, seed=config.seed, dtype=config.dtype, device=config.device,
                    trust_remote_code=config.trust_remote_code, allow_pickle=config.allow_pickle,
                    calibration=config.calibration, stages=stages,
                    evaluation=config.evaluation or EvaluationConfig(ppl=False))
    search = {
        "versions": versions(),
        "model": config.model,
        "space": space,
        "target": {"key": target.key, "value": target.value, "text": str(target)},
        "seed": config.seed,
        "settings": asdict(config.settings),
        "fitness_samples": config.fitness_samples,
        "fitness_protocol": f"mean KL(dense || model) per token on {len(setup.held)} held-out calibration windows "
                            f"of {setup.held.shape[1]} tokens ({config.calibration.source})",
        **search,
    }
    search["parameters"]["searched_kept"] = remaining - zeros
    dense_ppl, searched_ppl = search.pop("_dense_ppl"), search.pop("_searched_ppl")
    with console.status(f"saving to {out}"), run_directory(out, overwrite, (loaded.local_path,)) as run:
        save_model(loaded, run.path)
        setup.seconds["total"] = round(time.perf_counter() - started, 2)
        search["seconds"] = setup.seconds
        search["peak_rss_bytes"] = peak_rss_bytes()
        (run.path / SEARCH_FILE).write_text(json.dumps(search, indent=2) + "\n")
        report = prune_report(recipe, result, remaining, zeros, dense_ppl, searched_ppl, setup.seconds,
                              dense_parameters=setup.parameters)
        run.finish(report, recipe)
    # Then what needs the finished output: the benchmark reads it as a model, recovery as its input.
    if target.key in LATENCY:
        t0 = time.perf_counter()
        with console.status(f"timing {out} against {config.model} as prunekit bench does (median of 5)"):
            search["cost"]["measured"] = _measured_speedup(config, target.key, out)
        measured = search["cost"]["measured"]
        search["cost"]["met"] = measured >= target.value * (1 - VERIFY_TOLERANCE)  # at least the target, nearly
        search["cost"]["within_tolerance"] = abs(measured / target.value - 1) <= VERIFY_TOLERANCE
        setup.seconds["verify"] = round(time.perf_counter() - t0, 2)
    if recovered is not None:
        search["recovered"] = _recover(config, out, recovered, overwrite)
    if target.key in LATENCY or recovered is not None:
        with atomic_file(out / SEARCH_FILE, overwrite=True) as temporary:
            temporary.write_text(json.dumps(search, indent=2) + "\n")
    return search


def front_targets(text: str) -> list[Target]:
    """The budgets of a front: a comma list of targets of one kind, all different (e.g. params=0.6,0.75,0.9)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if parts and "=" not in parts[0]:
        raise PrunekitError(f"--target {text!r} is not KEY=VALUE: give e.g. params=0.75")
    key = parts[0].partition("=")[0] if parts else ""
    targets = [parse_target(p if "=" in p else f"{key}={p}") for p in parts]  # params=0.6,0.75 = both params
    if len({t.key for t in targets}) > 1:
        raise PrunekitError(f"--target {text}: a front's budgets are of one kind (e.g. params=0.6,0.75,0.9); run "
                            "one search per kind")
    if len({t.value for t in targets}) != len(targets):
        raise PrunekitError(f"--target {text} repeats a budget: give each once")
    return sorted(targets, key=lambda t: t.value)


def target_folder(target: Target) -> str:
    return str(target).replace("=", "-")


def pareto_front(points: list[tuple[float, float]], higher_cost_is_cheaper: bool) -> list[int]:
    """Indices of the points (cost, fitness) no other point beats on both, fitness lower is better; cost is the
    fraction kept (lower is cheaper) or, `higher_cost_is_cheaper`, a speed-up."""
    def beats(a: tuple[float, float], b: tuple[float, float]) -> bool:
        cheaper = a[0] >= b[0] if higher_cost_is_cheaper else a[0] <= b[0]
        return cheaper and a[1] <= b[1] and a != b
    return [i for i, p in enumerate(points) if not any(beats(q, p) for q in points)]


def run_front(config: SearchConfig, targets: list[Target], out: Path, overwrite: bool = False) -> dict:
    """One search per budget (each a full search output in OUT/<key>-<value>), and OUT/front.json: every budget's
    cost, fitness and perplexity next to its baseline's, with the Pareto front among the searched models. A rerun
    resumes each search from the cache."""
    if config.recover is not None and config.recover_out is not None:
        raise PrunekitError("--recover-out names one directory; a front recovers each budget's model next to it "
                            "(OUT/<budget>-<method>): drop --recover-out")
    runs = [replace(config, target=str(t)) for t in targets]
    for run in runs:
        run.check()
    points = []
    with atomic_directory(out, overwrite, (config.model,)) as tmp:
        for index, (target, run) in enumerate(zip(targets, runs, strict=True), 1):
            console.log(f"budget {index}/{len(targets)}: {target}")
            folder = target_folder(target)
            result = run_search(run, tmp / folder)
            cost = result.get("cost") or {}
            kept = result["parameters"]
            speed = target.key in LATENCY
            points.append({
                "target": str(target), "folder": folder,
                "cost": cost.get("measured", cost.get("predicted")) if speed else
                kept["searched_kept"] / kept["dense"],
                "fitness": result["fitness"]["searched_pruned"], "perplexity": result["perplexity"]["searched"],
                "baseline": result["baseline"], "baseline_fitness": result["fitness"]["baseline_pruned"],
                "baseline_perplexity": result["perplexity"]["baseline"]})
        front = pareto_front([(p["cost"], p["fitness"]) for p in points], targets[0].key in LATENCY)
        document = {"versions": versions(), "model": config.model, "space": runs[0].resolved_space,
                    "targets": [str(t) for t in targets], "points": points, "pareto": front}
        (tmp / FRONT_FILE).write_text(json.dumps(document, indent=2) + "\n")
    return document


def _recover(config: SearchConfig, chosen: Path, out: Path, overwrite: bool) -> dict:
    """`prunekit recover` on the chosen model: its output and perplexity before and after."""
    assert config.recover is not None
    teacher = config.model if config.recover.method == "distill" else None
    report = recover_model(str(chosen), out, config.recover, teacher, config.evaluation, overwrite=overwrite,
                           say=console.log)
    return {"path": str(out), "method": config.recover.method, "steps": config.recover.steps,
            "perplexity": {k: v["perplexity"] for k, v in report["perplexity"].items()}}


def _evolve_sparsity(setup: _Setup, adapter: ModelAdapter, method: MethodSpec, base: float, removable: bool,
                     reference: KLFitness | None = None, *key: object
                     ) -> tuple[Candidates, SparsitySpace, SearchState, list[int], list[float]]:
    """The search over one sparsity per layer of `adapter`'s model against the uniform `base`; `removable`: a layer
    may also be removed, with the step shrunk to the nearest that puts sparsity 1 on the grid, so a removal moves
    whole steps. `reference`: the dense model's fitness, when `adapter`'s model is a narrowed copy. Returns the
    candidates (their model left as the search last applied it), the space, the final state, the blocks removed and
    the sparsity of every layer (1.0: removed)."""
    config, settings = setup.config, setup.config.settings
    options = PruneStage(method=method.name, sparsity=0.5).options
    layers = len(adapter.layers)
    max_steps = settings.max_steps
    if method.updates_weights and max_steps is None:
        max_steps = WEIGHT_LEVEL_STEPS
    group = config.nm_group  # N:M: the levels are j / M, from the nearest to uniform
    start = [0] * layers
    if group:
        step = 1.0 / group
        base, start = nm_allocation(base, group, layers)
        key = (*key, f"nm{group}")
    else:
        step = (1.0 - base) / math.ceil((1.0 - base) / settings.step - 1e-9) if removable else settings.step
    low, high = offset_bounds(base, step, settings.max_sparsity, max_steps)
    if max(start) > high:
        raise PrunekitError(f"--pattern {config.pattern}: the budget needs layers at sparsity "
                            f"{base + step:g}, above --max-sparsity {settings.max_sparsity:g}: raise it")
    t0 = time.perf_counter()
    levels: ScoreLevels | WeightLevels
    model = "narrowed" if reference else "dense"  # the copy of the best width level, or the model itself
    with progress_bar() as bar:
        batch, on_layer = config.calibration.batch_size, lambda done, _total: bar.update(task, completed=done)
        if method.updates_weights:
            sparsities = layer_sparsities(base, range(low, high + 1), step)
            task = bar.add_task(f"{method.name} at {len(sparsities)} levels per layer of the {model} model",
                                total=layers)
            levels = WeightLevels(dense_variants(adapter, setup.windows, method, options, sparsities, setup.device,
                                                 batch, on_layer, group))
        else:
            task = bar.add_task(f"{method.name} scores of the {model} model", total=layers)
            levels = ScoreLevels(dense_scores(adapter, setup.windows, method, options, setup.device, batch,
                                              on_layer), group)
    candidates = Candidates(adapter, levels, setup.held, setup.device, reference)
    setup.seconds["scores"] = round(setup.seconds.get("scores", 0.0) + time.perf_counter() - t0, 2)
    space = SparsityDepthSpace(candidates, base, step, low, high, round((1.0 - base) / step)) if removable else \
        SparsitySpace(candidates, base, step, low, high)
    space.start = start
    state = setup.search(space, setup.key(method.name, options, round(base, 12), max_steps,
                                          *(["removable"] if removable else []), *key), "uniform")
    removed = space.removed(state.genome) if isinstance(space, SparsityDepthSpace) else []
    chosen = [1.0 if i in removed else s for i, s in enumerate(space.sparsities(state.genome))]
    return candidates, space, state, removed, chosen


def _sparsity_stages(method: MethodSpec, chosen: list[float], removed: list[int], group: int = 0
                     ) -> list[StageConfig | StructuredStageConfig]:
    """The blocks first, so the weight stage prunes the kept layers (re-indexed) on their own inputs; with `group`
    M, one N:M pattern per layer."""
    stages: list[StageConfig | StructuredStageConfig] = [StructuredStageConfig(method="block-list", blocks=removed)
                                                         ] if removed else []
    kept = [s for i, s in enumerate(chosen) if i not in removed]
    stages.append(StageConfig(method=method.name, layer_pattern=_layer_pattern(kept, group)) if group else
                  StageConfig(method=method.name, layer_sparsity=kept))
    return stages


def _layer_pattern(sparsities: list[float], group: int) -> list[str]:
    return ["dense" if s == 0 else str(level_pattern(s, group)) for s in sparsities]


def _sparsity_fields(method: MethodSpec, space: SparsitySpace, chosen: list[float], removed: list[int],
                     removable: bool, group: int = 0) -> dict:
    """What search.json says of a sparsity search's allocation."""
    blocks = {"blocks": {"total": len(chosen), "removed": len(removed), "searched": removed}} if removable else {}
    patterns = {"layer_pattern": _layer_pattern(chosen, group)} if group else {}
    return {
        "levels": {"lowest": space.levels[0], "highest": space.levels[-1], "count": len(space.levels),
                   "from": "weights pruned per level" if method.updates_weights else "one score table"},
        "layer_sparsity": chosen,  # 1.0: the block removed
        "step": space.step,
        **patterns,
        **blocks,
    }


def _search_sparsity(setup: _Setup, method_name: str, base: float, removable: bool = False
                     ) -> tuple[list[StageConfig | StructuredStageConfig], Any, dict]:
    """One sparsity per layer against the uniform `base` (and, `removable`, which layers to remove)."""
    config, model = setup.config, setup.model
    method = get_method(method_name)
    model.to(setup.device)
    dense_ppl = setup.perplexity("dense")
    candidates, space, state, removed, chosen = _evolve_sparsity(setup, setup.adapter, method, base, removable)

    def pruned(stages: list[StageConfig | StructuredStageConfig], label: str
               ) -> tuple[Any, float, PerplexityResult | None]:
        candidates.restore()
        result = prune(model, stages=stages, calibration=setup.windows, seed=config.seed, device=config.device,
                       batch_size=config.calibration.batch_size)
        model.to(setup.device)
        return result, candidates.fitness(), setup.perplexity(label)

    group = config.nm_group
    t0 = time.perf_counter()
    if group:  # the nearest to uniform the N:M levels come: every layer one pattern, or two neighbouring ones
        start = space.sparsities(space.start)
        base = sum(start) / len(start)
        uniform = _sparsity_stages(method, start, [], group)
        patterns = sorted(set(_layer_pattern(start, group)), reverse=True)
        name = f"{'uniform' if len(patterns) == 1 else 'nearest-uniform'} {method.name} {' + '.join(patterns)}"
    else:
        uniform, name = [StageConfig(method=method.name, sparsity=base)], f"uniform {method.name} {base:.4f}"
    _, uniform_kl, uniform_ppl = pruned(uniform, "uniform")
    uniform_kept = setup.parameters - count_zeros(model)
    stages = _sparsity_stages(method, chosen, removed, group)
    result, searched_kl, searched_ppl = pruned(stages, "searched")
    setup.seconds["prune_and_evaluate"] = round(time.perf_counter() - t0, 2)
    return stages, result, {
        "method": method.name,
        "pattern": config.pattern,
        "baseline": name,
        "parameters": {"dense": setup.parameters, "baseline_kept": uniform_kept},
        "uniform_sparsity": base,
        **_sparsity_fields(method, space, chosen, removed, removable, group),
        # "search": the allocation applied from the dense model's scores, as the search saw it; "pruned": the
        # model the engine prunes with it (each layer's statistics on the already-pruned layers before it)
        "fitness": {"baseline_search": state.start_fitness, "searched_search": state.fitness,
                    "baseline_pruned": uniform_kl, "searched_pruned": searched_kl},
        **_outcome(state, dense_ppl, uniform_ppl, searched_ppl),
    }


def sparsity_width_levels(config: SearchConfig, adapter: ModelAdapter) -> list[tuple[int, int]]:
    """The widths a sparsity,width / heads,sparsity(,width) search tries, as (MLP channels, query heads), widest
    first: every --width-step of each part searched down to --min-width / --min-heads, and every combination."""
    parts = set(config.resolved_space.split(","))
    channels, heads = full_widths(adapter)
    _check_narrowing(config, adapter, parts)
    mlp = _grid(channels, config.width_step, config.min_width, lambda f: _channels(channels, f), None) \
        if "width" in parts else {channels}
    head = _grid(heads, config.width_step, config.min_heads, lambda f: _head_count(heads, adapter.head_unit, f),
                 None) if "heads" in parts else {heads}
    return sorted(((c, h) for c in mlp for h in head), reverse=True)


def _search_width_sparsity(setup: _Setup, method_name: str, levels: list[tuple[int, int]], removable: bool
                           ) -> tuple[list[StageConfig | StructuredStageConfig], Any, dict]:
    """One MLP width / number of query heads for every block, then one sparsity per layer (and, `removable`, which
    layers to remove): each width level is narrowed by the engine, counted, and pruned uniformly to the sparsity
    that meets the budget (the uniform recipes, the full width among them); the sparsity search then runs on the
    width of the best of them, against the dense model throughout."""
    config, adapter, model = setup.config, setup.adapter, setup.model
    method = get_method(method_name)
    (channels, heads), layers = full_widths(adapter), len(adapter.layers)
    model.to(setup.device)
    dense_ppl = setup.perplexity("dense")
    reference = KLFitness(model, setup.held, setup.device)
    goal = config.parsed_target.value * setup.parameters
    calibrated = {"calibration": setup.windows, "seed": config.seed, "device": config.device,
                  "batch_size": config.calibration.batch_size, "progress": False}
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    best_model: torch.nn.Module | None = None
    with progress_bar() as bar:
        task = bar.add_task(f"{config.width_method} width levels, each with uniform {method.name}", total=len(levels))
        for c, h in levels:
            narrowed = copy.deepcopy(model)
            if width := _width_stages(config, adapter, c, h):
                prune(narrowed, stages=width, **calibrated)
            base = (count_parameters(narrowed) - goal) / (layers * layer_numel(adapter_for(narrowed), 0))
            narrowing = _recipe_name(WidthLevel(c, [], layers, h), layers, channels, heads)
            row: dict[str, Any] = {"channels": c, "heads": h, "uniform_sparsity": base,
                                   "name": f"{narrowing}, {method.name} {base:.4f}" if width else
                                   f"uniform {method.name} {base:.4f}"}
            if base <= 0 or base > config.settings.max_sparsity:
                row["skipped"] = ("the width alone meets the budget (--space depth,width searches that)" if base <= 0
                                  else f"needs sparsity {base:.4f}, above --max-sparsity")
            else:
                trial = copy.deepcopy(narrowed)
                prune(trial, stages=[StageConfig(method=method.name, sparsity=base)], **calibrated)
                row["fitness_pruned"] = reference.of(trial)()
                row["parameters_kept"] = count_parameters(trial) - count_zeros(trial)
                row["_ppl"] = setup.perplexity(row["name"], trial) if not width else None
                del trial
                if best is None or row["fitness_pruned"] < best["fitness_pruned"]:
                    best, best_model = row, narrowed
            del narrowed
            rows.append(row)
            bar.advance(task)
    setup.seconds["scores"] = round(time.perf_counter() - t0, 2)
    assert best is not None and best_model is not None  # the full width meets the budget (checked before)
    candidates, space, state, removed, chosen = _evolve_sparsity(
        setup, adapter_for(best_model), method, best["uniform_sparsity"], removable, reference,
        best["channels"], best["heads"], config.width_method)
    t0 = time.perf_counter()
    if best["_ppl"] is None and config.evaluation is not None:  # the best uniform recipe narrows: its perplexity
        candidates.restore()
        prune(best_model, stages=[StageConfig(method=method.name, sparsity=best["uniform_sparsity"])], **calibrated)
        best["_ppl"] = setup.perplexity(best["name"], best_model)
    del candidates, best_model
    stages: list[StageConfig | StructuredStageConfig] = [*_width_stages(config, adapter, best["channels"],
                                                                        best["heads"])]
    stages += _sparsity_stages(method, chosen, removed)
    result = prune(model, stages=stages, calibration=setup.windows, seed=config.seed, device=config.device,
                   batch_size=config.calibration.batch_size)
    model.to(setup.device)
    searched_kl, searched_ppl = reference(), setup.perplexity("searched")
    setup.seconds["prune_and_evaluate"] = round(time.perf_counter() - t0, 2)
    baselines = [{"name": r["name"], "kind": "sparsity" if (r["channels"], r["heads"]) == (channels, heads) else
                  "width+sparsity", "fitness_search": None, "fitness_pruned": r["fitness_pruned"],
                  "perplexity": r["_ppl"].perplexity if r.get("_ppl") else None,
                  "parameters_kept": r["parameters_kept"]} for r in rows if "skipped" not in r]
    return stages, result, {
        "method": method.name,
        "baseline": best["name"],
        "baselines": baselines,
        "parameters": {"dense": setup.parameters, "baseline_kept": best["parameters_kept"]},
        "uniform_sparsity": best["uniform_sparsity"],
        **_sparsity_fields(method, space, chosen, removed, removable),
        "width": {"method": config.width_method, "channels": channels, "searched": best["channels"],
                  "heads": heads, "searched_heads": best["heads"],
                  "levels": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]},
        "fitness": {"baseline_search": state.start_fitness, "searched_search": state.fitness,
                    "baseline_pruned": best["fitness_pruned"], "searched_pruned": searched_kl},
        **_outcome(state, dense_ppl, best["_ppl"], searched_ppl),
    }


def block_parameters(adapter: ModelAdapter) -> int:
    """Parameters of one decoder block (depth search needs blocks of one size: the first stands for all)."""
    return sum(p.numel() for p in adapter.layers[0].parameters())


def blocks_to_keep(adapter: ModelAdapter, parameters: int, target: Target, device: torch.device,
                   refresh_latency: bool = False) -> tuple[int, dict[str, Any]]:
    """How many decoder blocks meet `target` (at most all but one), and the latency model that says so (a speed-up
    target); one-line errors with the reachable range."""
    total = len(adapter.layers)
    per_block = block_parameters(adapter)
    dense_bytes = weight_bytes(adapter.model)
    cost: dict[str, Any] = {}
    if target.key in ("params", "memory"):
        fraction = target.value if target.key == "params" else memory_fraction(target, adapter.model)
        keep = blocks_for_params(parameters, per_block, total, fraction)
        if keep < 1:
            least = (parameters - per_block * (total - 1)) / parameters
            smallest = (f"memory between {least * dense_bytes / 1e9:.4g}GB and the dense model's "
                        f"{dense_bytes / 1e9:.4g}GB" if target.key == "memory" else
                        f"params between {least:.4f} and 1")
            raise PrunekitError(f"{target} is out of reach by removing blocks: one block kept still holds "
                                f"{least:.4f} of the parameters; give {smallest}")
        if target.key == "memory":
            bytes_per = dense_bytes / parameters
            cost = {"bytes_dense": dense_bytes,
                    "bytes_kept": round((parameters - per_block * (total - min(keep, total - 1))) * bytes_per)}
    else:
        with console.status(f"measuring {target.key} time at a few depths on this machine (once, then cached)"):
            line, cached = latency_model(adapter, target.key, device, LatencyProbe(), refresh_latency)
        keep = blocks_for_speedup(line.intercept, line.slope, total, target.value)
        if keep < 1:
            most = max_speedup(line.intercept, line.slope, total)
            raise PrunekitError(f"{target} is out of reach by removing blocks on this machine: keeping one block of "
                                f"{total} is {most:.2f}x faster; give {target.key} between 1 and {most:.2f}x")
        cost = {"latency_model": asdict(line), "cached": cached,
                "predicted": line.seconds_for(total) / line.seconds_for(min(keep, total - 1))}
    return min(keep, total - 1), cost


def _search_depth(setup: _Setup, keep: int, cost: dict[str, Any]) -> tuple[list[StructuredStageConfig], Any, dict]:
    config, adapter, model = setup.config, setup.adapter, setup.model
    total = len(adapter.layers)
    per_block = block_parameters(adapter)
    removed_count = total - keep
    model.to(setup.device)
    dense_ppl = setup.perplexity("dense")
    t0 = time.perf_counter()
    baseline = choose_blocks(adapter, StructuredStage(method=BASELINE_DEPTH, size=removed_count), setup.windows,
                             setup.device, config.calibration.batch_size).removed["blocks"]
    space = DepthSpace(adapter, setup.held, setup.device, baseline)
    setup.seconds["scores"] = round(time.perf_counter() - t0, 2)
    state = setup.search(space, setup.key("depth", removed_count), BASELINE_DEPTH)
    searched = space.removed(state.genome)

    def without(blocks: list[int], label: str) -> tuple[float, PerplexityResult | None]:
        kept = [i for i in range(total) if i not in blocks]
        with running_layers(adapter, [adapter.layers[i] for i in kept], kept):
            return space.kl(), setup.perplexity(label)

    t0 = time.perf_counter()
    baseline_kl, baseline_ppl = without(baseline, BASELINE_DEPTH)
    searched_kl, searched_ppl = without(searched, "searched")
    stage = StructuredStageConfig(method="block-list", blocks=searched)
    result = prune(model, stages=[stage], seed=config.seed, device=config.device, progress=False)
    setup.seconds["prune_and_evaluate"] = round(time.perf_counter() - t0, 2)
    dense_kept = setup.parameters
    return [stage], result, {
        "baseline": f"{BASELINE_DEPTH} (ShortGPT), {removed_count} blocks removed",
        "parameters": {"dense": dense_kept, "baseline_kept": dense_kept - per_block * removed_count},
        "blocks": {"total": total, "removed": removed_count, "baseline": baseline, "searched": searched},
        "fitness": {"baseline_search": state.start_fitness, "searched_search": state.fitness,
                    "baseline_pruned": baseline_kl, "searched_pruned": searched_kl},
        "cost": cost,
        **_outcome(state, dense_ppl, baseline_ppl, searched_ppl),
    }


def _channels(total: int, fraction: float) -> int:
    multiple = CHANNEL_MULTIPLE if total >= 8 * CHANNEL_MULTIPLE else 1
    return max(multiple, int(total * fraction + 1e-9) // multiple * multiple)


def mlp_channel_parameters(adapter: ModelAdapter) -> int:
    """Parameters one MLP channel holds in a block (its rows of the input projections, its output column)."""
    layer = copy.deepcopy(adapter.layers[0])
    before = sum(p.numel() for p in layer.parameters())
    surgery.shrink_mlp(adapter, layer, torch.arange(adapter.mlp_width - 1))
    return before - sum(p.numel() for p in layer.parameters())


def head_parameters(adapter: ModelAdapter) -> float:
    """Parameters one query head holds in a block, as the width stage removes heads: its query rows and output
    columns (GQA: the key/value heads stay), or the whole head with its key and value (one query head per key/value
    head)."""
    layer = copy.deepcopy(adapter.layers[0])
    before = sum(p.numel() for p in layer.parameters())
    keep, keep_kv = head_indices(adapter, adapter.num_heads - adapter.head_unit)
    surgery.shrink_attention(adapter, layer, keep, keep_kv, adapter.head_dim)
    return (before - sum(p.numel() for p in layer.parameters())) / adapter.head_unit


def full_widths(adapter: ModelAdapter) -> tuple[int, int]:
    """(MLP channels, query heads) of a block as it is; 0 channels for routed experts (no MLP width to cut)."""
    return 0 if adapter.expert_matrices(adapter.layers[0]) else adapter.mlp_width, adapter.num_heads


def _share(kept: int, whole: int) -> float:
    return kept / whole if whole else 1.0  # no MLP width (routed experts): whole


def _grid(total: int, step: float, least: float, size: Callable[[float], int], uniform: int | None) -> set[int]:
    """Sizes every `step` of `total` down to `least` of it, cut below the widest uniform size (which is kept)."""
    steps = round((1.0 - least) / step + 1e-9)
    grid = {total, *(size(1.0 - i * step) for i in range(1, steps + 1))}
    return grid if uniform is None else {c for c in grid if c > uniform} | {uniform}


def _head_count(heads: int, unit: int, fraction: float) -> int:
    """`fraction` of `heads` in whole units, rounded up: never fewer heads than --min-heads asks."""
    return max(unit, math.ceil(heads * fraction / unit - 1e-9) * unit)


def _check_narrowing(config: SearchConfig, adapter: ModelAdapter, parts: set[str]) -> None:
    """One-line errors for a width or heads part the model cannot take."""
    if "width" in parts and not full_widths(adapter)[0]:
        raise PrunekitError(f"--space {config.resolved_space} narrows dense MLPs; this model's MLPs are routed "
                            "experts: use --space depth or depth,heads, or prune experts with an expert method "
                            "(prunekit prune --method reap)")
    if "heads" in parts and adapter.heads_refusal:
        raise PrunekitError(adapter.heads_refusal)


def width_levels(config: SearchConfig, adapter: ModelAdapter, parameters: int, target: Target,
                 device: torch.device) -> tuple[list[tuple[int, int, int]], dict[str, Any]]:
    """The width levels of a depth,width / depth,heads / depth,heads,width search as (MLP channels, query heads,
    blocks the target allows at that width), widest first: for each part searched, every --width-step of it down to
    --min-width (MLP) or --min-heads (heads), and the widest uniform size that meets the target with every block
    and the other part whole (the uniform baselines); every combination of the two. A level that keeps no more
    blocks than one wider in one part and the same in the other is left out: that one dominates it. One-line error
    when no level meets the target."""
    parts = set(config.resolved_space.split(",")) - {"depth"}
    total, (channels, heads) = len(adapter.layers), full_widths(adapter)
    _check_narrowing(config, adapter, parts)
    unit = adapter.head_unit if "heads" in parts else heads

    def head_count(fraction: float) -> int:
        return _head_count(heads, unit, fraction)

    cost: dict[str, Any] = {}
    if target.key in ("params", "memory"):
        fraction = target.value if target.key == "params" else memory_fraction(target, adapter.model)
        per_block = block_parameters(adapter)
        per_channel = mlp_channel_parameters(adapter) if "width" in parts else 0
        per_head = head_parameters(adapter) if "heads" in parts else 0.0
        outside = parameters - per_block * total

        def block(c: int, h: int) -> float:
            return per_block - (channels - c) * per_channel - (heads - h) * per_head

        def keep(c: int, h: int) -> int:
            return blocks_within(fraction * parameters, outside, block(c, h), total)

        def reach(c: int, h: int) -> str:  # the smallest model of the space: one block at that width
            least = (outside + block(c, h)) / parameters
            if target.key == "memory":
                return f"memory above {least * weight_bytes(adapter.model) / 1e9:.4g}GB"
            return f"params between {least:.4f} and 1"

        if target.key == "memory":
            cost = {"bytes_dense": weight_bytes(adapter.model)}
    else:
        probes = tuple(sorted({head_count(f) for f in HEAD_PROBES} - {heads}, reverse=True)) if "heads" in parts \
            else ()
        with console.status(f"measuring {target.key} time at a few depths and widths on this machine (once, then "
                            "cached)"):
            line, cached = latency_model(adapter, target.key, device, LatencyProbe(), config.refresh_latency,
                                         WIDTH_PROBES if "width" in parts else (), probes)
        budget = line.seconds_for(total) / target.value

        def keep(c: int, h: int) -> int:
            return blocks_within(budget, line.intercept, line.per_block(_share(c, channels), h / heads), total)

        def reach(c: int, h: int) -> str:
            return (f"{target.key} between 1 and "
                    f"{line.seconds_for(total) / line.seconds_for(1, _share(c, channels), h / heads):.2f}x")

        cost = {"latency_model": asdict(line), "cached": cached}
    uniform_channels = max((c for c in range(1, channels) if keep(c, heads) >= total), default=None) \
        if "width" in parts else None
    uniform_heads = max((h for h in range(unit, heads, unit) if keep(channels, h) >= total), default=None) \
        if "heads" in parts else None
    mlp_grid = _grid(channels, config.width_step, config.min_width, lambda f: _channels(channels, f),
                     uniform_channels) if "width" in parts else {channels}
    head_grid = _grid(heads, config.width_step, config.min_heads, head_count, uniform_heads) \
        if "heads" in parts else {heads}
    levels: list[tuple[int, int, int]] = []
    for c, h in sorted(((c, h) for c in mlp_grid for h in head_grid), reverse=True):
        k = min(keep(c, h), total - 1) if (c, h) == (channels, heads) else keep(c, h)
        dominated = any(kept >= k and ((c2 > c and h2 == h) or (c2 == c and h2 > h)) for c2, h2, kept in levels)
        if k >= 1 and not dominated:
            levels.append((c, h, k))
    if not levels:
        narrowest = _channels(channels, config.min_width) if "width" in parts else channels
        fewest = head_count(config.min_heads) if "heads" in parts else heads
        limits = [f"{narrowest} MLP channels"] * ("width" in parts) + [f"{fewest} query heads"] * ("heads" in parts)
        lower = " or ".join(f"--min-{p}" for p in ("width", "heads") if p in parts)
        raise PrunekitError(f"{target} is out of reach by removing blocks and narrowing each to "
                            f"{' and '.join(limits)}: give {reach(narrowest, fewest)}, or lower {lower}")
    cost["uniform_width_channels"] = uniform_channels
    if "heads" in parts:
        cost["uniform_heads"] = uniform_heads
    return levels, cost


def _search_width_depth(setup: _Setup, levels: list[tuple[int, int, int]], cost: dict[str, Any]
                        ) -> tuple[list[StructuredStageConfig], Any, dict]:
    """Which blocks to remove and how wide every MLP / how many heads every attention keeps, together: a
    WidthDepthSpace over the width levels, started from the best of the uniform recipes (each level's blocks chosen
    by block influence), the uniform depth, uniform MLP width and uniform heads baselines measured on the way."""
    config, adapter, model = setup.config, setup.adapter, setup.model
    total, (channels, heads) = len(adapter.layers), full_widths(adapter)
    model.to(setup.device)
    dense_ppl = setup.perplexity("dense")
    t0 = time.perf_counter()
    built: list[WidthLevel] = []
    with progress_bar() as bar:
        task = bar.add_task(f"{config.width_method} width levels", total=len(levels))
        for c, h, keep in levels:
            layers = list(adapter.layers)
            if stages := _width_stages(config, adapter, c, h):
                narrowed = copy.deepcopy(model)
                prune(narrowed, stages=stages, calibration=setup.windows, seed=config.seed, device=config.device,
                      batch_size=config.calibration.batch_size, progress=False)
                layers = list(adapter_for(narrowed).layers)
                del narrowed
            built.append(WidthLevel(c, layers, keep, h))
            bar.advance(task)
    influence = {}
    for level in built:
        if level.keep < total and total - level.keep not in influence:
            stage = StructuredStage(method=BASELINE_DEPTH, size=total - level.keep)
            influence[total - level.keep] = choose_blocks(adapter, stage, setup.windows, setup.device,
                                                          config.calibration.batch_size).removed["blocks"]
    starts = [[i, *(0 if b in influence.get(total - level.keep, ()) else 1 for b in range(total))]
              for i, level in enumerate(built)]
    space = WidthDepthSpace(adapter, setup.held, setup.device, built, starts[0],
                            line_neighbours([(c, h) for c, h, _ in levels]))
    start_kl = [space.fitness(start) for start in starts]
    space.start = starts[min(range(len(built)), key=start_kl.__getitem__)]  # the best uniform recipe
    setup.seconds["scores"] = round(time.perf_counter() - t0, 2)
    key = setup.key(config.resolved_space, levels, config.width_method)
    state = setup.search(space, key, "best uniform")

    def perplexity(genome: list[int], label: str) -> PerplexityResult | None:
        """Of the candidate, which is the engine's output (its KL is the one the search measured)."""
        level = built[genome[0]]
        kept = [b for b in range(total) if genome[1 + b]]
        with running_layers(adapter, [level.layers[b] for b in kept], kept):
            return setup.perplexity(label)

    t0 = time.perf_counter()
    full = [(level.channels == channels, level.heads == heads) for level in built]
    kinds = {"depth": lambda i: full[i] == (True, True),
             "width": lambda i: full[i] == (False, True) and built[i].keep == total,
             "heads": lambda i: full[i] == (True, False) and built[i].keep == total}
    uniform = [(next(i for i in range(len(built)) if is_kind(i)), kind) for kind, is_kind in kinds.items()
               if any(is_kind(i) for i in range(len(built)))]
    if not uniform:  # no uniform recipe meets the target: the best level with block influence stands in
        uniform = [(min(range(len(built)), key=start_kl.__getitem__), "level")]
    baselines = []
    for index, kind in uniform:
        level = built[index]
        kl, ppl = start_kl[index], perplexity(starts[index], f"uniform {kind}")
        baselines.append({"name": _recipe_name(level, total, channels, heads), "kind": kind, "fitness_pruned": kl,
                          "fitness_search": start_kl[index], "perplexity": ppl.perplexity if ppl else None,
                          "parameters_kept": _kept(setup, level, total), "_ppl": ppl, "_index": index})
    chosen = built[state.genome[0]]
    removed = [b for b in range(total) if not state.genome[1 + b]]
    searched_kl, searched_ppl = state.fitness, perplexity(state.genome, "searched")
    stages = _width_stages(config, adapter, chosen.channels, chosen.heads or heads)
    if removed:
        stages.append(StructuredStageConfig(method="block-list", blocks=removed))
    result = prune(model, stages=stages, calibration=setup.windows, seed=config.seed, device=config.device,
                   batch_size=config.calibration.batch_size, progress=False)
    setup.seconds["prune_and_evaluate"] = round(time.perf_counter() - t0, 2)
    baseline = min(baselines, key=lambda b: b["fitness_pruned"])
    if "bytes_dense" in cost:
        cost["bytes_kept"] = round(_kept(setup, chosen, total) * cost["bytes_dense"] / setup.parameters)
    if "latency_model" in cost:
        line = LatencyModel(**cost["latency_model"])

        def speedup(level: WidthLevel) -> float:
            return line.seconds_for(total) / line.seconds_for(level.keep, _share(level.channels, channels),
                                                              (level.heads or heads) / heads)

        cost["predicted"] = speedup(chosen)
        for b in baselines:
            b["predicted"] = speedup(built[b["_index"]])
        cost["baseline_predicted"] = baseline["predicted"]
    return stages, result, {
        "baseline": baseline["name"],
        "baselines": [{k: v for k, v in b.items() if not k.startswith("_")} for b in baselines],
        "parameters": {"dense": setup.parameters, "baseline_kept": baseline["parameters_kept"]},
        "width": {"method": config.width_method, "channels": channels, "searched": chosen.channels,
                  "heads": heads, "searched_heads": chosen.heads,
                  "levels": [{"channels": level.channels, "heads": level.heads, "blocks_kept": level.keep,
                              "start_fitness": kl} for level, kl in zip(built, start_kl, strict=True)]},
        "blocks": {"total": total, "removed": len(removed), "searched": removed},
        "fitness": {"baseline_search": baseline["fitness_search"], "searched_search": state.fitness,
                    "baseline_pruned": baseline["fitness_pruned"], "searched_pruned": searched_kl},
        "cost": cost,
        **_outcome(state, dense_ppl, baseline["_ppl"], searched_ppl),
    }


def _width_stages(config: SearchConfig, adapter: ModelAdapter, channels: int, heads: int
                  ) -> list[StructuredStageConfig]:
    """The engine's stages that cut every MLP to `channels` and every attention to `heads` query heads (none for
    a part left whole)."""
    stages = []
    full_channels, full_heads = full_widths(adapter)
    if channels < full_channels:
        stages.append(StructuredStageConfig(method=config.width_method, part="mlp", size=channels))
    if heads < full_heads:
        stages.append(StructuredStageConfig(method=config.width_method, part=adapter.head_part, size=heads))
    return stages


def _recipe_name(level: WidthLevel, total: int, channels: int, heads: int) -> str:
    narrowed = []
    if level.channels < channels:
        narrowed.append(f"MLP width {level.channels} of {channels}")
    if (level.heads or heads) < heads:
        narrowed.append(f"{level.heads} of {heads} heads")
    if not narrowed:
        return f"{BASELINE_DEPTH} (ShortGPT), {total - level.keep} blocks removed"
    if level.keep == total:
        return "uniform " + ", ".join(narrowed)
    return f"{', '.join(narrowed)}, {BASELINE_DEPTH} removing {total - level.keep} blocks"


def _kept(setup: _Setup, level: WidthLevel, total: int) -> int:
    per_block = sum(p.numel() for p in level.layers[0].parameters())
    return setup.parameters - block_parameters(setup.adapter) * total + per_block * level.keep


def _outcome(state: SearchState, dense: PerplexityResult | None, baseline: PerplexityResult | None,
             searched: PerplexityResult | None) -> dict:
    return {
        "perplexity": {name: p.perplexity if p else None
                       for name, p in (("dense", dense), ("baseline", baseline), ("searched", searched))},
        "generations": state.generation,
        "evaluated": state.evaluated,
        "history": state.history,
        "_dense_ppl": dense,
        "_searched_ppl": searched,
    }


def _measured_speedup(config: SearchConfig, kind: str, pruned: Path) -> float:
    """The pruned model's speed-up over the dense one as `prunekit bench` measures it (median of 5)."""
    probe = LatencyProbe()
    speed = SpeedConfig(prompt_len=probe.prompt_len, new_tokens=probe.new_tokens, batch_sizes=(1,), repeats=5,
                        device=config.device, dtype=config.dtype, threads=torch.get_num_threads(),
                        trust_remote_code=config.trust_remote_code)
    result = benchmark_models([config.model, str(pruned)], speed, on_progress=lambda _line: None)
    ratios = result["models"][1]["ratios"]
    return ratios["decode_speedup"]["1"] if kind == "decode" else ratios["prefill_speedup"]
