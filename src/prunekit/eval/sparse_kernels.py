"""2:4 sparse weights through PyTorch's semi-structured sparse kernels (CUDA): speed against the same model dense.

A model pruned with `--pattern 2:4` keeps at most 2 of every 4 consecutive inputs of each linear weight row, but
its weights are stored and multiplied dense: no faster. On an Ampere or newer NVIDIA GPU, PyTorch packs such a
weight into a `SparseSemiStructuredTensor` (half the values plus 2-bit indices) and multiplies it with sparse
tensor cores (cuSPARSELt, or CUTLASS where cuSPARSELt is missing), in float16 or bfloat16.

Method. The model is loaded once on the GPU. Every `nn.Linear` whose weight is 2:4 (checked, not assumed: packing
a weight that is not 2:4 silently drops values) and whose shape the kernels take is packed; both weights are
kept, and each measured round runs the model dense, then sparse, swapping the weight objects between them, so
drift (clocks, other load) hits both alike. A round measures, as `prunekit bench` does, on fixed random prompt
ids: prefill (one forward over `prompt_len` tokens at batch 1) and greedy decode with the KV cache at each batch
size (`new_tokens` steps, timed alone). The logits of one prefill, dense and sparse, give the largest absolute
difference (the kernels sum in another order; nothing else differs) and the share of positions whose argmax
agrees.
"""

from __future__ import annotations

import inspect
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from rich.table import Table
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.runinfo import versions

RESULT_VERSION = 1
NO_CUDA = ("--sparse-kernels needs a CUDA GPU: PyTorch's 2:4 semi-structured sparse kernels run on NVIDIA GPUs "
           "only (Ampere or newer) and none is available here; run it on a machine with one")


@dataclass
class SparseKernelConfig:
    prompt_len: int = 128
    new_tokens: int = 64
    batch_sizes: tuple[int, ...] = (1, 8)
    repeats: int = 5  # medians of this many rounds
    warmup: int = 1  # discarded rounds first
    device: str = "auto"  # a CUDA device
    dtype: str = "auto"  # auto: the checkpoint's dtype when half, else bfloat16; or float16 / bfloat16
    seed: int = 0  # of the prompt ids
    threads: int | None = None  # CPU threads (the host side only)
    trust_remote_code: bool = False


# ---- what can be checked anywhere ----


def require_cuda(device: str = "auto") -> torch.device:
    """The CUDA device to run on, or a one-line error: no GPU, a CPU device asked for, or a GPU too old."""
    if not torch.cuda.is_available():
        raise PrunekitError(NO_CUDA)
    resolved = torch.device("cuda" if device in (None, "auto") else device)
    if resolved.type != "cuda":
        raise PrunekitError(f"--sparse-kernels runs on a CUDA GPU, not on {device!r}: use --device auto or cuda:N")
    major, minor = torch.cuda.get_device_capability(resolved)
    if major < 8:
        raise PrunekitError(f"--sparse-kernels needs an Ampere or newer GPU (compute capability 8.0+); "
                            f"{torch.cuda.get_device_name(resolved)} is {major}.{minor}")
    return resolved


def is_2to4(weight: torch.Tensor) -> bool:
    """At most 2 non-zeros in every group of 4 consecutive inputs of every row (the layout the kernels pack)."""
    if weight.ndim != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight.reshape(weight.shape[0], -1, 4) != 0).sum(-1) <= 2).all())


def magnitude_2to4(weight: torch.Tensor) -> torch.Tensor:
    """A copy keeping the 2 largest magnitudes of every 4 consecutive inputs: 2:4 weights for a speed check of a
    model not pruned yet (its outputs are not a pruned model's: only the timing means something)."""
    groups = weight.reshape(weight.shape[0], -1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.abs().topk(2, dim=-1).indices, True)
    return (groups * keep).reshape(weight.shape)


def sparse_class() -> type:
    """cuSPARSELt's packing where PyTorch was built with it, CUTLASS's otherwise (what the kernels will run)."""
    available = getattr(torch.backends, "cusparselt", None)
    if available is not None and available.is_available():
        return torch.sparse.SparseSemiStructuredTensorCUSPARSELT
    return torch.sparse.SparseSemiStructuredTensorCUTLASS


def kernel_tile(dtype: torch.dtype) -> tuple[int, int]:
    """The kernels' tile for `dtype`: weight rows and columns must each be a multiple of it."""
    constraints = sparse_class()._DTYPE_SHAPE_CONSTRAINTS.get(dtype)
    if constraints is None:
        raise PrunekitError(f"the 2:4 sparse kernels take float16 or bfloat16 weights, not {dtype}: pass --dtype "
                            "float16 or --dtype bfloat16")
    return constraints.sparse_min_rows, constraints.sparse_min_cols


def _skip_reason(linear: nn.Linear, dtype: torch.dtype, tile: tuple[int, int]) -> str | None:
    rows, cols = linear.weight.shape
    if not is_2to4(linear.weight):
        return "not 2:4"
    if rows % tile[0] or cols % tile[1]:
        return f"shape {rows} x {cols} is not a multiple of the kernels' {tile[0]} x {tile[1]}"
    if linear.weight.dtype != dtype:
        return f"dtype {linear.weight.dtype}"
    return None


def select_linears(model: nn.Module, dtype: torch.dtype,
                   tile: tuple[int, int] | None = None) -> tuple[list[str], dict[str, str]]:
    """(names of the linears the kernels will run, {name: why not} for the other linears). A head tied to the
    embedding is left dense: packing it would also replace the embedding's table."""
    tile = tile or kernel_tile(dtype)
    tied = {id(model.get_input_embeddings().weight)} if hasattr(model, "get_input_embeddings") else set()
    selected, skipped = [], {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        reason = "tied to the embedding" if id(module.weight) in tied else _skip_reason(module, dtype, tile)
        if reason is None:
            selected.append(name)
        else:
            skipped[name] = reason
    return selected, skipped


# ---- measuring, on the GPU ----


class _Swap:
    """Each selected linear's dense and packed weights, and which of them the model runs now."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        packer = sparse_class()
        self.pairs = []
        for name in names:
            linear = model.get_submodule(name)
            dense = linear.weight
            packed = nn.Parameter(packer.from_dense(dense.detach()), requires_grad=False)
            self.pairs.append((linear, dense, packed))

    def use(self, sparse: bool) -> None:
        for linear, dense, packed in self.pairs:
            linear.weight = packed if sparse else dense

    def bytes(self) -> dict[str, int]:
        dense = sum(d.numel() * d.element_size() for _, d, _ in self.pairs)
        packed = sum(_packed_bytes(p) for _, _, p in self.pairs)
        return {"dense": dense, "packed": packed}


def _packed_bytes(parameter: nn.Parameter) -> int:
    """Bytes of a packed weight: its values and metadata, for the forward and (where kept) transposed use."""
    tensor = parameter.data
    parts = ("packed", "meta", "packed_t", "meta_t", "compressed_swizzled_bitmask")
    return sum(t.numel() * t.element_size() for t in (getattr(tensor, p, None) for p in parts) if t is not None)


def _last_logits_only(model: nn.Module) -> dict[str, int]:
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # the timing loops also run on the CPU, in the tests
        torch.cuda.synchronize(device)


@torch.inference_mode()
def _prefill_seconds(model: nn.Module, ids: torch.Tensor) -> float:
    _sync(ids.device)
    start = time.perf_counter()
    model(input_ids=ids, use_cache=True, **_last_logits_only(model))
    _sync(ids.device)
    return time.perf_counter() - start


@torch.inference_mode()
def _decode_seconds(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> float:
    """The greedy loop with the KV cache after an untimed prefill (transformers 5 names the cache `cache`)."""
    out = model(input_ids=ids, use_cache=True, **_last_logits_only(model))
    cache, token = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
    _sync(ids.device)
    start = time.perf_counter()
    for _ in range(new_tokens):
        out = model(input_ids=token, cache=cache, use_cache=True)
        cache, token = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
    _sync(ids.device)
    return time.perf_counter() - start


def _round(model: nn.Module, prompt: torch.Tensor, config: SparseKernelConfig) -> dict[str, Any]:
    return {"prefill_s": _prefill_seconds(model, prompt[:1]),
            "decode_s": {str(b): _decode_seconds(model, prompt[:b], config.new_tokens) for b in config.batch_sizes}}


@torch.inference_mode()
def _logits_difference(model: nn.Module, swap: _Swap, ids: torch.Tensor) -> dict[str, float]:
    swap.use(False)
    dense = model(input_ids=ids).logits.float()
    swap.use(True)
    sparse = model(input_ids=ids).logits.float()
    return {"max_abs_diff": (dense - sparse).abs().max().item(), "max_abs_logit": dense.abs().max().item(),
            "argmax_agreement": (dense.argmax(-1) == sparse.argmax(-1)).float().mean().item()}


def _rounds(model: nn.Module, swap: _Swap, prompt: torch.Tensor, config: SparseKernelConfig,
            say: Callable[[str], None]) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {"dense": [], "sparse": []}
    for r in range(config.warmup + config.repeats):
        measured = r >= config.warmup
        say(f"{'run' if measured else 'warmup'} {r + 1 - (config.warmup if measured else 0)}")
        for kind in ("dense", "sparse"):
            swap.use(kind == "sparse")
            result = _round(model, prompt, config)
            if measured:
                runs[kind].append(result)
    return runs


def _stats(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def _speeds(runs: list[dict[str, Any]], config: SparseKernelConfig) -> dict[str, Any]:
    return {"prefill_tokens_per_s": _stats([config.prompt_len / r["prefill_s"] for r in runs]),
            "decode_tokens_per_s": {str(b): _stats([b * config.new_tokens / r["decode_s"][str(b)] for r in runs])
                                    for b in config.batch_sizes}}


def _kernel_dtype(requested: str, saved: torch.dtype) -> str:
    if requested == "auto":
        return "float16" if saved == torch.float16 else "bfloat16"
    if requested not in ("float16", "bfloat16"):
        raise PrunekitError(f"the 2:4 sparse kernels take float16 or bfloat16, not {requested!r}: pass --dtype "
                            "float16 or --dtype bfloat16")
    return requested


def _check(config: SparseKernelConfig) -> None:
    for name in ("prompt_len", "new_tokens", "repeats"):
        if getattr(config, name) < 1:
            raise PrunekitError(f"{name.replace('_', '-')} must be at least 1, not {getattr(config, name)}")
    if config.warmup < 0:
        raise PrunekitError(f"warmup must be 0 or more, not {config.warmup}")
    if not config.batch_sizes or min(config.batch_sizes) < 1:
        raise PrunekitError(f"batch sizes must be 1 or more, not {list(config.batch_sizes)}")


def benchmark_sparse_kernels(spec: str, config: SparseKernelConfig | None = None, make_2to4: bool = False,
                             on_progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Dense against 2:4 kernels for one model (see the module docstring); a JSON-serialisable result.
    `make_2to4` first prunes every decoder linear to 2:4 by magnitude (a timing check of an unpruned model)."""
    from prunekit.eval.speed import device_name, make_prompt
    from prunekit.models.loading import load_config_and_tokenizer, load_model, resolve_source

    config = config or SparseKernelConfig()
    _check(config)
    device = require_cuda(config.device)  # before any loading: the answer without a GPU is immediate
    say = on_progress or _print_progress
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    model_config, _, saved = load_config_and_tokenizer(resolve_source(spec)[0], config.trust_remote_code, spec)
    limit = getattr(model_config.get_text_config(), "max_position_embeddings", None)
    if limit is not None and config.prompt_len + config.new_tokens > limit:
        raise PrunekitError(f"{spec!r}: --prompt-len + --new-tokens = {config.prompt_len + config.new_tokens} "
                            f"exceeds its context of {limit}")
    dtype = _kernel_dtype(config.dtype, saved)
    say(f"loading {spec} ({dtype})")
    model = load_model(spec, dtype=dtype, device=str(device), trust_remote_code=config.trust_remote_code).model
    model = model.to(device).eval()
    if make_2to4:
        _prune_decoder_linears(model)
    selected, skipped = select_linears(model, getattr(torch, dtype))
    if not selected:
        raise PrunekitError(f"{spec!r} has no 2:4-sparse linear weight the kernels take ({_reasons(skipped)}): "
                            "prune it first, e.g. prunekit prune MODEL --method wanda --pattern 2:4 --out DIR")
    say(f"packing {len(selected)} linears")
    swap = _Swap(model, selected)
    vocab = model_config.get_text_config().vocab_size
    prompt = make_prompt(max(config.batch_sizes), config.prompt_len, vocab, config.seed).to(device)
    difference = _logits_difference(model, swap, prompt[:1])
    runs = _rounds(model, swap, prompt, config, say)
    dense, sparse = _speeds(runs["dense"], config), _speeds(runs["sparse"], config)
    return {
        "prunekit_sparse_kernels_version": RESULT_VERSION,
        "model": spec, "dtype": dtype, "made_2to4_by_magnitude": make_2to4,
        "config": {**asdict(config), "batch_sizes": list(config.batch_sizes)},
        "environment": {"device": str(device), "device_name": device_name(device), "backend": sparse_class().BACKEND,
                        "cpu_count": os.cpu_count(), "platform": platform.platform(), "versions": versions()},
        "linears": {"sparse": selected, "dense": skipped, "weight_bytes": swap.bytes()},
        "logits": difference,
        "dense": dense, "sparse": sparse,
        "speedup": {"prefill": sparse["prefill_tokens_per_s"]["median"] / dense["prefill_tokens_per_s"]["median"],
                    "decode": {b: s["median"] / dense["decode_tokens_per_s"][b]["median"]
                               for b, s in sparse["decode_tokens_per_s"].items()}},
    }


def _prune_decoder_linears(model: nn.Module) -> None:
    """Magnitude 2:4 on every linear but the head (the head stays dense in pruned models too)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and module is not head and module.weight.shape[1] % 4 == 0:
                module.weight.copy_(magnitude_2to4(module.weight))


def _reasons(skipped: dict[str, str]) -> str:
    counts: dict[str, int] = {}
    for reason in skipped.values():
        key = "other shape" if reason.startswith("shape") else reason
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} {reason}" for reason, n in counts.items()) or "no linear layers"


def _print_progress(message: str) -> None:
    from prunekit.progress import console

    console.print(f"[dim]{message}[/]", highlight=False)


# ---- the table ----


def render_table(result: dict[str, Any]) -> Table:
    """Dense and sparse rows: prefill and decode tokens/s (medians), sparse with its speedup in parentheses."""
    config, env = result["config"], result["environment"]
    batch_sizes = [str(b) for b in config["batch_sizes"]]
    linears, logits = result["linears"], result["logits"]
    table = Table(
        title=f"2:4 sparse kernels, {result['model']} ({result['dtype']}, {env['backend']})",
        caption=f"{env['device_name']}; {len(linears['sparse'])} linears packed, {len(linears['dense'])} dense; "
        f"prompt {config['prompt_len']} tokens, {config['new_tokens']} decoded; medians of {config['repeats']}; "
        f"logits max |diff| {logits['max_abs_diff']:.3g} (max |logit| {logits['max_abs_logit']:.3g}), argmax "
        f"agreement {logits['argmax_agreement']:.1%}",
    )
    for column in ("weights", "prefill tok/s", *(f"decode tok/s b={b}" for b in batch_sizes)):
        table.add_column(column, justify="left" if column == "weights" else "right")
    for kind in ("dense", "sparse"):
        speeds, sparse = result[kind], kind == "sparse"
        prefill = f"{speeds['prefill_tokens_per_s']['median']:,.0f}"
        decode = [f"{speeds['decode_tokens_per_s'][b]['median']:,.1f}" for b in batch_sizes]
        if sparse:
            prefill += f" ({result['speedup']['prefill']:.2f}x)"
            decode = [f"{d} ({result['speedup']['decode'][b]:.2f}x)" for d, b in zip(decode, batch_sizes, strict=True)]
        table.add_row(kind, prefill, *decode)
    return table
