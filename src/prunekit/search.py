"""`prunekit search`: give the budget, get the allocation. Searches one sparsity per decoder layer (EvoPress's
evolutionary search, engine/search.py) so the model keeps a target fraction of its parameters with the least KL
divergence from the dense model on held-out calibration tokens, then prunes the model with the chosen allocation
through the engine and saves it with a recipe that reproduces it (`prunekit prune --recipe OUT/recipe.yaml`).

Also pruned and measured the same way: the uniform allocation of the same budget, the baseline the search must beat.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from prunekit.api import calibration_data, check_seq_len, evaluate, evaluation_data, prune, prune_report
from prunekit.assets.cache import cache_dir
from prunekit.engine.cache import fingerprint
from prunekit.engine.layerwise import PruneStage
from prunekit.engine.search import (
    Candidates,
    EvolutionSettings,
    SearchState,
    check_searchable,
    dense_scores,
    evolve,
    layer_numel,
)
from prunekit.errors import PrunekitError
from prunekit.eval.perplexity import PerplexityResult
from prunekit.methods import get_method
from prunekit.methods.evolution import layer_sparsities
from prunekit.models.adapters import adapter_for
from prunekit.models.loading import load_model, resolve_device
from prunekit.outputs import check_output
from prunekit.progress import console, progress_bar
from prunekit.recipe import CalibrationConfig, EvaluationConfig, Recipe, StageConfig
from prunekit.rundir import run_directory, save_model
from prunekit.runinfo import count_parameters, count_zeros, peak_rss_bytes, versions
from prunekit.text.sources import load_texts
from prunekit.text.tokens import held_out_windows, token_stream

SEARCH_FILE = "search.json"
MAX_SWITCHES = 64  # more mutations per child than this is a random restart, not a search step
NOT_YET = {"memory": "a memory size", "decode": "a decoding speed-up", "prefill": "a prefill speed-up"}


def parse_target(text: str) -> float:
    """`params=F` -> F, the fraction of the model's parameters kept (non-zero); one-line errors otherwise."""
    key, sep, value = text.partition("=")
    key = key.strip().lower()
    if not sep:
        raise PrunekitError(f"--target {text!r} is not KEY=VALUE: give e.g. params=0.75 (keep 75% of the "
                            "parameters)")
    if key in NOT_YET:
        raise PrunekitError(f"--target {key}= ({NOT_YET[key]}) is not supported yet: give params=F, the fraction "
                            "of the parameters to keep")
    if key != "params":
        raise PrunekitError(f"unknown --target key {key!r}: use params=F (the fraction of the parameters to keep, "
                            "e.g. params=0.75)")
    try:
        fraction = float(value)
    except ValueError:
        raise PrunekitError(f"--target params={value!r} is not a number: give a fraction such as 0.75") from None
    if not 0.0 < fraction < 1.0:
        raise PrunekitError(f"--target params={value} must be a fraction between 0 and 1 (1 is the dense model)")
    return fraction


@dataclass
class SearchConfig:
    model: str
    target: float  # fraction of the model's parameters kept (non-zero), e.g. 0.75
    method: str = "wanda"  # the score that ranks each layer's weights: magnitude, wanda or ria
    settings: EvolutionSettings = field(default_factory=EvolutionSettings)
    fitness_samples: int = 4  # held-out calibration windows (of calibration.seq_len tokens) the KL is measured on
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    evaluation: EvaluationConfig | None = field(default_factory=EvaluationConfig)  # None: no perplexity
    seed: int = 0
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    allow_pickle: bool = False

    def check(self) -> None:
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


def run_search(config: SearchConfig, out: Path, overwrite: bool = False) -> dict:
    """Search, prune with the chosen allocation, save OUT (model, prunekit.json, recipe.yaml, search.json). Returns
    search.json's content."""
    started = time.perf_counter()
    config.check()
    out = check_output(out, overwrite, (config.model,))
    method = get_method(config.method, "weights")
    options = PruneStage(method=method.name, sparsity=0.5).options
    with console.status(f"loading {config.model}"):
        loaded = load_model(config.model, config.dtype, config.device, config.trust_remote_code, config.allow_pickle)
    model, tokenizer = loaded.model, loaded.tokenizer
    adapter = adapter_for(model)
    check_searchable(method, adapter)
    parameters = count_parameters(model)
    layers = len(adapter.layers)
    base = uniform_sparsity(parameters, layers, layer_numel(adapter, 0), config.target, config.settings.max_sparsity)
    eval_windows = evaluation_data(model, tokenizer, config.evaluation) if config.evaluation else None
    windows = calibration_data(model, tokenizer, config.calibration, config.seed)
    held = held_out_data(model, tokenizer, config.calibration, config.fitness_samples, config.seed)
    device = resolve_device(config.device)
    seconds: dict[str, float] = {}
    settings = asdict(config.settings)
    key = fingerprint(adapter, torch.cat([windows, held]), "search", method.name, options, round(base, 12),
                      {k: v for k, v in settings.items() if k not in ("generations", "time_limit")}, config.seed)
    model.to(device)
    dense_ppl = _perplexity(model, tokenizer, config, "dense", eval_windows)
    t0 = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task(f"{method.name} scores of the dense model", total=layers)
        scores = dense_scores(adapter, windows, method, options, device, config.calibration.batch_size,
                              on_layer=lambda done, _total: bar.update(task, completed=done))
    candidates = Candidates(adapter, scores, held, device)
    seconds["scores"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    state_path = _state_path(key)
    state = SearchState.load(state_path)
    if state is not None:
        console.log(f"resuming the search at generation {state.generation} ({state_path})")
    with progress_bar() as bar:
        task = bar.add_task("searching", total=config.settings.generations,
                            completed=state.generation if state else 0)

        def on_generation(current: SearchState) -> None:
            current.save(state_path)
            bar.update(task, completed=current.generation,
                       description=f"searching: KL {current.fitness:.5f} (uniform {current.uniform_fitness:.5f})")

        state = evolve(candidates, base, config.settings, config.seed, state, on_generation)
    seconds["search"] = round(time.perf_counter() - t0, 2)
    chosen = layer_sparsities(base, state.offsets, config.settings.step)

    def pruned(stage: StageConfig, label: str) -> tuple[Any, float, PerplexityResult | None]:
        candidates.restore()
        result = prune(model, tokenizer, stages=[stage], calibration=windows, seed=config.seed, device=config.device,
                       batch_size=config.calibration.batch_size)
        model.to(device)
        return result, candidates.fitness(), _perplexity(model, tokenizer, config, label, eval_windows)

    t0 = time.perf_counter()
    uniform_stage = StageConfig(method=method.name, sparsity=base)
    _, uniform_kl, uniform_ppl = pruned(uniform_stage, "uniform")
    uniform_kept = parameters - count_zeros(model)
    searched_stage = StageConfig(method=method.name, layer_sparsity=chosen)
    result, searched_kl, searched_ppl = pruned(searched_stage, "searched")
    model.to("cpu")
    seconds["prune_and_evaluate"] = round(time.perf_counter() - t0, 2)
    zeros = count_zeros(model)
    recipe = Recipe(model=config.model, seed=config.seed, dtype=config.dtype, device=config.device,
                    trust_remote_code=config.trust_remote_code, allow_pickle=config.allow_pickle,
                    calibration=config.calibration, stages=[searched_stage],
                    evaluation=config.evaluation or EvaluationConfig(ppl=False))
    seconds["total"] = round(time.perf_counter() - started, 2)
    report = prune_report(recipe, result, parameters, zeros, dense_ppl, searched_ppl, seconds)
    search = {
        "versions": versions(),
        "model": config.model,
        "method": method.name,
        "target": {"params": config.target},
        "seed": config.seed,
        "settings": settings,
        "fitness_protocol": f"mean KL(dense || model) per token on {len(held)} held-out calibration windows of "
                            f"{held.shape[1]} tokens ({config.calibration.source})",
        "parameters": {"dense": parameters, "uniform_kept": uniform_kept, "searched_kept": parameters - zeros},
        "uniform_sparsity": base,
        "layer_sparsity": chosen,
        # "table": the allocation applied from the dense model's scores, as the search saw it; "pruned": the model
        # the engine prunes with it (each layer's statistics on the already-pruned layers before it)
        "fitness": {"uniform_table": state.uniform_fitness, "searched_table": state.fitness,
                    "uniform_pruned": uniform_kl, "searched_pruned": searched_kl},
        "perplexity": {name: p.perplexity if p else None
                       for name, p in (("dense", dense_ppl), ("uniform", uniform_ppl), ("searched", searched_ppl))},
        "generations": state.generation,
        "evaluated": state.evaluated,
        "history": state.history,
        "seconds": seconds,
        "peak_rss_bytes": peak_rss_bytes(),
    }
    with console.status(f"saving to {out}"), run_directory(out, overwrite, (loaded.local_path,)) as run:
        save_model(loaded, run.path)
        (run.path / SEARCH_FILE).write_text(json.dumps(search, indent=2) + "\n")
        run.finish(report, recipe)
    return search


def _perplexity(model: torch.nn.Module, tokenizer: Any, config: SearchConfig, label: str,
                windows: torch.Tensor | None) -> PerplexityResult | None:
    if config.evaluation is None:
        return None
    return evaluate(model, tokenizer, config.evaluation, f"{label} perplexity", windows=windows)

