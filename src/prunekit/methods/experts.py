"""Expert pruning and merging for mixture-of-experts layers. Pure functions on routing statistics and outputs.

Every expert method decides, for one MoE layer, which experts the layer keeps as groups of the original experts: a
group of one is a kept expert, a larger group is merged into one (its members' weights averaged, weighted by how
often the router chose each; the router keeps the row of the member chosen most often). The engine collects the
statistics (engine/experts.py) and applies the groups (models/surgery.py).

- expert-frequency: the experts the router chooses most often (top-k slots over calibration tokens).
- reap (Lasby et al. 2025, router-weighted expert activation pruning): the mean over the tokens routed to an
  expert of its gate weight x the L2 norm of its output; never-routed experts score 0.
- expert-search (NAEE, Lu et al. 2024, "Not All Experts are Equal"): the subset whose layer output, the router
  re-routing among the kept experts only, is closest (mean squared error) to the full layer's on calibration
  tokens; every subset when there are few, else greedy removal one expert at a time.
- expert-merge (HC-SMoE, Chen et al. 2025): hierarchical clustering (average linkage, cosine distance) of the
  experts by their mean output over calibration tokens, into as many clusters as experts are kept. Before the
  average, each member's intermediate channels are put in the order that best matches the group's dominant
  expert (weight matching, as MC-SMoE aligns neurons before merging): an expert's function does not depend on the
  order of its channels, but an average of unaligned channels mixes unrelated ones. Experts that are already
  aligned (copies, upcycled experts) keep their order.
- expert-random: a seeded random subset, the baseline.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from prunekit.methods.registry import register

Groups = list[list[int]]  # the kept experts, in order: each a group of original expert indices
EXHAUSTIVE_SUBSETS = 5000  # expert-search tries every subset up to this many, else removes greedily


@dataclass
class ExpertRouting:
    """What the router did with one layer's calibration tokens."""

    frequency: torch.Tensor  # [experts] fraction of tokens that chose each expert (among their top k)
    reap: torch.Tensor  # [experts] mean over routed tokens of gate weight x ||expert output||_2
    tokens: int


def routing_frequency(indices: torch.Tensor, experts: int) -> torch.Tensor:
    """Fraction of tokens whose top-k choice ([tokens, k] indices) includes each expert."""
    counts = torch.bincount(indices.reshape(-1), minlength=experts).double()
    return counts / max(1, indices.shape[0])


def reap_saliency(gate_sums: torch.Tensor, routed: torch.Tensor) -> torch.Tensor:
    """REAP's score from per-expert sums of gate x ||output|| over routed tokens and the count of those tokens."""
    return torch.where(routed > 0, gate_sums / routed.clamp(min=1), torch.zeros_like(gate_sums))


def highest(scores: torch.Tensor, keep: int) -> Groups:
    """The `keep` highest-scoring experts as groups of one, in index order (ties: the earlier index)."""
    order = torch.sort(-scores.double(), stable=True).indices[:keep]
    return [[int(i)] for i in sorted(order.tolist())]


def best_subset(error: Callable[[tuple[int, ...]], float], total: int, keep: int,
                exhaustive: int = EXHAUSTIVE_SUBSETS) -> tuple[int, ...]:
    """The subset of `keep` of `total` experts with the lowest `error` (ties: the earlier subset): all subsets when
    there are at most `exhaustive`, else greedy removal of the expert whose removal raises the error least."""
    if math.comb(total, keep) <= exhaustive:
        return min(itertools.combinations(range(total), keep), key=error)
    kept = tuple(range(total))
    while len(kept) > keep:
        kept = min((tuple(e for e in kept if e != drop) for drop in kept), key=error)
    return kept


def cluster_by_output(features: torch.Tensor, clusters: int) -> Groups:
    """HC-SMoE's grouping: agglomerative clustering (average linkage, cosine distance) of [experts, dims] features
    into `clusters` groups, each sorted, ordered by their smallest member."""
    from sklearn.cluster import AgglomerativeClustering

    if clusters == len(features):
        return [[i] for i in range(len(features))]
    labels = AgglomerativeClustering(n_clusters=clusters, metric="cosine", linkage="average").fit_predict(
        features.double().numpy())
    groups: dict[int, list[int]] = {}
    for expert, label in enumerate(labels.tolist()):
        groups.setdefault(label, []).append(expert)
    return sorted(groups.values())


def merge_weights(groups: Groups, frequency: torch.Tensor) -> list[torch.Tensor]:
    """Per group, the weight of each member in the merged expert: its routing frequency, normalised (equal weights
    when no member was ever chosen)."""
    weights = []
    for group in groups:
        f = frequency[group].double()
        weights.append(f / f.sum() if f.sum() > 0 else torch.full((len(group),), 1.0 / len(group), dtype=torch.float64))
    return weights


def align_channels(reference: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    """The order of `member`'s channels ([width, dims] weights per channel) that best matches `reference`'s: the
    permutation maximising the summed inner products of matched channels (an assignment problem, solved exactly),
    so member[order] lines up with reference."""
    from scipy.optimize import linear_sum_assignment

    similarity = reference.double() @ member.double().T
    _, order = linear_sum_assignment(similarity.cpu().numpy(), maximize=True)
    return torch.as_tensor(order, dtype=torch.long)


def dominant(groups: Groups, frequency: torch.Tensor) -> list[int]:
    """Per group, the member chosen most often (ties: the lowest index): its router row stands for the group."""
    return [max(group, key=lambda e: (float(frequency[e]), -e)) for group in groups]


# The methods: (experts to keep, experts in the layer, the statistics they need) -> groups.

@register("expert-frequency", "experts", "MoE: keep the experts the router chooses most often",
          needs=("expert_routing",))
def by_frequency(keep: int, total: int, expert_routing: ExpertRouting) -> Groups:
    return highest(expert_routing.frequency, keep)


@register("reap", "experts", "MoE, REAP: keep the experts with the highest mean gate x output norm on their tokens",
          needs=("expert_routing",))
def by_reap(keep: int, total: int, expert_routing: ExpertRouting) -> Groups:
    return highest(expert_routing.reap, keep)


@register("expert-search", "experts",
          "MoE, NAEE: keep the subset whose re-routed layer output is closest to the full layer's",
          needs=("subset_error",))
def by_search(keep: int, total: int, subset_error: Callable[[tuple[int, ...]], float]) -> Groups:
    return [[e] for e in best_subset(subset_error, total, keep)]


@register("expert-merge", "experts",
          "MoE, HC-SMoE: merge experts with similar outputs (frequency-weighted average) into the kept count",
          needs=("expert_features",))
def by_merging(keep: int, total: int, expert_features: torch.Tensor) -> Groups:
    return cluster_by_output(expert_features, keep)


@register("expert-random", "experts", "MoE baseline: keep a seeded random subset of the experts (per layer)",
          needs=("layer_index",), options=("seed",))
def by_random(keep: int, total: int, layer_index: int, seed: int = 0) -> Groups:
    generator = torch.Generator().manual_seed(seed * 100_003 + layer_index)
    return [[int(e)] for e in sorted(torch.randperm(total, generator=generator)[:keep].tolist())]
