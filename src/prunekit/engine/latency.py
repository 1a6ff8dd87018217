"""The latency cost model of `prunekit search`: the model itself timed on this machine with its first k decoder
blocks, for a few k (interleaved rounds, medians), and a straight line fitted through the medians
(methods/cost.py). Measured once per model, machine, dtype and thread count, and cached.

Timed as `prunekit bench` times (eval/speed.py's loops): decode is seconds per token of a greedy loop with the KV
cache at batch 1 after a `prompt_len`-token prompt; prefill is one forward over the prompt.
"""

from __future__ import annotations

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
from prunekit.methods.cost import fit_line
from prunekit.models.adapters.base import ModelAdapter

KINDS = ("decode", "prefill")


@dataclass
class LatencyModel:
    """seconds(k blocks) = intercept + slope * k, for one kind of work (decode: per token; prefill: per prompt)."""

    kind: str
    intercept: float
    slope: float
    blocks: list[int] = field(default_factory=list)  # the depths measured
    seconds: list[float] = field(default_factory=list)  # their medians
    environment: dict[str, object] = field(default_factory=dict)

    def seconds_for(self, blocks: int) -> float:
        return self.intercept + self.slope * blocks


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
def time_depth(adapter: ModelAdapter, blocks: int, kind: str, probe: LatencyProbe, device: torch.device) -> float:
    """Seconds of one run of `kind` for the model with its first `blocks` decoder blocks."""
    ids = make_prompt(1, probe.prompt_len, adapter.config.vocab_size, probe.seed).to(device)
    with running_layers(adapter, list(adapter.layers)[:blocks], list(range(blocks))):
        if kind == "decode":
            return decode(adapter.model, ids, probe.new_tokens)[1] / probe.new_tokens
        return time_prefill(adapter.model, ids)[0]


def time_depths(adapter: ModelAdapter, depths: list[int], kind: str, probe: LatencyProbe, device: torch.device
                ) -> list[float]:
    """Median seconds per depth over `probe.repeats` rounds (after a discarded one), each round timing every depth
    once in turn, so that drift in the machine's load falls on all depths alike (as `prunekit bench` interleaves)."""
    runs: list[list[float]] = [[] for _ in depths]
    for round_ in range(probe.repeats + 1):
        for index, blocks in enumerate(depths):
            seconds = time_depth(adapter, blocks, kind, probe, device)
            if round_:
                runs[index].append(seconds)
    return [statistics.median(r) for r in runs]


def _environment(adapter: ModelAdapter, device: torch.device, probe: LatencyProbe) -> dict[str, object]:
    dtype = next(adapter.model.parameters()).dtype
    return {"device": str(device), "device_name": device_name(device), "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
            "dtype": str(dtype).removeprefix("torch."), "probe": asdict(probe)}


def _path(adapter: ModelAdapter, kind: str, environment: dict[str, object]) -> Path:
    digest = hashlib.sha256(adapter.config.to_json_string(use_diff=False).encode())
    digest.update(json.dumps({"kind": kind, **environment}, sort_keys=True).encode())
    return cache_dir() / "latency" / f"{digest.hexdigest()[:24]}.json"


def latency_model(adapter: ModelAdapter, kind: str, device: torch.device, probe: LatencyProbe | None = None,
                  refresh: bool = False) -> tuple[LatencyModel, bool]:
    """The fitted line for `kind` on this machine, and whether it came from the cache; measured when not cached
    (or `refresh`). One-line error when the timings do not grow with depth (the cost model cannot be fitted)."""
    probe = probe or LatencyProbe()
    model = adapter.model
    environment = _environment(adapter, device, probe)
    path = _path(adapter, kind, environment)
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
        seconds = time_depths(adapter, depths, kind, probe, device)
    finally:
        model.to(home)
    intercept, slope = fit_line(depths, seconds)
    if slope <= 0:
        measured = ", ".join(f"{k} blocks {s * 1000:.2f} ms" for k, s in zip(depths, seconds, strict=True))
        raise PrunekitError(f"{kind} time does not grow with depth on this machine ({measured}): the latency cost "
                            "model cannot be fitted; use a params= target, or measure on a quieter machine")
    fitted = LatencyModel(kind, intercept, slope, depths, seconds, environment)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    tmp.write_text(json.dumps(asdict(fitted), indent=2))
    tmp.replace(path)
    return fitted, False
