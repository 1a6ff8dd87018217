"""The latency cost model of `prunekit search`: the model itself timed on this machine with its first k decoder
blocks, for a few k, and (for a width search) with every block's MLP narrowed to a few widths or its attention cut to
fewer heads (interleaved rounds, medians); a line in k, or a plane in k, k x width and k x heads, fitted through the
medians (methods/cost.py). Measured once per model, machine, dtype, thread count and set of widths and head counts,
and cached.

Timed as `prunekit bench` times (eval/speed.py's loops): decode is seconds per token of a greedy loop with the KV
cache at batch 1 after a `prompt_len`-token prompt; prefill is one forward over the prompt.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import platform
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from prunekit.assets.cache import cache_dir
from prunekit.engine.structured import running_layers
from prunekit.errors import PrunekitError
from prunekit.eval.speed import decode, device_name, make_prompt, time_prefill
from prunekit.files import temporary_sibling
from prunekit.methods.cost import fit_line, fit_plane
from prunekit.models import surgery
from prunekit.models.adapters.base import ModelAdapter

KINDS = ("decode", "prefill")


@dataclass
class LatencyModel:
    """seconds(k blocks, MLP width w, heads h) = intercept + k * (slope + width_slope * (w - 1) + head_slope *
    (h - 1)), w and h the fractions of MLP channels and query heads kept, for one kind of work (decode: per token;
    prefill: per prompt)."""

    kind: str
    intercept: float
    slope: float
    blocks: list[int] = field(default_factory=list)  # the depths measured (at full width)
    seconds: list[float] = field(default_factory=list)  # their medians
    environment: dict[str, object] = field(default_factory=dict)
    width_slope: float = 0.0  # 0 unless widths were measured
    widths: list[float] = field(default_factory=list)  # the MLP widths measured (with every block)
    width_seconds: list[float] = field(default_factory=list)  # their medians
    head_slope: float = 0.0  # 0 unless head counts were measured
    heads: list[float] = field(default_factory=list)  # the fractions of query heads measured (with every block)
    head_seconds: list[float] = field(default_factory=list)  # their medians

    def seconds_for(self, blocks: int, width: float = 1.0, heads: float = 1.0) -> float:
        return self.intercept + blocks * self.per_block(width, heads)

    def per_block(self, width: float = 1.0, heads: float = 1.0) -> float:
        return self.slope + self.width_slope * (width - 1.0) + self.head_slope * (heads - 1.0)


@dataclass
class LatencyProbe:
    prompt_len: int = 128
    new_tokens: int = 32
    repeats: int = 5  # medians of this many rounds per depth, after one discarded
    seed: int = 0


def probe_depths(total: int) -> list[int]:
    """The depths timed: all blocks, three quarters, half, a quarter (distinct, at least one)."""
    return sorted({max(1, math.ceil(total * f)) for f in (1.0, 0.75, 0.5, 0.25)})


@torch.no_grad()
def time_layers(adapter: ModelAdapter, layers: list[torch.nn.Module], kind: str, probe: LatencyProbe,
                device: torch.device) -> float:
    """Seconds of one run of `kind` for the model with `layers` as its decoder blocks."""
    ids = make_prompt(1, probe.prompt_len, adapter.config.vocab_size, probe.seed).to(device)
    with running_layers(adapter, layers, list(range(len(layers)))):
        if kind == "decode":
            return decode(adapter.model, ids, probe.new_tokens)[1] / probe.new_tokens
        return time_prefill(adapter.model, ids)[0]


def time_configurations(adapter: ModelAdapter, configurations: list[list[torch.nn.Module]], kind: str,
                        probe: LatencyProbe, device: torch.device) -> list[float]:
    """Median seconds per list of decoder blocks over `probe.repeats` rounds (after a discarded one), each round
    timing every configuration once in turn, so that drift in the machine's load falls on all of them alike (as
    `prunekit bench` interleaves)."""
    runs: list[list[float]] = [[] for _ in configurations]
    for round_ in range(probe.repeats + 1):
        for index, layers in enumerate(configurations):
            seconds = time_layers(adapter, layers, kind, probe, device)
            if round_:
                runs[index].append(seconds)
    return [statistics.median(r) for r in runs]


def narrowed_layers(adapter: ModelAdapter, width: float) -> list[torch.nn.Module]:
    """Copies of the decoder blocks with each MLP cut to its first `width` of the channels (for timing only: which
    channels does not change the time)."""
    channels = max(1, round(adapter.mlp_width * width))
    layers = copy.deepcopy(list(adapter.layers))
    for layer in layers:
        surgery.shrink_mlp(adapter, layer, torch.arange(channels))
    return layers


def head_indices(adapter: ModelAdapter, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(query heads, key/value heads) a layer keeps with `heads` query heads as the width stage keeps them: the same
    number of query heads in each key/value group (GQA), or whole heads with their keys and values (one query head
    per key/value head). For timing only, the first ones: which heads does not change the time."""
    if not adapter.grouped_query:
        return torch.arange(heads), torch.arange(heads)
    kv = adapter.num_kv_heads
    per_group = adapter.num_heads // kv
    return (torch.arange(kv).unsqueeze(1) * per_group + torch.arange(heads // kv)).flatten(), torch.arange(kv)


def fewer_heads_layers(adapter: ModelAdapter, heads: int) -> list[torch.nn.Module]:
    """Copies of the decoder blocks with each attention cut to `heads` query heads (for timing only)."""
    keep, keep_kv = head_indices(adapter, heads)
    layers = copy.deepcopy(list(adapter.layers))
    for layer in layers:
        surgery.shrink_attention(adapter, layer, keep, keep_kv, adapter.head_dim)
    return layers


def _environment(adapter: ModelAdapter, device: torch.device, probe: LatencyProbe) -> dict[str, object]:
    dtype = next(adapter.model.parameters()).dtype
    return {"device": str(device), "device_name": device_name(device), "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
            "dtype": str(dtype).removeprefix("torch."), "probe": asdict(probe)}


def _path(adapter: ModelAdapter, kind: str, environment: dict[str, object], widths: tuple[float, ...],
          heads: tuple[int, ...]) -> Path:
    digest = hashlib.sha256(adapter.config.to_json_string(use_diff=False).encode())
    digest.update(json.dumps({"kind": kind, **environment}, sort_keys=True).encode())
    if widths:  # a depth-only model keeps the key it always had, and an MLP-width one too
        digest.update(json.dumps(list(widths)).encode())
    if heads:
        digest.update(json.dumps({"heads": list(heads)}).encode())
    return cache_dir() / "latency" / f"{digest.hexdigest()[:24]}.json"


def latency_model(adapter: ModelAdapter, kind: str, device: torch.device, probe: LatencyProbe | None = None,
                  refresh: bool = False, widths: tuple[float, ...] = (), heads: tuple[int, ...] = ()
                  ) -> tuple[LatencyModel, bool]:
    """The fitted cost model for `kind` on this machine (a plane when `widths`, fractions of the MLP channels, or
    `heads`, query head counts, are measured too), and whether it came from the cache; measured when not cached (or
    `refresh`). One-line error when the timings do not grow with depth, width or heads (the model cannot be
    fitted)."""
    probe = probe or LatencyProbe()
    model = adapter.model
    environment = _environment(adapter, device, probe)
    path = _path(adapter, kind, environment, widths, heads)
    if not refresh and path.exists():
        try:
            return LatencyModel(**json.loads(path.read_text())), True
        except (ValueError, TypeError):
            pass  # damaged: measure again
    total = len(adapter.layers)
    depths = probe_depths(total)
    if len(depths) < 2:
        raise PrunekitError(f"the model has {total} decoder block: a latency target needs at least two to measure "
                            "how time grows with depth")
    home = next(model.parameters()).device
    model.to(device)
    try:
        layers = list(adapter.layers)
        configurations = ([layers[:k] for k in depths] + [narrowed_layers(adapter, w) for w in widths]
                          + [fewer_heads_layers(adapter, h) for h in heads])
        timed = time_configurations(adapter, configurations, kind, probe, device)
    finally:
        model.to(home)
    seconds = timed[:len(depths)]
    width_seconds, head_seconds = timed[len(depths):len(depths) + len(widths)], timed[len(depths) + len(widths):]
    fractions = [h / adapter.num_heads for h in heads]
    if widths or heads:
        # (blocks, MLP width, heads) of each configuration, reduced to the parts measured
        coords = ([(k, 1.0, 1.0) for k in depths] + [(total, w, 1.0) for w in widths]
                  + [(total, 1.0, f) for f in fractions])
        parts = [i for i, wanted in ((1, widths), (2, heads)) if wanted]
        intercept, slope, *slopes = fit_plane([(c[0], *(c[i] for i in parts)) for c in coords], timed)
        named = dict(zip(parts, slopes, strict=True))
        width_slope, head_slope = named.get(1, 0.0), named.get(2, 0.0)
    else:
        (intercept, slope), width_slope, head_slope = fit_line(depths, seconds), 0.0, 0.0
    # below a thousandth of a block the part's share is noise
    flat = [name for name, wanted, part_slope in (("MLP width", widths, width_slope), ("attention heads", heads,
                                                                                      head_slope))
            if wanted and part_slope <= slope * 1e-3]
    if slope <= 0 or flat:
        measured = ", ".join([f"{k} blocks {s * 1000:.2f} ms" for k, s in zip(depths, seconds, strict=True)]
                             + [f"MLP width {w:g} {s * 1000:.2f} ms" for w, s in zip(widths, width_seconds,
                                                                                      strict=True)]
                             + [f"{h} heads {s * 1000:.2f} ms" for h, s in zip(heads, head_seconds, strict=True)])
        grows = "depth" if slope <= 0 else flat[0]
        raise PrunekitError(f"{kind} time does not grow with {grows} on this machine ({measured}): the latency cost "
                            "model cannot be fitted; use a params= target, or measure on a quieter machine")
    fitted = LatencyModel(kind, intercept, slope, depths, seconds, environment, width_slope, list(widths),
                          width_seconds, head_slope, fractions, head_seconds)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    tmp.write_text(json.dumps(asdict(fitted), indent=2))
    tmp.replace(path)
    return fitted, False
