"""Expert pruning and merging on real weights: a dense model converted into a mixture of experts (moefy), then 25%
and 50% of its experts removed by routing frequency, REAP, NAEE-style search, HC-SMoE merging and at random.

    .venv/bin/python bench/experts.py [--model smollm2-135m] [--experts 8] [--top-k 2]
        [--methods expert-frequency,reap,expert-search,expert-merge,expert-random] [--remove 0.25,0.5]
        [--calib-samples 128] [--calib-seq-len 512] [--ppl-samples 16] [--ppl-seq-len 1024] [--threads 1]
        [--work DIR] [--out bench/measured/experts_MODEL.json]

No MoE checkpoint exists offline, so the MoE model is made from the dense one: `prunekit prune MODEL --method moefy
--experts E --top-k K` (co-activation clustering of each MLP's channels into E experts, a router fitted to predict
each expert's contribution), written once to --work (default: prunekit's cache) and reused. Every expert method
then prunes a fresh load of that checkpoint with the same calibration windows (--calib-samples x --calib-seq-len
tokens of the Wikipedia calibration split, seed 0). Perplexity: prunekit's default protocol on held-out Wikipedia
(--ppl-samples windows of --ppl-seq-len tokens). Rows: dense, the converted MoE, then method x fraction removed,
with parameters, active parameters per token, prune seconds and peak RSS.

The JSON is rewritten after every row; a rerun with the same protocol skips the rows it holds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch

import prunekit
from prunekit.api import evaluation_data
from prunekit.assets.cache import cache_dir
from prunekit.models.adapters import adapter_for
from prunekit.recipe import CalibrationConfig, EvaluationConfig
from prunekit.runinfo import peak_rss_bytes

RESULTS = Path(__file__).resolve().parent / "measured"  # tracked: a rerun resumes what earlier runs measured
METHODS = "expert-frequency,reap,expert-search,expert-merge,expert-random"


def expert_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, parameters a token uses: everything but the experts it does not route to)."""
    adapter = adapter_for(model)
    total = sum(p.numel() for p in model.parameters())
    routed = sum(p.numel() for layer in adapter.layers for p in adapter.moe(layer)[0].parameters())
    return total, total - routed + routed * adapter.top_k // adapter.num_experts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--remove", default="0.25,0.5", help="fractions of each layer's experts removed")
    parser.add_argument("--calib-samples", type=int, default=128)
    parser.add_argument("--calib-seq-len", type=int, default=512)
    parser.add_argument("--ppl-samples", type=int, default=16)
    parser.add_argument("--ppl-seq-len", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=None, help="where the converted checkpoint is kept")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    name = Path(args.model).name
    out = args.out or RESULTS / f"experts_{name}.json"
    work = args.work or cache_dir() / "bench" / f"moefy-{name}-{args.experts}x{args.top_k}"
    calib = CalibrationConfig(samples=args.calib_samples, seq_len=args.calib_seq_len)
    evaluation = EvaluationConfig(samples=args.ppl_samples, seq_len=args.ppl_seq_len)
    protocol = {"model": args.model, "experts": args.experts, "top_k": args.top_k,
                "calibration": {"source": "wikipedia", "samples": args.calib_samples, "seq_len": args.calib_seq_len,
                                "seed": 0}, "evaluation": {"source": "wikipedia (held-out articles)",
                                                           "samples": args.ppl_samples, "seq_len": args.ppl_seq_len},
                "threads": args.threads, "device": "cpu"}
    document = json.loads(out.read_text()) if out.exists() else {"protocol": protocol, "rows": []}
    if document.get("protocol") != protocol:
        raise SystemExit(f"{out} holds results of another protocol ({document.get('protocol')}): use another --out")
    done = {(r["method"], r["remove"]) for r in document["rows"]}

    def record(row: dict) -> None:
        document["rows"].append(row)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.partial")
        tmp.write_text(json.dumps(document, indent=2) + "\n")
        tmp.replace(out)
        print(f"  {row['method']} remove {row['remove']}: perplexity {row['perplexity']:.2f}", flush=True)

    dense = prunekit.load_model(args.model, device="cpu")
    tokenizer = dense.tokenizer
    windows = prunekit.calibration_data(dense.model, tokenizer, calib)
    eval_windows = evaluation_data(dense.model, dense.tokenizer, evaluation)

    def perplexity(model: torch.nn.Module) -> float:
        return prunekit.evaluate(model, tokenizer, evaluation, "ppl", windows=eval_windows,
                                 progress=False).perplexity

    if ("dense", 0) not in done:
        record({"method": "dense", "remove": 0, "perplexity": perplexity(dense.model),
                "parameters": sum(p.numel() for p in dense.model.parameters())})
    if not (work / "config.json").exists() or ("moefy", 0) not in done:
        started = time.perf_counter()
        result = prunekit.prune(dense.model, dense.tokenizer, calibration=windows, progress=False, device="cpu",
                                stages=[{"method": "moefy", "size": args.experts, "top_k": args.top_k}])
        seconds = round(time.perf_counter() - started, 1)
        partial = work.with_name(f".{work.name}.partial-{os.getpid()}")  # renamed into place: never half written
        result.model.save_pretrained(partial)
        dense.tokenizer.save_pretrained(partial)
        try:
            partial.rename(work)
        except OSError:  # another run wrote it meanwhile: the conversion is deterministic, keep that one
            shutil.rmtree(partial)
        if ("moefy", 0) not in done:
            total, active = expert_parameters(result.model)
            record({"method": "moefy", "remove": 0, "perplexity": perplexity(result.model), "parameters": total,
                    "active_parameters": active, "prune_seconds": seconds, "peak_rss_bytes": peak_rss_bytes()})
        del result
    del dense
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        for remove in [float(f) for f in args.remove.split(",")]:
            if (method, remove) in done:
                continue
            print(f"{method} remove {remove} ...", flush=True)
            loaded = prunekit.load_model(str(work), device="cpu")
            started = time.perf_counter()
            prunekit.prune(loaded.model, loaded.tokenizer, calibration=windows, progress=False, device="cpu",
                           cache_scores=False, stages=[{"method": method, "sparsity": remove}])
            seconds = round(time.perf_counter() - started, 1)
            total, active = expert_parameters(loaded.model)
            record({"method": method, "remove": remove, "perplexity": perplexity(loaded.model),
                    "experts_kept": adapter_for(loaded.model).num_experts, "parameters": total,
                    "active_parameters": active, "prune_seconds": seconds, "peak_rss_bytes": peak_rss_bytes()})
    print(f"\n{args.model} as MoE ({args.experts} experts, top {args.top_k}); calibration {args.calib_samples} x "
          f"{args.calib_seq_len}; perplexity on {args.ppl_samples} x {args.ppl_seq_len} held-out tokens\n")
    print("| model | experts removed | perplexity | parameters (M) | active (M) | prune s |")
    print("|---|---|---|---|---|---|")
    for r in document["rows"]:
        print(f"| {r['method']} | {r['remove']:.0%} | {r['perplexity']:.2f} | {r['parameters'] / 1e6:.1f} | "
              f"{r.get('active_parameters', r['parameters']) / 1e6:.1f} | {r.get('prune_seconds', '-')} |")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
