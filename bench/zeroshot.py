"""Zero-shot multiple-choice accuracy of a real model, dense and pruned, on BIG-bench tasks.

    .venv/bin/python bench/zeroshot.py [--model smollm2-135m] [--tasks goal_inference,step_inference] [--limit 300]
        [--methods wanda,magnitude] [--sparsity 0.5 | 2:4] [--seed 0] [--batch-size 16] [--threads N] [--prompt plain]

Each method prunes the dense weights in memory (every decoder linear, at --sparsity or an N:M pattern; a method
name may carry the sweep's +dsnot / +permute suffixes; default calibration: 128 x 512
tokens of the Wikipedia calibration split, drawn once and shared). Every model is scored on the same `limit`
examples per task (a shuffle seeded with `seed`), the way lm-evaluation-harness scores multiple-choice tasks (see
prunekit.eval.zeroshot), with BIG-bench inputs as they are (`--prompt plain`) or in BIG-bench's own Q:/A: format
with the choices listed (`--prompt bigbench`, as lm-evaluation-harness's bigbench tasks see them). Prints a table
with 95% intervals (normal approximation), McNemar's exact paired test between models adjacent in the order dense,
--methods... and writes bench/results/zeroshot.json (zeroshot_bigbench_prompt.json).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import prunekit
from prunekit.eval.zeroshot import PROMPTS, ZeroShotResult, evaluate_tasks, mcnemar
from prunekit.sweep import split_method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", default="goal_inference,step_inference")
    parser.add_argument("--limit", type=int, default=300, help="examples per task (0: all)")
    parser.add_argument("--methods", default="wanda,magnitude",
                        help="weight methods as the sweep names them: +dsnot refines, +permute permutes (N:M)")
    parser.add_argument("--sparsity", default="0.5", help="a fraction, or an N:M pattern such as 2:4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16, help="sequences (example x choice) per forward pass")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--prompt", choices=PROMPTS, default="plain", help="how BIG-bench inputs become contexts")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    suffix = "" if args.prompt == "plain" else f"_{args.prompt}_prompt"
    out = args.out or Path(__file__).parent / "results" / f"zeroshot{suffix}.json"
    if args.threads:
        torch.set_num_threads(args.threads)
    tasks, limit = args.tasks.split(","), args.limit or None

    loaded = prunekit.load_model(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}

    def evaluate() -> list[ZeroShotResult]:
        return evaluate_tasks(model, tokenizer, tasks, limit, args.seed, args.batch_size, prompt=args.prompt)

    results = {"dense": evaluate()}
    groups = [_rows("dense", 0.0, 0.0, results["dense"])]
    methods = [m for m in args.methods.split(",") if m]
    calibration = prunekit.calibration_data(model, tokenizer, seed=args.seed) if methods else None
    target = {"pattern": args.sparsity} if ":" in args.sparsity else {"sparsity": float(args.sparsity)}
    label = args.sparsity if ":" in args.sparsity else f"{float(args.sparsity):.0%}"
    for method in methods:
        model.load_state_dict(dense_state)
        started = time.perf_counter()
        pruned = prunekit.prune(model, tokenizer, stages=[{**split_method(method), **target}], calibration=calibration,
                                seed=args.seed)
        seconds = time.perf_counter() - started
        name = f"{method} {label}"
        results[name] = evaluate()
        groups.append(_rows(name, pruned.sparsity, seconds, results[name]))
    rows = [r for group in groups for r in group]

    _print_table(f"{args.model}, prompt {args.prompt}", rows)
    checks = _ordering(rows, tasks, [f"{m} {label}" for m in methods])
    paired = _paired(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "model": args.model, "tasks": tasks, "prompt": args.prompt, "limit": limit, "seed": args.seed,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(), "sparsity": args.sparsity, "calibration": "128 x 512 Wikipedia tokens",
        "interval": "95% normal approximation: acc +- 1.96 x sample standard error, clipped to [0, 1]",
        "rows": rows, "checks": checks, "paired": paired,
        "versions": {"torch": torch.__version__, "prunekit": prunekit.__version__},
    }, indent=2))
    print(f"wrote {out}")


def _rows(model: str, sparsity: float, prune_seconds: float, results: list[ZeroShotResult]) -> list[dict]:
    return [{"model": model, "sparsity": sparsity, "prune_seconds": prune_seconds, **r.to_dict()} for r in results]


def _print_table(model: str, rows: list[dict]) -> None:
    print(f"\n{model}: zero-shot, 95% intervals (normal approximation)")
    print(f"| {'model':14s} | {'task':14s} | {'n':>4s} | {'acc':>6s} | {'acc 95% CI':>15s} | {'acc_norm':>8s} | "
          f"{'acc_norm 95% CI':>15s} | {'chance':>6s} | {'eval s':>6s} |")
    print("|" + "|".join("-" * w for w in (16, 16, 6, 8, 17, 10, 17, 8, 8)) + "|")
    for r in rows:
        acc_ci, norm_ci = (f"{lo:.1%} - {hi:.1%}" for lo, hi in (r["acc_ci95"], r["acc_norm_ci95"]))
        print(f"| {r['model']:14s} | {r['task']:14s} | {r['examples']:4d} | {r['acc']:6.1%} | {acc_ci:>15s} | "
              f"{r['acc_norm']:8.1%} | {norm_ci:>15s} | {r['chance']:6.1%} | {r['seconds']:6.0f} |")


def _ordering(rows: list[dict], tasks: list[str], pruned: list[str]) -> dict:
    """Per task and metric: the models from best to worst, and whether dense >= wanda >= magnitude holds."""
    checks = {}
    for task in tasks:
        for metric in ("acc", "acc_norm"):
            scores = {r["model"]: r[metric] for r in rows if r["task"] == task}
            order = sorted(scores, key=lambda m: -scores[m])
            expected = ["dense"] + [m for m in pruned if m.startswith("wanda")] + [
                m for m in pruned if m.startswith("magnitude")]
            holds = all(scores[a] >= scores[b] for a, b in zip(expected, expected[1:], strict=False))
            checks[f"{task}/{metric}"] = {"order": order, "dense>=wanda>=magnitude": holds}
            print(f"{task:14s} {metric:8s}: {' >= '.join(f'{m} {scores[m]:.1%}' for m in order)}"
                  f"  (dense >= wanda >= magnitude: {'yes' if holds else 'no'})")
    return checks


def _paired(results: dict[str, list[ZeroShotResult]]) -> list[dict]:
    """McNemar's exact test (acc) for each pair of models adjacent in the listed order, on the shared examples."""
    names = list(results)
    out = []
    print("\npaired (same examples), acc: A-only / B-only right, exact McNemar p")
    for a, b in zip(names, names[1:], strict=False):
        for result_a, result_b in zip(results[a], results[b], strict=True):
            only_a, only_b, p = mcnemar(result_a.hits, result_b.hits)
            out.append({"task": result_a.task, "a": a, "b": b, "a_only": only_a, "b_only": only_b, "p": p})
            print(f"{result_a.task:14s} {a} vs {b}: {only_a} / {only_b}, p = {p:.3g}")
    return out


if __name__ == "__main__":
    main()
