"""Examples/s of the papers' multiple-choice tasks, before and after the speed work, on the same examples.

    .venv/bin/python bench/eval_speed.py [--model smollm2-135m] [--tasks paper] [--limit 100] [--threads 2]
        [--dtype float32] [--out bench/results/eval_speed.json]

before: one forward pass per choice (an example's choices in one padded batch, examples longest first), every
example tokenized afresh: prunekit's scorer before this change (`share_prefix=False`, tokenization cache cleared).
after: the tokens an example's choices share go through the model once, the KV cache is repeated for the choices
and only their own tokens run; the tokenization is the one kept from the "before" pass (the same tokenizer scores
the same examples, as every model after the first of a sweep does). Both give the same log-likelihoods up to
float rounding (the largest difference is printed).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import prunekit
from prunekit.eval.loglikelihood import forget_tokenization, score_examples
from prunekit.eval.zeroshot import expand_tasks, load_task, subsample

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", default="paper")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", type=Path, default=RESULTS / "eval_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = prunekit.load_model(args.model, dtype=args.dtype)
    model, tokenizer = loaded.model, loaded.tokenizer
    rows = []
    for name in expand_tasks(args.tasks.split(",")):
        task = load_task(name)
        if task.generation:
            continue
        examples = subsample(task.examples, args.limit, 0)
        forget_tokenization()  # a cold start, as before the change
        start = time.perf_counter()
        before = score_examples(model, tokenizer, examples, share_prefix=False)
        before_s = time.perf_counter() - start
        start = time.perf_counter()
        after = score_examples(model, tokenizer, examples, share_prefix=True)
        after_s = time.perf_counter() - start
        diff = max(abs(a - b) for xs, ys in zip(before, after, strict=True) for a, b in zip(xs, ys, strict=True))
        rows.append({"task": name, "examples": len(examples), "before_examples_per_s": len(examples) / before_s,
                     "after_examples_per_s": len(examples) / after_s, "speedup": before_s / after_s,
                     "max_abs_ll_diff": diff})
        print(json.dumps(rows[-1]), flush=True)
    total = sum(r["examples"] for r in rows)
    before_total = sum(r["examples"] / r["before_examples_per_s"] for r in rows)
    after_total = sum(r["examples"] / r["after_examples_per_s"] for r in rows)
    summary = {"model": args.model, "threads": args.threads, "dtype": args.dtype, "limit": args.limit, "tasks": rows,
               "suite": {"examples": total, "before_examples_per_s": total / before_total,
                         "after_examples_per_s": total / after_total, "speedup": before_total / after_total}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"\n{args.model}, {args.threads} threads, {args.dtype}, {args.limit} seeded examples per task\n")
    print("| task | examples | before ex/s | after ex/s | after / before | max abs Δ log-lik |")
    print("|---|---:|---:|---:|---:|---:|")
    worst = max(r["max_abs_ll_diff"] for r in rows)
    for r in [*rows, {"task": "**suite**", **summary["suite"], "max_abs_ll_diff": worst}]:
        print(f"| {r['task']} | {r['examples']} | {r['before_examples_per_s']:.2f} | {r['after_examples_per_s']:.2f} | "
              f"{r['speedup']:.2f}x | {r['max_abs_ll_diff']:.1e} |")


if __name__ == "__main__":
    main()
