"""What `prunekit search --target` means: a budget parsed from `KEY=VALUE` (params=F, memory=SIZE, decode=X,
prefill=X), and the sizes of a model it is measured against. One-line errors for anything else."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunekit.errors import PrunekitError

LATENCY = ("decode", "prefill")


@dataclass(frozen=True)
class Target:
    key: str  # params | memory | decode | prefill
    value: float  # params: the fraction of the parameters kept; memory: bytes; decode / prefill: the speed-up

    def __str__(self) -> str:
        if self.key == "memory":
            return f"memory={self.value / 1e9:.4g}GB"
        return f"{self.key}={self.value:g}" + ("x" if self.key in LATENCY else "")


UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_size(text: str) -> float:
    """`1.2GB`, `800MiB`, `5e8` (bytes) -> bytes; ValueError otherwise."""
    text = text.strip().lower().replace(" ", "")
    digits = text.rstrip("kmgibB")
    unit = text[len(digits):] or "b"
    if unit not in UNITS:
        raise ValueError(unit)
    return float(digits) * UNITS[unit]


def parse_target(text: str | float) -> Target:
    """`params=F` (keep the fraction F of the parameters), `memory=SIZE` (weights of at most SIZE bytes, e.g. 1.2GB
    or 800MiB), `decode=X` / `prefill=X` (X times faster, `1.3` or `1.3x`); a bare number is params. One-line
    errors otherwise."""
    if isinstance(text, int | float):
        text = f"params={text}"
    key, sep, value = text.partition("=")
    key = key.strip().lower()
    if not sep:
        raise PrunekitError(f"--target {text!r} is not KEY=VALUE: give e.g. params=0.75 (keep 75% of the "
                            "parameters), memory=1.2GB or decode=1.3x (decode 1.3 times faster)")
    if key not in ("params", "memory", *LATENCY):
        raise PrunekitError(f"unknown --target key {key!r}: use params=F (e.g. params=0.75), memory=SIZE (e.g. "
                            "memory=1.2GB), decode=X or prefill=X (e.g. decode=1.3x)")
    if key == "memory":
        try:
            size = parse_size(value)
        except ValueError:
            raise PrunekitError(f"--target memory={value!r} is not a size: give e.g. memory=1.2GB or "
                                "memory=800MiB") from None
        if not 0 < size < float("inf"):
            raise PrunekitError(f"--target memory={value} must be a positive size, e.g. 1.2GB")
        return Target(key, size)
    try:
        number = float(value.strip().lower().removesuffix("x"))
    except ValueError:
        raise PrunekitError(f"--target {key}={value!r} is not a number: give e.g. "
                            f"{'params=0.75' if key == 'params' else key + '=1.3x'}") from None
    if key == "params" and not 0.0 < number < 1.0:
        raise PrunekitError(f"--target params={value} must be a fraction between 0 and 1 (1 is the dense model)")
    if key in LATENCY and not 1.0 < number < float("inf"):
        raise PrunekitError(f"--target {key}={value} must be a speed-up above 1 (1 is the dense model), e.g. 1.3x")
    return Target(key, number)


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's distinct parameters as saved (dense safetensors at their dtype)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def memory_fraction(target: Target, model: torch.nn.Module) -> float:
    """The fraction of the parameters a memory= target keeps (parameters share one dtype); error above dense."""
    dense = weight_bytes(model)
    if target.value >= dense:
        raise PrunekitError(f"memory={target.value / 1e9:.3g}GB is not below the dense model's "
                            f"{dense / 1e9:.3g}GB of weights: nothing to remove")
    return target.value / dense
