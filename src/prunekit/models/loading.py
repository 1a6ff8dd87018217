"""Loading a causal LM from what the user names: an offline asset, a local directory, a .gguf file or a hub id."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from prunekit.assets.registry import MODELS
from prunekit.errors import PrunekitError
from prunekit.files import first_line
from prunekit.models.adapters import adapter_class_for
from prunekit.models.gguf import cached_asset, cached_gguf
from prunekit.outputs import is_incomplete

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    source: str  # what the user passed
    local_path: Path | None  # the directory the weights came from, when local
    saved_dtype: torch.dtype  # the checkpoint's own dtype, used when saving


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise PrunekitError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise PrunekitError(f"device {device!r} requested but no CUDA GPU is available: use --device cpu")
    return resolved


def resolve_source(spec: str) -> tuple[str, Path | None]:
    """(where to load from, local path or None for a hub id). Converts offline assets and GGUF files first."""
    if spec.lower() in MODELS:
        return str(cached_asset(MODELS[spec.lower()])), None
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(cached_gguf(path)), path
    if path.is_dir():
        if is_incomplete(path):
            raise PrunekitError(f"{path} is an unfinished prunekit output (its run was interrupted): rerun the "
                                "command that writes it")
        if not (path / "config.json").exists():
            raise PrunekitError(f"{path} is not a Hugging Face model directory (no config.json in it)")
        return str(path), path
    if path.exists():
        raise PrunekitError(f"{path} is neither a model directory nor a .gguf file")
    if _HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
        return spec, None
    raise PrunekitError(
        f"model {spec!r} not found: pass a model directory, a .gguf file, a hub id such as Qwen/Qwen2.5-0.5B, "
        f"or an offline model ({', '.join(MODELS)})"
    )


def local_checkpoint(spec: str) -> Path:
    """A local safetensors directory for `spec`: offline models and GGUF files are converted, hub ids downloaded."""
    where, _ = resolve_source(spec)
    if not Path(where).is_dir():  # a hub id
        from huggingface_hub import snapshot_download

        try:
            where = snapshot_download(where, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja",
                                                             "*.tiktoken"])
        except Exception as e:  # noqa: BLE001
            raise PrunekitError(f"could not download {spec!r}: {first_line(e)} (offline? pass a local directory)"
                                ) from None
    directory = Path(where)
    if not any(directory.glob("*.safetensors")):
        raise PrunekitError(f"{directory} has no .safetensors weights: --stream reads safetensors checkpoints only")
    return directory


def load_config_and_tokenizer(
    where: str, trust_remote_code: bool = False, spec: str | None = None
) -> tuple[PretrainedConfig, PreTrainedTokenizerBase, torch.dtype]:
    """Config, tokenizer and the checkpoint's own dtype; unsupported architectures fail here, before any weights."""
    spec = spec or where
    try:
        config = AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001
        hint = "" if Path(where).is_dir() else (
            " (offline? pass a local directory, a .gguf file or an offline model from `prunekit models`)")
        raise PrunekitError(f"could not read the config of {spec!r}: {first_line(e)}{hint}") from None
    adapter_class_for(config.model_type)
    saved_dtype = getattr(config, "dtype", None) or torch.float32
    if isinstance(saved_dtype, str):
        saved_dtype = DTYPES.get(saved_dtype, torch.float32)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001
        raise PrunekitError(f"could not load the tokenizer of {spec!r}: {first_line(e)}") from None
    return config, tokenizer, saved_dtype


def compute_dtype(dtype: str, device: torch.device, saved_dtype: torch.dtype) -> torch.dtype:
    """`auto`: float32 on CPU (half-precision matmuls are slow and lossy there), the checkpoint's dtype on a GPU."""
    if dtype == "auto":
        return torch.float32 if device.type == "cpu" else saved_dtype
    if dtype in DTYPES:
        return DTYPES[dtype]
    raise PrunekitError(f"unknown dtype {dtype!r}: use auto, {', '.join(DTYPES)}")


def load_model(
    spec: str,
    dtype: str = "auto",
    device: str | None = "cpu",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> LoadedModel:
    where, local = resolve_source(spec)
    if local is not None and local.is_dir():
        has_safetensors = any(local.glob("*.safetensors"))
        if not has_safetensors and not allow_pickle:
            raise PrunekitError(
                f"{local} has no .safetensors weights; loading pickled weights can run arbitrary code: "
                "convert them, or pass --allow-pickle if you trust the files"
            )
    config, tokenizer, saved_dtype = load_config_and_tokenizer(where, trust_remote_code, spec)
    load_dtype = compute_dtype(dtype, resolve_device(device), saved_dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            where,
            config=config,
            dtype=load_dtype,
            trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
        )
    except Exception as e:  # noqa: BLE001 - corrupt files and hub failures surface as many exception types
        raise PrunekitError(f"could not load model {spec!r}: {first_line(e)}") from None
    model.eval()
    return LoadedModel(model, tokenizer, spec, local, saved_dtype)
