"""Speed and size of causal LMs side by side: a dense model and pruned versions of it, measured in one run.

Method. Each model is loaded once, in a fresh process of its own (`python -m prunekit.eval.speed --worker`), so one
model's memory never hides another's: peak memory is the child's `ru_maxrss` (on CUDA its
`torch.cuda.max_memory_allocated`), and it includes loading. A run measures, on fixed random prompt ids drawn once
from a seeded generator within the smallest vocabulary (the same prompt for every model):

- prefill: one forward over `prompt_len` tokens at batch 1 with `use_cache=True` (logits of the last position only,
  as generation computes them); tokens/s = prompt_len / seconds;
- time to first token: that prefill plus choosing the first token (argmax, copied to the host), in ms;
- decode at each batch size: after an untimed prefill, a plain greedy loop feeding one token per sequence with the
  KV cache, `new_tokens` steps, no EOS stopping; tokens/s = batch * new_tokens / seconds of the loop alone.
  A hand-written loop instead of `generate`, so that nothing but the model's forward and the argmax is timed.

By default the models are interleaved: every child loads first, then each round runs model A, then B, then C, so
drift (heat, other load) hits all models alike. Each model runs `warmup` discarded rounds and `repeats` measured
ones; the result keeps every raw run and reports median, min and max, and ratios against the first model (the
baseline, normally the dense one). Interleaving keeps all models loaded at once; `interleave=False` runs one model
after the other instead, holding one at a time. Threads are left at torch's default unless `threads` is set: on a
machine busy with other work, torch's one thread per core oversubscribes the cores and its threads wait on each
other (seen: prefill 10x slower with 2 threads than with 1 on 2 shared cores), so pass threads=1 there. The figures
depend on the machine and its load at that moment: compare them within one run only.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import torch
from rich.table import Table
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from prunekit.errors import PrunekitError
from prunekit.files import first_line
from prunekit.models.loading import DTYPES, compute_dtype, resolve_device, resolve_source
from prunekit.outputs import atomic_file
from prunekit.runinfo import count_parameters, peak_rss_bytes, versions

RESULT_VERSION = 1


@dataclass
class SpeedConfig:
    prompt_len: int = 128  # tokens in the prompt (prefill)
    new_tokens: int = 64  # tokens decoded after the prompt
    batch_sizes: tuple[int, ...] = (1, 8)  # decode throughput measured at each
    repeats: int = 5  # medians over this many runs
    warmup: int = 1  # discarded runs before them
    device: str = "auto"  # auto: cuda if available, else cpu
    dtype: str = "auto"  # auto: float32 on CPU, the checkpoint's dtype on a GPU; or float32 / bfloat16 / float16
    seed: int = 0  # of the prompt ids
    interleave: bool = True  # all models loaded at once, runs alternating; False: one model at a time
    threads: int | None = None  # torch's default (one per core) unless set
    trust_remote_code: bool = False


@dataclass
class _Target:
    """A model as the parent sees it before any weights are loaded."""

    spec: str  # what the user passed
    where: str  # the directory (or hub id) to load from
    config: PretrainedConfig
    dtype: str


# ---- measuring, in the child process (and in tests) ----


def make_prompt(batch: int, length: int, vocab: int, seed: int) -> torch.Tensor:
    """Random token ids [batch, length] below `vocab`; the same for a given seed in every process."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=generator)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _last_logits_only(model: nn.Module) -> dict[str, int]:
    """Ask for the last position's logits alone, as generation does, where the model's forward takes the option."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


@torch.inference_mode()
def time_prefill(model: nn.Module, ids: torch.Tensor) -> tuple[float, float]:
    """(prefill seconds, time-to-first-token seconds) of one forward over `ids` with a KV cache."""
    device = ids.device
    _sync(device)
    start = time.perf_counter()
    out = model(input_ids=ids, use_cache=True, **_last_logits_only(model))
    _sync(device)
    prefilled = time.perf_counter()
    out.logits[:, -1].argmax(-1).cpu()
    return prefilled - start, time.perf_counter() - start


def _cache_keyword(model: nn.Module) -> str:
    """What the model's forward calls the KV cache: `cache` from transformers 5.24, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.inference_mode()
def decode(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, float]:
    """Greedy tokens [batch, new_tokens] after the prompt `ids`, and the seconds of the decode loop alone.

    The untimed prefill yields the first token; each of the `new_tokens` steps feeds the previous token with the
    KV cache and picks the next one.
    """
    device = ids.device
    out = model(input_ids=ids, use_cache=True, **_last_logits_only(model))
    keyword = _cache_keyword(model)
    cache, token = out[keyword], out.logits[:, -1].argmax(-1, keepdim=True)
    tokens = []
    _sync(device)
    start = time.perf_counter()
    for _ in range(new_tokens):
        out = model(input_ids=token, use_cache=True, **{keyword: cache})
        cache, token = out[keyword], out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(token)
    _sync(device)
    seconds = time.perf_counter() - start
    return torch.cat(tokens, dim=1).cpu(), seconds


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


class _Bench:
    """One loaded model and its prompt: what a child process measures, run after run."""

    def __init__(self, job: dict[str, Any]) -> None:
        torch.manual_seed(job["seed"])
        if job["threads"] is not None:
            torch.set_num_threads(job["threads"])
        self.baseline_rss = peak_rss_bytes()
        self.device = torch.device(job["device"])
        self.model = AutoModelForCausalLM.from_pretrained(
            job["where"], dtype=DTYPES[job["dtype"]], trust_remote_code=job["trust_remote_code"],
            use_safetensors=True,
        ).to(self.device).eval()
        self.batch_sizes: list[int] = job["batch_sizes"]
        self.new_tokens: int = job["new_tokens"]
        self.prompt = make_prompt(max(self.batch_sizes), job["prompt_len"], job["vocab"], job["seed"]).to(self.device)

    def describe(self) -> dict[str, Any]:
        return {"parameters": count_parameters(self.model), "device_name": device_name(self.device),
                "threads": torch.get_num_threads()}

    def run(self) -> dict[str, Any]:
        """Raw seconds of one run: prefill and TTFT at batch 1, the decode loop at every batch size."""
        prefill, ttft = time_prefill(self.model, self.prompt[:1])
        loops = {str(b): decode(self.model, self.prompt[:b], self.new_tokens)[1] for b in self.batch_sizes}
        return {"prefill_s": prefill, "ttft_s": ttft, "decode_s": loops}

    def memory(self) -> dict[str, int | None]:
        gpu = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        return {"peak_rss_bytes": peak_rss_bytes(), "baseline_rss_bytes": self.baseline_rss, "peak_gpu_bytes": gpu}


def _reply(stream: IO[str], message: dict[str, Any]) -> None:
    stream.write(json.dumps(message) + "\n")
    stream.flush()


def worker(job: dict[str, Any]) -> None:
    """The child's loop: load, reply, then answer `run` and `quit` read from stdin with one JSON line each."""
    replies = sys.stdout
    sys.stdout = sys.stderr  # a library's print must not land among the replies
    try:
        bench = _Bench(job)
        _reply(replies, {"ready": True, **bench.describe()})
        for line in sys.stdin:
            if line.strip() == "run":
                _reply(replies, bench.run())
            elif line.strip() == "quit":
                _reply(replies, bench.memory())
                return
    except Exception as e:  # noqa: BLE001 - any failure goes back to the parent as one line
        traceback.print_exc()
        _reply(replies, {"error": first_line(e)})


# ---- scheduling, in the parent process ----


class _Worker:
    """The parent's handle on one child process."""

    def __init__(self, target: _Target, job: dict[str, Any]) -> None:
        self.spec = target.spec
        self.stderr = tempfile.TemporaryFile("w+")
        paths = [_package_root(), os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "prunekit.eval.speed", "--worker", json.dumps(job)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env,
        )

    def ask(self, command: str | None = None) -> dict[str, Any]:
        """Send a command (none: wait for the load) and return the child's JSON reply."""
        try:
            if command is not None:
                assert self.process.stdin is not None
                self.process.stdin.write(command + "\n")
                self.process.stdin.flush()
            assert self.process.stdout is not None
            for line in self.process.stdout:
                if line.startswith("{"):
                    return self._checked(json.loads(line))
        except BrokenPipeError:
            pass
        raise PrunekitError(f"benchmarking {self.spec!r}: its process exited with code {self.process.wait()}"
                            f"{self._last_error_line()}")

    def _checked(self, reply: dict[str, Any]) -> dict[str, Any]:
        if "error" in reply:
            raise PrunekitError(f"could not benchmark {self.spec!r}: {reply['error']}")
        return reply

    def _last_error_line(self) -> str:
        self.stderr.seek(0)
        lines = [line.strip() for line in self.stderr.read().splitlines() if line.strip()]
        return f": {lines[-1]}" if lines else ""

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.stderr.close()


def _package_root() -> str:
    """The directory holding this `prunekit`, so the child imports the same code as the parent."""
    return str(Path(__file__).resolve().parents[2])


def _job(target: _Target, config: SpeedConfig, device: torch.device, vocab: int) -> dict[str, Any]:
    return {"where": target.where, "device": str(device), "dtype": target.dtype, "seed": config.seed,
            "trust_remote_code": config.trust_remote_code, "prompt_len": config.prompt_len,
            "new_tokens": config.new_tokens, "batch_sizes": list(config.batch_sizes), "vocab": vocab,
            "threads": config.threads}


def _run_rounds(workers: list[_Worker], config: SpeedConfig, say: Callable[[str], None]) -> list[list[dict]]:
    """Warmup and measured rounds, each round one run per worker in order; the measured runs of each worker."""
    rounds = config.warmup + config.repeats
    runs: list[list[dict]] = [[] for _ in workers]
    for r in range(rounds):
        measured = r - config.warmup
        label = f"warmup {r + 1}/{config.warmup}" if measured < 0 else f"run {measured + 1}/{config.repeats}"
        for i, w in enumerate(workers):
            say(f"{label}: {w.spec}")
            reply = w.ask("run")
            if measured >= 0:
                runs[i].append(reply)
    return runs


def _measure(workers: list[_Worker], config: SpeedConfig, say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Wait for every worker's load, run the rounds, collect memory: one raw record per worker."""
    described = []
    for i, w in enumerate(workers):
        say(f"model {i + 1}/{len(workers)}: {w.spec}: loading")
        described.append(w.ask())
    runs = _run_rounds(workers, config, say)
    return [{**d, "runs": r, "memory": w.ask("quit")} for w, d, r in zip(workers, described, runs, strict=True)]


def _measure_all(targets: list[_Target], config: SpeedConfig, device: torch.device, vocab: int,
                 say: Callable[[str], None]) -> list[dict[str, Any]]:
    groups = [targets] if config.interleave else [[t] for t in targets]
    records = []
    for group in groups:
        workers: list[_Worker] = []
        try:
            workers.extend(_Worker(t, _job(t, config, device, vocab)) for t in group)
            records.extend(_measure(workers, config, say))
        finally:
            for w in workers:
                w.close()
    return records


# ---- what the parent knows without loading weights ----


def _read_target(spec: str, config: SpeedConfig, device: torch.device) -> _Target:
    where, local = resolve_source(spec)
    directory = Path(where)
    if directory.is_dir() and not any(directory.glob("*.safetensors")):
        raise PrunekitError(f"{directory} has no .safetensors weights: the benchmark loads safetensors only")
    try:
        model_config = AutoConfig.from_pretrained(where, trust_remote_code=config.trust_remote_code)
    except Exception as e:  # noqa: BLE001 - transformers raises many types for unreadable configs
        raise PrunekitError(f"could not read the config of {spec!r}: {first_line(e)}") from None
    dtype = compute_dtype(config.dtype, device, _saved_dtype(model_config))
    return _Target(spec, where, model_config, str(dtype).removeprefix("torch."))


def _saved_dtype(config: PretrainedConfig) -> torch.dtype:
    saved = getattr(config, "dtype", None) or torch.float32
    return DTYPES.get(saved, torch.float32) if isinstance(saved, str) else saved


def structure(config: PretrainedConfig) -> dict[str, int | None]:
    """The shape of the network as its config states it (OPT names the MLP width ffn_dim)."""
    text = config.get_text_config()
    heads = getattr(text, "num_attention_heads", None)
    return {
        "layers": getattr(text, "num_hidden_layers", None),
        "hidden_size": getattr(text, "hidden_size", None),
        "intermediate_size": getattr(text, "intermediate_size", None) or getattr(text, "ffn_dim", None),
        "attention_heads": heads,
        "kv_heads": getattr(text, "num_key_value_heads", None) or heads,
        "vocab_size": getattr(text, "vocab_size", None),
    }


def weight_bytes(where: str) -> int | None:
    """Bytes of the safetensors files of a local model directory; None for a hub id."""
    directory = Path(where)
    return sum(f.stat().st_size for f in directory.glob("*.safetensors")) if directory.is_dir() else None


def _check(models: list[str], config: SpeedConfig) -> None:
    if not models:
        raise PrunekitError("no model to benchmark: pass at least one")
    for name in ("prompt_len", "new_tokens", "repeats"):
        if getattr(config, name) < 1:
            raise PrunekitError(f"{name} must be at least 1, not {getattr(config, name)}")
    if config.threads is not None and config.threads < 1:
        raise PrunekitError(f"threads must be at least 1, not {config.threads}")
    if config.warmup < 0:
        raise PrunekitError(f"warmup must be 0 or more, not {config.warmup}")
    if not config.batch_sizes or min(config.batch_sizes) < 1:
        raise PrunekitError(f"batch sizes must be 1 or more, not {list(config.batch_sizes)}")


def _check_context(target: _Target, config: SpeedConfig) -> None:
    limit = getattr(target.config.get_text_config(), "max_position_embeddings", None)
    needed = config.prompt_len + config.new_tokens
    if limit is not None and needed > limit:
        raise PrunekitError(f"{target.spec!r}: prompt_len + new_tokens = {needed} exceeds its context of {limit}")


# ---- the result ----


def _stats(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def _model_result(target: _Target, record: dict[str, Any], config: SpeedConfig) -> dict[str, Any]:
    runs = record["runs"]
    return {
        "model": target.spec,
        "path": target.where,
        "structure": structure(target.config),
        "parameters": record["parameters"],
        "weight_bytes": weight_bytes(target.where),
        "dtype": target.dtype,
        "memory": record["memory"],
        "prefill_tokens_per_s": _stats([config.prompt_len / r["prefill_s"] for r in runs]),
        "ttft_ms": _stats([r["ttft_s"] * 1000 for r in runs]),
        "decode_tokens_per_s": {
            str(b): _stats([b * config.new_tokens / r["decode_s"][str(b)] for r in runs]) for b in config.batch_sizes
        },
    }


def _ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def _peak_memory(model: dict[str, Any]) -> int | None:
    memory = model["memory"]
    return memory["peak_gpu_bytes"] if memory["peak_gpu_bytes"] is not None else memory["peak_rss_bytes"]


def ratios(model: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Against the baseline: sizes as fractions of it, speeds as speedups (above 1: faster than the baseline)."""
    return {
        "parameters": _ratio(model["parameters"], base["parameters"]),
        "weight_bytes": _ratio(model["weight_bytes"], base["weight_bytes"]),
        "peak_memory": _ratio(_peak_memory(model), _peak_memory(base)),
        "prefill_speedup": _ratio(model["prefill_tokens_per_s"]["median"], base["prefill_tokens_per_s"]["median"]),
        "ttft_speedup": _ratio(base["ttft_ms"]["median"], model["ttft_ms"]["median"]),
        "decode_speedup": {b: _ratio(s["median"], base["decode_tokens_per_s"][b]["median"])
                           for b, s in model["decode_tokens_per_s"].items()},
    }


def _environment(device: torch.device, records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"device": str(device), "device_name": records[0]["device_name"], "threads": records[0]["threads"],
            "cpu_count": os.cpu_count(), "platform": platform.platform(), "versions": versions()}


def benchmark_models(
    models: list[str], config: SpeedConfig, on_progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Measure every model (see the module docstring) and return a JSON-serialisable result; the first is the
    baseline of the ratios. `on_progress` receives one line per step (default: printed to stderr)."""
    _check(models, config)
    config = SpeedConfig(**{**asdict(config), "batch_sizes": tuple(sorted(set(config.batch_sizes)))})
    device = resolve_device(config.device)
    targets = [_read_target(spec, config, device) for spec in models]
    for target in targets:
        _check_context(target, config)
    vocab = min(structure(t.config)["vocab_size"] or sys.maxsize for t in targets)
    records = _measure_all(targets, config, device, vocab, on_progress or _print_progress)
    results = [_model_result(t, r, config) for t, r in zip(targets, records, strict=True)]
    for result in results:
        result["ratios"] = ratios(result, results[0])
    return {
        "prunekit_speed_version": RESULT_VERSION,
        "config": {**asdict(config), "batch_sizes": list(config.batch_sizes)},
        "environment": _environment(device, records),
        "prompt_vocab": vocab,
        "baseline": models[0],
        "models": results,
        "notes": ["medians of the measured runs; ratios against the baseline; comparable within this run only"],
    }


def _print_progress(message: str) -> None:
    from prunekit.progress import console

    console.print(f"[dim]{message}[/]", highlight=False)


def write_json(result: dict[str, Any], path: Path, overwrite: bool = False, inputs: tuple = ()) -> None:
    """The result as JSON, written aside and renamed into place (see prunekit.outputs)."""
    with atomic_file(path, overwrite, inputs) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")


# ---- the table ----


def _with_ratio(value: str, ratio: float | None, show: bool) -> str:
    return f"{value} ({ratio:.2f}x)" if show and ratio is not None else value


def _megabytes(count: int | None) -> str:
    return "-" if count is None else f"{count / 2**20:,.0f} MiB"


def _row(model: dict[str, Any], batch_sizes: list[str], is_baseline: bool) -> list[str]:
    s, r = model["structure"], model["ratios"]
    show = not is_baseline
    heads = f"{s['attention_heads']}/{s['kv_heads']}"
    return [
        model["model"], str(s["layers"]), str(s["intermediate_size"]), heads,
        _with_ratio(f"{model['parameters'] / 1e6:,.1f}M", r["parameters"], show),
        _with_ratio(_megabytes(model["weight_bytes"]), r["weight_bytes"], show),
        _with_ratio(_megabytes(_peak_memory(model)), r["peak_memory"], show),
        _with_ratio(f"{model['prefill_tokens_per_s']['median']:,.0f}", r["prefill_speedup"], show),
        _with_ratio(f"{model['ttft_ms']['median']:,.1f}", r["ttft_speedup"], show),
        *(_with_ratio(f"{model['decode_tokens_per_s'][b]['median']:,.1f}", r["decode_speedup"][b], show)
          for b in batch_sizes),
    ]


def render_table(result: dict[str, Any]) -> Table:
    """Medians, with ratios to the baseline (first row) in parentheses: sizes as fractions, speeds as speedups."""
    config, env = result["config"], result["environment"]
    batch_sizes = [str(b) for b in config["batch_sizes"]]
    memory = "peak GPU" if env["device"].startswith("cuda") else "peak RSS"
    table = Table(
        title=f"speed and size, baseline {result['baseline']}",
        caption=f"{env['device_name']}, {env['threads']} threads; prompt {config['prompt_len']} tokens, "
        f"{config['new_tokens']} decoded; medians of {config['repeats']} runs; comparable within this run only",
    )
    for column in ("model", "layers", "ffn", "heads q/kv", "params", "weights", memory, "prefill tok/s", "TTFT ms"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for b in batch_sizes:
        table.add_column(f"decode tok/s b={b}", justify="right")
    for i, model in enumerate(result["models"]):
        table.add_row(*_row(model, batch_sizes, i == 0))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description="The child process of prunekit's speed benchmark.")
    parser.add_argument("--worker", required=True, help="the job, as JSON")
    worker(json.loads(parser.parse_args().worker))


if __name__ == "__main__":
    main()
