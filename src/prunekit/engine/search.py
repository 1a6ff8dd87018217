"""The engine of `prunekit search`: the search spaces (one sparsity per decoder layer, applied as masks from one
table of the dense model's weight scores, a layer possibly removed; which decoder blocks to remove; which blocks at
which width), the fitness of a candidate against
the dense model, and the evolutionary loop of methods/evolution.py.

Each layer's variant at each sparsity level comes from one calibration pass of the dense model (EvoPress's per-layer
database). A score method (magnitude, Wanda, RIA) prunes a row at sparsity s by keeping its top (1 - s) scores, so
one table of scores gives every layer at every level in a few bytes per weight (ScoreLevels). A method that updates
the weights it keeps (SparseGPT, ALPS) is run once per layer and level on the dense inputs and every variant kept
(WeightLevels: one copy of the decoder linears per level). A candidate costs the weights of the layers it changes
plus one forward pass per fitness window.
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from prunekit.engine.layerwise import collect_statistic, prepared_statistics
from prunekit.engine.structured import running_layers
from prunekit.engine.walker import LayerStore, capture_on_device, walk_layers
from prunekit.errors import PrunekitError
from prunekit.files import temporary_sibling
from prunekit.methods.evolution import (
    block_switch,
    kept_level_switch,
    kl_sum,
    layer_sparsities,
    level_switch,
    reference_log_probs,
)
from prunekit.methods.masks import nm_mask, row_mask
from prunekit.methods.patterns import SparsityPattern
from prunekit.methods.registry import MethodSpec
from prunekit.models.adapters.base import ModelAdapter
from prunekit.models.groups import weight_matrix


def check_searchable(method: MethodSpec, adapter: ModelAdapter) -> None:
    """A one-line error unless `method` ranks weights by one score and the decoder layers are alike."""
    from prunekit.engine.statistics import STATISTICS

    if method.kind != "weights" or method.regional or not set(method.needs) <= set(STATISTICS):
        raise PrunekitError(f"search prunes each layer from one calibration pass of the dense model; {method.name} "
                            + ("optimises whole blocks against each other" if method.regional else
                               "needs more than one calibration pass")
                            + ": use magnitude, wanda, ria, sparsegpt or alps")
    if adapter.expert_matrices(adapter.layers[0]):
        raise PrunekitError("search does not cover the routed experts of a mixture-of-experts model yet: prune "
                            "experts with an expert method (prunekit prune --method reap)")
    sizes = {layer_numel(adapter, i) for i in range(len(adapter.layers))}
    if len(sizes) != 1:
        raise PrunekitError(f"search moves sparsity between decoder layers of one size; this model's layers hold "
                            f"{', '.join(map(str, sorted(sizes)))} linear weights")


def layer_numel(adapter: ModelAdapter, index: int) -> int:
    return sum(lin.weight.numel() for lin in adapter.linears(adapter.layers[index]).values())


def _dense_layers(adapter: ModelAdapter, windows: torch.Tensor, method: MethodSpec, device: torch.device,
                  batch_size: int) -> Iterator[tuple[int, dict[str, torch.nn.Module], dict[str, dict]]]:
    """Each decoder layer of the dense model with its linears and `method`'s statistics on the dense inputs."""
    store = LayerStore(adapter, device)
    if not method.needs:
        for index, layer in enumerate(adapter.layers):
            yield index, _targets(adapter, layer), {}
        return
    captured = capture_on_device(adapter, windows, batch_size, device, store.home)
    for visit in walk_layers(adapter, captured, store, final=False):
        targets = _targets(adapter, visit.layer)
        yield visit.index, targets, {need: collect_statistic(visit.layer, targets, need, visit.inputs, visit.calls)
                                     for need in method.needs}


def _targets(adapter: ModelAdapter, layer: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {n: lin for n, lin in adapter.linears(layer).items() if lin.weight.numel()}


@torch.no_grad()
def dense_scores(adapter: ModelAdapter, windows: torch.Tensor, method: MethodSpec, options: dict[str, object],
                 device: torch.device, batch_size: int = 8,
                 on_layer: Callable[[int, int], None] | None = None) -> dict[str, torch.Tensor]:
    """`method`'s score of every weight of every decoder linear, on the dense model: {"i.name": [out, in]}."""
    scores: dict[str, torch.Tensor] = {}
    count = len(adapter.layers)
    for index, targets, stats in _dense_layers(adapter, windows, method, device, batch_size):
        for name, linear in targets.items():
            given = {need: values[name] for need, values in stats.items()}
            scores[f"{index}.{name}"] = method.function(weight_matrix(linear), **given, **options).float().cpu()
        if on_layer:
            on_layer(index + 1, count)
    return scores


@torch.no_grad()
def dense_variants(adapter: ModelAdapter, windows: torch.Tensor, method: MethodSpec, options: dict[str, object],
                   sparsities: Sequence[float], device: torch.device, batch_size: int = 8,
                   on_layer: Callable[[int, int], None] | None = None, group: int = 0
                   ) -> dict[str, dict[float, torch.Tensor]]:
    """Every decoder linear pruned by a weight-updating `method` at each of `sparsities` (0 left out: the dense
    weight), on the dense model's inputs: {"i.name": {sparsity: weight}}, in the model's dtype on the CPU; with
    `group` M, each level as its N:M pattern (level_pattern)."""
    variants: dict[str, dict[float, torch.Tensor]] = {}
    count = len(adapter.layers)
    levels = [s for s in dict.fromkeys(sparsities) if s > 0]
    for index, targets, stats in _dense_layers(adapter, windows, method, device, batch_size):
        stats = prepared_statistics(method, stats, options)  # prepared once, for every level
        for name, linear in targets.items():
            weight = weight_matrix(linear)
            given = {need: values[name] for need, values in stats.items()}
            pruned = {}
            for sparsity in levels:
                result = method.prune(weight, given, sparsity, level_pattern(sparsity, group), **options)
                new = (result.weight if result.weight is not None else weight).to(weight.dtype)
                pruned[sparsity] = new.masked_fill(~result.keep.to(new.device), 0).cpu()
            variants[f"{index}.{name}"] = pruned
        if on_layer:
            on_layer(index + 1, count)
    return variants


def level_pattern(sparsity: float, group: int) -> SparsityPattern:
    """The N:M pattern of an N:M search's level: (1 - sparsity) x `group` of every `group` weights kept; unstructured
    for `group` 0."""
    return SparsityPattern(round((1 - sparsity) * group), group) if group else SparsityPattern()


class ScoreLevels:
    """A layer at sparsity s from the dense model's score table: each row keeps its top (1 - s) scores, or with
    `group` M the top (1 - s) M of every M consecutive weights (the levels of an N:M search are j / M)."""

    def __init__(self, scores: dict[str, torch.Tensor], group: int = 0) -> None:
        self.scores, self.group = scores, group

    def __contains__(self, key: str) -> bool:
        return key in self.scores

    def weight(self, key: str, sparsity: float, dense: torch.Tensor) -> torch.Tensor:
        if not self.group:
            keep = row_mask(self.scores[key], sparsity)
        elif sparsity == 0:
            return dense
        else:
            pattern = level_pattern(sparsity, self.group)
            keep = nm_mask(self.scores[key], pattern.n, pattern.m)
        return dense.masked_fill(~keep.to(dense.device), 0)


class WeightLevels:
    """A layer at sparsity s as a weight-updating method left it (dense_variants); the dense weight at 0."""

    def __init__(self, variants: dict[str, dict[float, torch.Tensor]]) -> None:
        self.variants = variants

    def __contains__(self, key: str) -> bool:
        return key in self.variants

    def weight(self, key: str, sparsity: float, dense: torch.Tensor) -> torch.Tensor:
        if sparsity == 0:
            return dense
        levels = self.variants[key]
        if sparsity not in levels:
            raise KeyError(f"{key} has no variant at sparsity {sparsity:g}: the levels are {sorted(levels)}")
        return levels[sparsity]


class KLFitness:
    """The fitness of the model as it is now: the mean KL divergence per token of its next-token distribution from
    the dense model's on `windows` (the dense log-probabilities are taken when this is made)."""

    def __init__(self, model: torch.nn.Module, windows: torch.Tensor, device: torch.device) -> None:
        self.model, self.windows, self.device = model, windows, device
        self.reference = [reference_log_probs(self._logits(w)) for w in windows]

    @torch.no_grad()
    def _logits(self, window: torch.Tensor) -> torch.Tensor:
        return self.model(window.unsqueeze(0).to(self.device), use_cache=False).logits[0]

    def of(self, model: torch.nn.Module) -> KLFitness:
        """The same dense reference, measured on `model` (a copy pruned another way)."""
        other = copy.copy(self)
        other.model = model
        return other

    def __call__(self, windows: int | None = None) -> float:
        """Over the first `windows` windows (all by default)."""
        count = len(self.windows) if windows is None else min(windows, len(self.windows))
        total = sum(kl_sum(self.reference[i], self._logits(self.windows[i])) for i in range(count))
        return total / (count * self.windows.shape[1])


class Candidates:
    """Applies per-layer sparsities to the model from its levels (ScoreLevels or WeightLevels) and measures their
    fitness (KLFitness)."""

    def __init__(self, adapter: ModelAdapter, levels: ScoreLevels | WeightLevels, windows: torch.Tensor,
                 device: torch.device, reference: KLFitness | None = None) -> None:
        self.adapter, self.levels = adapter, levels
        self.linears = {f"{i}.{n}": lin for i, layer in enumerate(adapter.layers)
                        for n, lin in adapter.linears(layer).items() if f"{i}.{n}" in levels}
        self.dense = {key: weight_matrix(lin).detach().clone() for key, lin in self.linears.items()}
        self.applied = [0.0] * len(adapter.layers)
        # `reference`: the dense model's, when this model is already narrowed (the fitness is always to the dense)
        self.kl = reference.of(adapter.model) if reference else KLFitness(adapter.model, windows, device)

    @torch.no_grad()
    def apply(self, sparsities: list[float]) -> None:
        for index, sparsity in enumerate(sparsities):
            if sparsity == self.applied[index]:
                continue
            prefix = f"{index}."
            for key, linear in self.linears.items():
                if key.startswith(prefix):
                    weight_matrix(linear).copy_(self.levels.weight(key, sparsity, self.dense[key]))
            self.applied[index] = sparsity

    @torch.no_grad()
    def restore(self) -> None:
        """The dense weights back in every layer (also after the engine pruned the model)."""
        for key, linear in self.linears.items():
            weight_matrix(linear).copy_(self.dense[key])
        self.applied = [0.0] * len(self.applied)

    def fitness(self, sparsities: list[float] | None = None, windows: int | None = None) -> float:
        """KLFitness over the first `windows` windows, after applying `sparsities` (the model as it is when None)."""
        if sparsities is not None:
            self.apply(sparsities)
        return self.kl(windows)


class SparsitySpace:
    """Genomes are per-layer integer offsets in [low, high] from the uniform sparsity `base`, in steps of `step` (sum
    zero)."""

    def __init__(self, candidates: Candidates, base: float, step: float, low: int, high: int) -> None:
        self.candidates, self.base, self.step = candidates, base, step
        self.low, self.high = low, high
        self.start = [0] * len(candidates.applied)

    @property
    def levels(self) -> list[float]:
        """Every sparsity a layer can take."""
        return layer_sparsities(self.base, range(self.low, self.high + 1), self.step)

    def sparsities(self, genome: Sequence[int]) -> list[float]:
        return layer_sparsities(self.base, genome, self.step)

    def mutate(self, genome: Sequence[int], rng: random.Random, switches: int) -> list[int]:
        return level_switch(genome, self.low, self.high, rng, switches)

    def fitness(self, genome: Sequence[int], windows: int | None = None) -> float:
        return self.candidates.fitness(self.sparsities(genome), windows)


class SparsityDepthSpace(SparsitySpace):
    """SparsitySpace where a layer may also be removed: the offset `removed` = (1 - base) / step (sparsity 1, an
    integer by the choice of step) stands for its block removed, which a candidate runs without (what removing it
    does; sparsity 1 would leave the same function with the block's norms). A mutation is a block switch (one block
    removed or restored, the budget moved to or from the other layers one step at a time) with probability
    `block_moves`, or a level switch among the kept layers."""

    def __init__(self, candidates: Candidates, base: float, step: float, low: int, high: int, removed: int,
                 block_moves: float = 1 / 3) -> None:
        super().__init__(candidates, base, step, low, high)
        if removed <= high or abs(base + removed * step - 1.0) > 1e-6:
            raise ValueError(f"offset {removed} is not sparsity 1 above the kept levels")
        self.removed_offset, self.block_moves = removed, block_moves

    def removed(self, genome: Sequence[int]) -> list[int]:
        return [i for i, o in enumerate(genome) if o == self.removed_offset]

    def mutate(self, genome: Sequence[int], rng: random.Random, switches: int) -> list[int]:
        child = list(genome)
        for _ in range(switches):
            if rng.random() < self.block_moves:
                child = block_switch(child, self.low, self.high, self.removed_offset, rng)
            else:
                child = kept_level_switch(child, self.low, self.high, self.removed_offset, rng)
        return child

    def fitness(self, genome: Sequence[int], windows: int | None = None) -> float:
        candidates, removed = self.candidates, set(self.removed(genome))
        candidates.apply([candidates.applied[i] if i in removed else s  # a removed block's weights are not run
                          for i, s in enumerate(self.sparsities(genome))])
        flags = [int(i not in removed) for i in range(len(genome))]
        return _without_blocks(candidates.adapter, list(candidates.adapter.layers), flags, candidates.kl, windows)


class DepthSpace:
    """Genomes are one flag per decoder block, 1 kept and 0 removed; a level switch swaps a kept block for a removed
    one, so every candidate keeps as many blocks as `start`. A candidate runs the model without its removed blocks
    (what removing them does), nothing copied."""

    low, high = 0, 1

    def __init__(self, adapter: ModelAdapter, windows: torch.Tensor, device: torch.device, removed: Sequence[int]
                 ) -> None:
        self.adapter = adapter
        self.kl = KLFitness(adapter.model, windows, device)
        self.start = [0 if i in set(removed) else 1 for i in range(len(adapter.layers))]

    @staticmethod
    def removed(genome: Sequence[int]) -> list[int]:
        return [i for i, kept in enumerate(genome) if not kept]

    def mutate(self, genome: Sequence[int], rng: random.Random, switches: int) -> list[int]:
        return level_switch(genome, self.low, self.high, rng, switches)

    def fitness(self, genome: Sequence[int], windows: int | None = None) -> float:
        return _without_blocks(self.adapter, list(self.adapter.layers), genome, self.kl, windows)


def _without_blocks(adapter: ModelAdapter, layers: list[torch.nn.Module], flags: Sequence[int], kl: KLFitness,
                    windows: int | None) -> float:
    """The KL of the model run with the flagged ones of `layers` as its decoder blocks."""
    kept = [i for i, flag in enumerate(flags) if flag]
    with running_layers(adapter, [layers[i] for i in kept], kept):
        return kl(windows)


@dataclass
class WidthLevel:
    """The decoder blocks with every MLP cut to `channels` and every attention to `heads` query heads (as the
    engine's width stages cut them), and how many of them the budget allows at that width."""

    channels: int
    layers: list[torch.nn.Module]
    keep: int
    heads: int | None = None  # None: the attention as it is


def line_neighbours(sizes: Sequence[tuple[int, ...]]) -> list[list[int]]:
    """For each level (its sizes, one per part narrowed), the levels one step away: along each part, the nearest
    level narrower and the nearest wider with every other part the same. Ascending indices."""
    out = []
    for index, own in enumerate(sizes):
        near: list[int] = []
        for part in range(len(own)):
            line = [i for i, other in enumerate(sizes)
                    if i != index and all(o == v for p, (o, v) in enumerate(zip(other, own, strict=True))
                                          if p != part)]
            narrower = [i for i in line if sizes[i][part] < own[part]]
            wider = [i for i in line if sizes[i][part] > own[part]]
            if narrower:
                near.append(max(narrower, key=lambda i: sizes[i][part]))
            if wider:
                near.append(min(wider, key=lambda i: sizes[i][part]))
        out.append(sorted(set(near)))
    return out


class WidthDepthSpace:
    """Genomes are a width level (an index into `levels`, widest first) followed by one flag per decoder block, as
    many kept as that level allows. A mutation either swaps a kept block for a removed one or moves to a
    neighbouring level (`neighbours`; default: the next narrower or wider one in the list), restoring or removing
    blocks at random to meet that level's count. A candidate runs the model with the level's blocks in place of its
    own, without its removed blocks."""

    def __init__(self, adapter: ModelAdapter, windows: torch.Tensor, device: torch.device, levels: list[WidthLevel],
                 start: Sequence[int], neighbours: list[list[int]] | None = None) -> None:
        self.adapter, self.levels = adapter, levels
        self.neighbours = neighbours or [[m for m in (i - 1, i + 1) if 0 <= m < len(levels)]
                                         for i in range(len(levels))]
        self.kl = KLFitness(adapter.model, windows, device)
        self.start = list(start)
        if sum(self.start[1:]) != levels[self.start[0]].keep:
            raise ValueError("the start keeps another number of blocks than its level allows")

    def fitness(self, genome: Sequence[int], windows: int | None = None) -> float:
        return _without_blocks(self.adapter, self.levels[genome[0]].layers, genome[1:], self.kl, windows)

    def mutate(self, genome: Sequence[int], rng: random.Random, switches: int) -> list[int]:
        level, flags = genome[0], list(genome[1:])
        for _ in range(switches):
            kept = [i for i, f in enumerate(flags) if f]
            removed = [i for i, f in enumerate(flags) if not f]
            moves = self.neighbours[level]
            if moves and (rng.random() < 1 / 3 or not (kept and removed)):
                level = rng.choice(moves)
                change = self.levels[level].keep - len(kept)
                for i in rng.sample(removed if change > 0 else kept, abs(change)):
                    flags[i] = int(change > 0)
            elif kept and removed:
                flags[rng.choice(kept)], flags[rng.choice(removed)] = 0, 1
        return [level, *flags]


@dataclass
class EvolutionSettings:
    step: float = 0.05  # sparsity space: sparsity moved between two layers by one level switch
    max_sparsity: float = 0.9  # sparsity space: no layer is pruned beyond this
    # sparsity space: no layer moves more than this many steps from the uniform sparsity. None: no limit for a score
    # method; a weight-updating method keeps one copy of the decoder linears per level, so WEIGHT_LEVEL_STEPS.
    max_steps: int | None = None
    generations: int = 40
    offspring: int = 12  # children of the parent per generation, each scored on the first fitness window
    survivors: int = 2  # the best children, scored on every fitness window against the parent
    max_switches: int = 3  # level switches per child: 1 to this, at random
    time_limit: float | None = None  # seconds; stop after the generation that passes it


@dataclass
class SearchState:
    """Where a search stands; saved after every generation, so a rerun resumes it."""

    generation: int
    genome: list[int]
    fitness: float
    start_fitness: float  # of the starting point: the uniform allocation, or the heuristic's blocks
    evaluated: int = 1
    history: list[dict] = field(default_factory=list)  # per generation: its best fitness so far

    @classmethod
    def load(cls, path: Path) -> SearchState | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):  # none yet, or a damaged one: start again
            return None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_sibling(path)
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(path)


def evolve(space: SparsitySpace | DepthSpace | WidthDepthSpace, settings: EvolutionSettings, seed: int,
           state: SearchState | None = None, on_generation: Callable[[SearchState], None] | None = None
           ) -> SearchState:
    """EvoPress's loop from `space.start` (or from `state`, to resume): each generation's random draws depend only
    on (seed, generation), so a resumed search ends where an uninterrupted one would."""
    if state is None:
        start = space.fitness(space.start)
        state = SearchState(0, list(space.start), start, start)
    started = time.perf_counter()
    while state.generation < settings.generations:
        rng = random.Random(f"{seed}:{state.generation}")
        children = [space.mutate(state.genome, rng, rng.randint(1, settings.max_switches))
                    for _ in range(settings.offspring)]
        children = [c for c in dict.fromkeys(map(tuple, children)) if list(c) != state.genome]
        quick = sorted((space.fitness(c, windows=1), c) for c in children)[:settings.survivors]
        full = [(space.fitness(c), c) for _, c in quick]
        state.evaluated += len(children) + len(full)
        best = min(full, default=None)
        if best is not None and best[0] < state.fitness:
            state.fitness, state.genome = best[0], list(best[1])
        state.generation += 1
        state.history.append({"generation": state.generation, "fitness": state.fitness,
                              "evaluated": state.evaluated})
        if on_generation:
            on_generation(state)
        if settings.time_limit is not None and time.perf_counter() - started > settings.time_limit:
            break
    return state
