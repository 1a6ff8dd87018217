"""Statistics of the dense model kept on disk, so another target (a size, a sparsity) reuses them without
recalibrating: structured importance scores, gradient norms, OWL's outlier ratios. A key is a fingerprint of the
model's weights, the calibration tokens and what was computed from them."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from prunekit.assets.cache import cache_dir
from prunekit.files import temporary_sibling
from prunekit.models.adapters.base import ModelAdapter


def fingerprint(adapter: ModelAdapter, windows: torch.Tensor, *parts: object) -> str:
    """A key for scores: the layer shapes, a strided sample of every weight, the calibration tokens, the method."""
    digest = hashlib.sha256()
    for name, p in adapter.model.named_parameters():
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)].float().cpu()
        digest.update(f"{name}{tuple(p.shape)}".encode())
        digest.update(sample.numpy().tobytes())
    digest.update(windows.cpu().numpy().tobytes())
    digest.update(repr(parts).encode())
    return digest.hexdigest()[:24]


class ScoreCache:
    """Scores on disk under <cache>/scores, one safetensors file per key; `enabled=False` turns it off."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.hits: list[str] = []

    def _path(self, key: str) -> Path:
        return cache_dir() / "scores" / f"{key}.safetensors"

    def load(self, key: str) -> dict[str, torch.Tensor] | None:
        if not (self.enabled and self._path(key).exists()):
            return None
        try:
            scores = load_file(self._path(key))
        except (OSError, SafetensorError):  # a damaged entry is a miss: it is computed again and replaced
            return None
        self.hits.append(key)
        return scores

    def save(self, key: str, scores: dict[str, torch.Tensor]) -> None:
        if self.enabled:
            path = self._path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = temporary_sibling(path)
            save_file({k: v.contiguous().cpu() for k, v in scores.items()}, tmp)
            tmp.replace(path)

    def get_or_compute(self, key: str, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        scores = self.load(key)
        if scores is None:
            scores = compute()
            self.save(key, scores)
        return scores
