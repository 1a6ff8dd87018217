"""Perplexity after pruning a real model: dense and each method x pattern x allocation, in one run.

    .venv/bin/python bench/fidelity.py [--model smollm2-135m] [--sparsity 0.5] [--patterns unstructured,2:4]
        [--methods magnitude,wanda,sparsegpt] [--allocations uniform,owl]

The same calibration windows (Wikipedia calibration split) serve every method; perplexity is measured on the
held-out Wikipedia articles with prunekit's protocol. Prints a table and writes bench/results/fidelity.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import prunekit
from prunekit.recipe import CalibrationConfig, EvaluationConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--patterns", default="unstructured,2:4")
    parser.add_argument("--methods", default="magnitude,wanda")
    parser.add_argument("--allocations", default="uniform", help="comma list of uniform, global, owl")
    parser.add_argument("--calib-samples", type=int, default=128)
    parser.add_argument("--calib-seq-len", type=int, default=512)
    parser.add_argument("--ppl-samples", type=int, default=16)
    parser.add_argument("--ppl-seq-len", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fidelity.json")
    args = parser.parse_args()

    loaded = prunekit.load_model(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    evaluation = EvaluationConfig(samples=args.ppl_samples, seq_len=args.ppl_seq_len)
    calibration = prunekit.calibration_data(
        model, tokenizer, CalibrationConfig(samples=args.calib_samples, seq_len=args.calib_seq_len)
    )
    rows = [{"method": "dense", "pattern": "-", "allocation": "-", "sparsity": 0.0, "seconds": 0.0,
             "perplexity": prunekit.evaluate(model, tokenizer, evaluation, "dense").perplexity}]
    jobs = [(p, m, a) for p in args.patterns.split(",") for m in args.methods.split(",")
            for a in args.allocations.split(",")]
    for pattern, method, allocation in jobs:
        model.load_state_dict(dense_state)
        started = time.perf_counter()
        stage = {"method": method, "pattern": pattern, "allocation": allocation,
                 "sparsity": None if ":" in pattern else args.sparsity}
        result = prunekit.prune(model, tokenizer, stages=[stage], calibration=calibration)
        seconds = time.perf_counter() - started
        ppl = prunekit.evaluate(model, tokenizer, evaluation, f"{method} {pattern} {allocation}").perplexity
        rows.append({"method": method, "pattern": pattern, "allocation": allocation, "sparsity": result.sparsity,
                     "seconds": seconds, "perplexity": ppl})
        print(f"{method:10s} {pattern:13s} {allocation:8s} sparsity {result.sparsity:.3f}  ppl {ppl:9.2f}  "
              f"({seconds:.0f}s)", flush=True)

    dense = rows[0]["perplexity"]
    print(f"\n{args.model}: calibration {args.calib_samples} x {args.calib_seq_len} tokens, "
          f"perplexity on {args.ppl_samples} x {args.ppl_seq_len} held-out Wikipedia tokens")
    print(f"{'method':10s} {'pattern':13s} {'alloc':8s} {'sparsity':>9s} {'perplexity':>11s} {'x dense':>8s}")
    for r in rows:
        print(f"{r['method']:10s} {r['pattern']:13s} {r['allocation']:8s} {r['sparsity']:9.3f} "
              f"{r['perplexity']:11.2f} {r['perplexity'] / dense:8.2f}")
    checks = {}
    for pattern in args.patterns.split(","):
        by = {r["method"]: r["perplexity"] for r in rows if r["pattern"] == pattern and r["allocation"] == "uniform"}
        if {"wanda", "magnitude"} <= set(by):
            checks[pattern] = {"wanda_over_dense": by["wanda"] / dense,
                               "magnitude_over_wanda": by["magnitude"] / by["wanda"]}
            print(f"{pattern}: wanda/dense = {by['wanda'] / dense:.2f}, magnitude/wanda = "
                  f"{by['magnitude'] / by['wanda']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "model": args.model, "calibration": [args.calib_samples, args.calib_seq_len],
        "evaluation": [args.ppl_samples, args.ppl_seq_len], "rows": rows, "checks": checks,
        "versions": {"torch": torch.__version__, "prunekit": prunekit.__version__},
    }, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
