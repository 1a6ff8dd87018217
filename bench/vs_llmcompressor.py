"""prunekit next to llm-compressor: same model, same calibration tokens, same held-out windows.

    .venv/bin/python bench/vs_llmcompressor.py [--samples 128] [--seq-len 512] [--repeats 3]
        [--jobs wanda:unstructured,wanda:2:4,sparsegpt:unstructured,sparsegpt:2:4]
        [--ppl-samples 16] [--ppl-seq-len 1024] [--model DIR]

    # REAP expert pruning (25% of each layer's experts) on a mixture of experts, e.g. SmolLM2 converted by moefy:
    .venv/bin/prunekit prune smollm2-135m --method moefy --experts 8 --top-k 2 --out out/smollm2-moe
    .venv/bin/python bench/vs_llmcompressor.py --model out/smollm2-moe --jobs reap:0.25,reap:0.5 --repeats 1

llm-compressor lives in its own venv, bench/.venv-peers (it pins an older transformers); make it once with
    python3 -m venv bench/.venv-peers && bench/.venv-peers/bin/pip install torch==2.13.0 \
        && bench/.venv-peers/bin/pip install -r bench/peers-requirements.txt
This script installs nothing. It draws the calibration windows and the evaluation windows once with prunekit (main
venv), saves them, and hands the same files to every worker. Each job (method x pattern) runs `prunekit.prune` in a
fresh process of the main venv, prunekit's streamed path (`--stream`: read, prune and write one layer at a time) in
another, and llm-compressor's `oneshot` in a fresh process of the peer venv, in turn, `--repeats` times. A worker
loads the float32 model (SmolLM2-135M's copy by default, or --model; the streamed one reads it layer by layer), times
the pruning call alone, reads its peak RSS right after it (loading + pruning), checks the achieved sparsity (or, for
REAP, the experts and parameters left), and scores perplexity on the shared windows with one formula: exp(total NLL
of tokens 2..L over all windows / their count). A dense run in each venv checks that the two stacks score the
unpruned model alike. REAP jobs (reap:F, F the fraction of each layer's experts removed) run prunekit's `reap`
method and llm-compressor's REAPPruningModifier (from 0.14). Prints medians, writes
bench/results/vs_llmcompressor.json.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the driver and both workers import torch lazily
    import torch
    from torch import nn

BENCH = Path(__file__).resolve().parent
PEER_PYTHON = BENCH / ".venv-peers" / "bin" / "python"
TOOLS = ("prunekit", "prunekit-stream", "llmcompressor")
OURS = ("prunekit", "prunekit-stream")
DEFAULT_JOBS = "wanda:unstructured,wanda:2:4,sparsegpt:unstructured,sparsegpt:2:4"
LLMC_TARGETS = ["re:.*layers.*proj$"]  # every linear of every decoder layer; never the embeddings or lm_head
METRICS = ("prune_seconds", "peak_rss_bytes", "perplexity")


# ---------------------------------------------------------------- worker side (runs in either venv)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Meter:
    """Brackets the pruning call: its wall time, the process peak RSS before it (loading) and during it.

    The process peak (ru_maxrss) is read just before the call, then reset through /proc/self/clear_refs (Linux), so
    the peak read after it is the call's own; the whole-process peak is the larger of the two.
    """

    def __init__(self) -> None:
        self.seconds: float | None = None
        self.load_peak: int | None = None
        self.prune_peak: int | None = None
        self._reset = False
        self._started = 0.0
        self.stop_peak: int | None = None  # whole-process peak when the pruning call returned

    def start(self) -> None:
        self.load_peak = peak_rss_bytes()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._reset = True
        except OSError:
            self._reset = False
        self._started = time.perf_counter()

    def stop(self) -> None:
        self.seconds = time.perf_counter() - self._started
        self.prune_peak = peak_rss_bytes() if self._reset else None
        self.stop_peak = self.peak()

    def peak(self) -> int:
        """Whole-process peak so far (the reset only forgot what `load_peak` keeps)."""
        return max(peak_rss_bytes(), self.load_peak or 0, self.prune_peak or 0)


def perplexity(model: nn.Module, windows: torch.Tensor) -> float:
    """exp(total NLL of tokens 2..L / their count), one window at a time, no carried context."""
    import torch
    import torch.nn.functional as F

    nll, count = 0.0, 0
    with torch.inference_mode():
        for ids in windows.split(1):
            logits = model(input_ids=ids, use_cache=False).logits.float()
            nll += F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="sum").item()
            count += ids[:, 1:].numel()
    return math.exp(nll / count)


def sparsity_report(model: nn.Module, pattern: str) -> dict:
    """Zeros in the linears of the decoder layers, N:M validity, and zeros anywhere else (should stay as loaded)."""
    import torch

    linears = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in name}
    per_matrix = [float((m.weight == 0).float().mean()) for m in linears.values()]
    zeros = sum(int((m.weight == 0).sum()) for m in linears.values())
    numel = sum(m.weight.numel() for m in linears.values())
    inside = {id(m.weight) for m in linears.values()}
    other = sum(int((p == 0).sum()) for p in model.parameters() if id(p) not in inside)
    report = {
        "decoder_linears": len(linears),
        "decoder_linear_sparsity": zeros / max(1, numel),
        "min_matrix_sparsity": min(per_matrix, default=0.0),
        "max_matrix_sparsity": max(per_matrix, default=0.0),
        "zeros_outside_decoder_linears": other,
    }
    if ":" in pattern:
        n, m = (int(x) for x in pattern.split(":"))
        groups = [(lin.weight.reshape(-1, m) != 0).sum(dim=1) <= n for lin in linears.values()]
        report["nm_groups_valid"] = float(torch.cat(groups).float().mean()) if groups else 0.0
    return report


def expert_report(model: nn.Module) -> dict:
    """Experts per layer and parameters left after expert pruning."""
    config = model.config
    experts = next((getattr(config, k) for k in ("num_experts", "num_local_experts", "n_routed_experts")
                    if getattr(config, k, None)), None)
    return {"experts_per_layer": experts, "parameters": sum(p.numel() for p in model.parameters())}


def stage_for(method: str, pattern: str) -> dict:
    """prunekit's stage for a job: REAP removes the fraction `pattern` of the experts; weight methods prune 50%
    (or the N:M pattern)."""
    if method == "reap":
        return {"method": "reap", "sparsity": float(pattern)}
    return {"method": method, "sparsity": None if ":" in pattern else 0.5, "pattern": pattern}


def prune_with_prunekit(method: str, pattern: str, calibration: torch.Tensor, meter: Meter, model_dir: str
                        ) -> nn.Module:
    import prunekit
    from prunekit.methods import names

    known = [*names("weights"), "reap"]
    if method != "dense" and method not in known:
        raise LookupError(f"prunekit has no method {method!r} yet (it has {', '.join(known)})")
    model = prunekit.load_model(model_dir, dtype="float32").model
    if method != "dense":
        meter.start()
        prunekit.prune(model, stages=[stage_for(method, pattern)], calibration=calibration, progress=False)
        meter.stop()
    return model


def prune_streamed(method: str, pattern: str, calibration: torch.Tensor, meter: Meter, model_dir: str,
                   out: Path) -> nn.Module:
    """prunekit's streamed path: read, prune and write one layer at a time; the model is loaded for scoring after."""
    from transformers import AutoModelForCausalLM

    from prunekit.api import run_streaming
    from prunekit.recipe import Recipe

    recipe = Recipe.parse({"model": model_dir, "stream": True, "stages": [stage_for(method, pattern)]})
    meter.start()
    run_streaming(recipe, out, calibration=calibration)
    meter.stop()
    return AutoModelForCausalLM.from_pretrained(out).eval()


def prune_with_llmcompressor(
    method: str, pattern: str, calibration: torch.Tensor, meter: Meter, model_dir: str, batch_size: int
) -> nn.Module:
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers import pruning
    from transformers import AutoModelForCausalLM, AutoTokenizer

    modifiers = {"wanda": "WandaPruningModifier", "sparsegpt": "SparseGPTModifier", "reap": "REAPPruningModifier"}
    if method != "dense" and not hasattr(pruning, modifiers.get(method, "-")):
        raise LookupError(f"no llm-compressor modifier for {method!r} in this version")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if method == "dense":
        return model
    modifier = getattr(pruning, modifiers[method])
    if method == "reap":
        recipe = modifier(sparsity=float(pattern))
    else:
        recipe = modifier(sparsity=0.5, mask_structure="0:0" if pattern == "unstructured" else pattern,
                          targets=LLMC_TARGETS)
    dataset = Dataset.from_dict({"input_ids": calibration.tolist(),
                                 "attention_mask": torch.ones_like(calibration).tolist()})
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    samples, seq_len = calibration.shape
    meter.start()
    # shuffle_calibration_samples=False: the same samples either way, but its default shuffle is unseeded, which
    # reorders the running statistics and makes repeats differ in the last digits of the perplexity.
    model = oneshot(model=model, tokenizer=tokenizer, dataset=dataset, recipe=recipe, batch_size=batch_size,
                    num_calibration_samples=samples, max_seq_length=seq_len, shuffle_calibration_samples=False)
    meter.stop()
    return model


def worker(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    import torch
    import transformers

    calibration = torch.load(args.calib, weights_only=True)
    windows = torch.load(args.eval, weights_only=True)
    meter = Meter()
    try:
        if args.worker == "prunekit":
            model = prune_with_prunekit(args.method, args.pattern, calibration, meter, args.model_dir)
        elif args.worker == "prunekit-stream":
            with tempfile.TemporaryDirectory(prefix="vs-llmc-stream-") as out:
                model = prune_streamed(args.method, args.pattern, calibration, meter, args.model_dir,
                                       Path(out) / "pruned")
        else:
            model = prune_with_llmcompressor(args.method, args.pattern, calibration, meter, args.model_dir,
                                             args.llmc_batch_size)
    except LookupError as e:
        return {"skipped": str(e)}
    rss = meter.stop_peak or meter.peak()
    report = expert_report(model) if args.method == "reap" else sparsity_report(model, args.pattern)
    ppl = perplexity(model, windows)
    package = args.worker.removesuffix("-stream")
    versions = {package: version(package), "torch": torch.__version__, "transformers": transformers.__version__}
    return {"prune_seconds": meter.seconds, "peak_rss_bytes": rss, "perplexity": ppl, "sparsity": report,
            "load_peak_rss_bytes": meter.load_peak, "prune_peak_rss_bytes": meter.prune_peak,
            "peak_rss_final_bytes": meter.peak(), "worker_seconds": time.perf_counter() - started,
            "torch_threads": torch.get_num_threads(), "versions": versions}


# ---------------------------------------------------------------- driver (main venv)


def prepare(args: argparse.Namespace) -> dict:
    """Save calibration ids [samples, seq_len] and evaluation windows once (main venv); name the model directory."""
    import torch

    import prunekit
    from prunekit.assets.registry import MODELS
    from prunekit.models.gguf import cached_asset
    from prunekit.text.sources import load_texts
    from prunekit.text.tokens import evaluation_windows, token_stream

    model_dir = Path(args.model).resolve() if args.model else cached_asset(MODELS["smollm2-135m"])
    loaded = prunekit.load_model(str(model_dir))
    config = prunekit.CalibrationConfig(samples=args.samples, seq_len=args.seq_len)
    calibration = prunekit.calibration_data(loaded.model, loaded.tokenizer, config)
    stream = token_stream(loaded.tokenizer, load_texts("wikipedia", "evaluation"))
    windows = evaluation_windows(stream, args.ppl_samples, args.ppl_seq_len)
    torch.save(calibration, args.calib)
    torch.save(windows, args.eval)
    return {"model_dir": str(model_dir)}


def run_worker(tool: str, job: str, args: argparse.Namespace, workdir: Path, model_dir: str = "") -> dict:
    """One fresh process: `prepare` and `prunekit` in this (main) venv, `llmcompressor` in the peer venv."""
    method, _, pattern = job.partition(":")
    python = str(args.peer_python) if tool == "llmcompressor" else sys.executable  # both prunekit paths: main venv
    command = [python, str(Path(__file__).resolve()), "--worker", tool, "--method", method,
               "--pattern", pattern or "unstructured", "--model-dir", model_dir,
               "--calib", str(workdir / "calibration.pt"), "--eval", str(workdir / "evaluation.pt"),
               "--samples", str(args.samples), "--seq-len", str(args.seq_len),
               "--ppl-samples", str(args.ppl_samples), "--ppl-seq-len", str(args.ppl_seq_len),
               "--llmc-batch-size", str(args.llmc_batch_size), *(["--model", args.model] if args.model else [])]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    total = time.perf_counter() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {done.returncode}: " + " | ".join(tail)}
    result = json.loads(lines[-1])
    result["process_seconds"] = total
    return result


def parse_jobs(text: str) -> list[str]:
    jobs = [j.strip() for j in text.split(",") if j.strip()]
    for job in jobs:
        method, _, pattern = job.partition(":")
        if method == "reap":
            try:
                fraction = float(pattern)
            except ValueError:
                fraction = -1.0
            if not 0 < fraction < 1:
                raise SystemExit(f"bad job {job!r}: use reap:F with F the fraction of experts removed, e.g. reap:0.25")
        elif method not in ("wanda", "sparsegpt") or not (pattern == "unstructured" or pattern.count(":") == 1):
            raise SystemExit(f"bad job {job!r}: use METHOD:unstructured or METHOD:N:M with METHOD wanda or "
                             "sparsegpt, or reap:F")
    return jobs


def describe(result: dict) -> str:
    if "skipped" in result:
        return f"skipped ({result['skipped']})"
    if "error" in result:
        return f"FAILED ({result['error']})"
    text = f"process {result['process_seconds']:.1f} s, peak RSS {result['peak_rss_bytes'] / 1e9:.2f} GB"
    if result["prune_seconds"] is not None:
        during = result["prune_peak_rss_bytes"]
        text = (f"prune {result['prune_seconds']:.1f} s, {text} (loading {result['load_peak_rss_bytes'] / 1e9:.2f}, "
                f"pruning {'-' if during is None else format(during / 1e9, '.2f')})")
    return f"{text}, ppl {result['perplexity']:.2f}"


def describe_sparsity(report: dict) -> str:
    if "experts_per_layer" in report:
        return f"{report['experts_per_layer']} experts per layer, {report['parameters']:,} parameters"
    text = (f"{report['decoder_linear_sparsity']:.2%} zeros over {report['decoder_linears']} decoder linears "
            f"(per matrix {report['min_matrix_sparsity']:.2%}..{report['max_matrix_sparsity']:.2%})")
    if "nm_groups_valid" in report:
        text += f", N:M groups valid {report['nm_groups_valid']:.2%}"
    return text + f", zeros elsewhere {report['zeros_outside_decoder_linears']}"


def medians(results: list[dict]) -> dict | None:
    ok = [r for r in results if "error" not in r and "skipped" not in r]
    if not ok:
        return None
    keys = (*METRICS, "process_seconds", "load_peak_rss_bytes", "prune_peak_rss_bytes", "peak_rss_final_bytes")
    return {k: statistics.median(r[k] for r in ok) for k in keys if ok[0].get(k) is not None} | {"runs": len(ok)}


def print_table(median: dict[str, dict[str, dict | None]]) -> None:
    """One row per prunekit path and job, next to llm-compressor on the same job; ratios = prunekit / llmc."""
    def cell(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    def ratio(a: dict, b: dict, key: str) -> float | None:
        return a[key] / b[key] if a.get(key) and b.get(key) else None

    header = ["job", "prunekit s", "llmc s", "time ratio", "prunekit RSS GB", "llmc RSS GB", "RSS ratio",
              "prunekit ppl", "llmc ppl", "ppl ratio"]
    rows = []
    for job, by_tool in median.items():
        c = by_tool["llmcompressor"] or {}
        for tool in OURS:
            p = by_tool[tool] or {}
            gb = [v.get("peak_rss_bytes") / 1e9 if v.get("peak_rss_bytes") else None for v in (p, c)]
            rows.append([job + (" --stream" if tool.endswith("stream") else ""), cell(p.get("prune_seconds"), ".1f"),
                         cell(c.get("prune_seconds"), ".1f"), cell(ratio(p, c, "prune_seconds"), ".2f"),
                         cell(gb[0], ".2f"), cell(gb[1], ".2f"), cell(ratio(p, c, "peak_rss_bytes"), ".2f"),
                         cell(p.get("perplexity"), ".2f"), cell(c.get("perplexity"), ".2f"),
                         cell(ratio(p, c, "perplexity"), ".3f")])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for i, row in enumerate([header, *rows]):
        cells = (v.rjust(w) if j else v.ljust(w) for j, (v, w) in enumerate(zip(row, widths, strict=True)))
        print(" | ".join(cells))
        if i == 0:
            print("-+-".join("-" * w for w in widths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=128, help="calibration windows")
    parser.add_argument("--seq-len", type=int, default=512, help="calibration window length")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", default=DEFAULT_JOBS, help=f"comma list of METHOD:PATTERN (default {DEFAULT_JOBS})")
    parser.add_argument("--ppl-samples", type=int, default=16, help="evaluation windows")
    parser.add_argument("--ppl-seq-len", type=int, default=1024, help="evaluation window length")
    parser.add_argument("--llmc-batch-size", type=int, default=1, help="oneshot batch_size (its own default: 1)")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense perplexity check in both venvs")
    parser.add_argument("--model", default=None, help="a local model directory (default: SmolLM2-135M's copy)")
    parser.add_argument("--peer-python", type=Path, default=PEER_PYTHON)
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "vs_llmcompressor.json")
    parser.add_argument("--worker", choices=("prepare", *TOOLS), help=argparse.SUPPRESS)
    for hidden in ("--method", "--pattern", "--model-dir", "--calib", "--eval"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(prepare(args) if args.worker == "prepare" else worker(args)), flush=True)
        return

    jobs = parse_jobs(args.jobs)
    if not args.peer_python.exists():
        raise SystemExit(f"{args.peer_python} not found: make the peer venv first (see bench/peers-requirements.txt)")
    with tempfile.TemporaryDirectory(prefix="vs-llmc-") as tmp:
        # This driver imports neither torch nor prunekit: a child process starts with its parent's peak RSS as its
        # own ru_maxrss (Linux carries it over fork + exec), so the driver must stay small for the numbers to hold.
        workdir = Path(tmp)
        prepared = run_worker("prepare", "prepare:", args, workdir)
        if "model_dir" not in prepared:
            raise SystemExit(f"preparing the shared tokens failed: {prepared.get('error')}")
        model_dir = prepared["model_dir"]
        print(f"model {model_dir}; calibration {args.samples} x {args.seq_len}, "
              f"evaluation {args.ppl_samples} x {args.ppl_seq_len} (wikipedia evaluation split)", flush=True)
        dense: dict[str, dict] = {}
        if not args.no_dense:
            for tool in ("prunekit", "llmcompressor"):  # the streamed path loads the same model the same way
                dense[tool] = run_worker(tool, "dense:unstructured", args, workdir, model_dir)
                print(f"dense {tool}: {describe(dense[tool])}", flush=True)
        runs: dict[str, dict[str, list[dict]]] = {job: {tool: [] for tool in TOOLS} for job in jobs}
        for repeat in range(args.repeats):
            for job in jobs:
                for tool in TOOLS:
                    if runs[job][tool] and "skipped" in runs[job][tool][0]:
                        continue
                    result = run_worker(tool, job, args, workdir, model_dir)
                    runs[job][tool].append(result)
                    print(f"repeat {repeat + 1}: {job} {tool}: {describe(result)}", flush=True)
                    if "sparsity" in result and repeat == 0:
                        print(f"    sparsity: {describe_sparsity(result['sparsity'])}", flush=True)

    median = {job: {tool: medians(runs[job][tool]) for tool in TOOLS} for job in jobs}
    print(f"\n{args.model or 'SmolLM2-135M'} float32, {args.samples} x {args.seq_len} calibration tokens, "
          f"perplexity on {args.ppl_samples} x {args.ppl_seq_len} held-out tokens, median of {args.repeats}; "
          "s = the pruning call alone (--stream: reading, pruning and writing the checkpoint), "
          "RSS = process peak through loading + pruning, ratios = prunekit / llm-compressor")
    print_table(median)
    if dense:
        scored = (f"{tool} {r['perplexity']:.3f}" for tool, r in dense.items() if "perplexity" in r)
        print("dense perplexity (same windows, no pruning): " + ", ".join(scored))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "model": str(model_dir), "calibration": [args.samples, args.seq_len],
        "evaluation": {"source": "wikipedia", "split": "evaluation", "windows": [args.ppl_samples, args.ppl_seq_len]},
        "repeats": args.repeats, "llmc": {"targets": LLMC_TARGETS, "batch_size": args.llmc_batch_size},
        "dense": dense, "runs": runs, "median": median,
    }, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
