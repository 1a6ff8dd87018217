"""The pruning papers' zero-shot table (Wanda, SparseGPT, ShortGPT; LLM-KICK's knowledge check) for one model.

    .venv/bin/python bench/paper_table.py [--model smollm2-135m] [--variants dense,wanda-50,...]
        [--tasks paper,knowledge] [--limit 500] [--seed 0] [--calib-samples 128] [--calib-seq-len 512]
        [--batch-size 16] [--threads 1] [--device auto] [--out bench/measured/paper_table_MODEL.json] [--print-only]

Variants: dense; magnitude, Wanda and SparseGPT at 50% unstructured; SparseGPT 2:4; depth-25, 25% of the decoder
blocks removed by block influence (ShortGPT). Every variant prunes a fresh load of the dense model in memory with
prunekit.prune, all with the same calibration windows: --calib-samples windows of --calib-seq-len tokens of prunekit's
default calibration text (the Wikipedia calibration split, seed --seed; the API's default is 128 x 512). The papers
use 128 C4 windows of 2048 tokens: pass --calib-seq-len 2048 to match the length (the text stays Wikipedia).

Tasks: "paper" = boolq, rte, hellaswag, winogrande, arc_easy, arc_challenge, openbookqa, piqa, mmlu (multiple
choice, lm-evaluation-harness style, each scored by the metric the papers report); "knowledge" = triviaqa, nq_open
(greedy generation, exact match). --limit examples per task, the same seeded subset for every variant.

The JSON is rewritten after every (variant, task) result; a rerun with the same model, limit, seed and calibration
skips what it holds, so a run resumes across sessions. Prints tasks x variants (metric in %, 95% normal interval),
the multiple-choice and knowledge means, LLM-KICK's check (relative drop of each mean vs dense; do the knowledge
tasks fall faster?) and the dense model's examples/s per task.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import torch

import prunekit
from prunekit.api import decoder_linear_sparsity
from prunekit.eval.harness import TASK_GROUPS
from prunekit.eval.zeroshot import evaluate_tasks, expand_tasks
from prunekit.models.loading import resolve_device
from prunekit.recipe import CalibrationConfig, needs_calibration, parse_stage, split_list
from prunekit.report.runs import metric_interval, metric_value

# Tracked in git, unlike bench/results/: a variant takes the best part of an hour on a CPU, so a run resumes from
# what earlier sessions and machines measured.
RESULTS = Path(__file__).resolve().parent / "measured"
VARIANTS: dict[str, dict | None] = {
    "dense": None,
    "magnitude-50": {"method": "magnitude", "sparsity": 0.5},
    "wanda-50": {"method": "wanda", "sparsity": 0.5},
    "sparsegpt-50": {"method": "sparsegpt", "sparsity": 0.5},
    "sparsegpt-2:4": {"method": "sparsegpt", "pattern": "2:4"},
    "depth-25": {"method": "block-influence", "sparsity": 0.25},
}
KNOWLEDGE = TASK_GROUPS["knowledge"]
RESUME_KEYS = ("model", "limit", "seed", "calibration", "eval_dtype")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="offline asset name, local path or hub id")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--tasks", default="paper,knowledge", help="tasks or groups (paper, knowledge)")
    parser.add_argument("--limit", type=int, default=500, help="examples per task (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calib-samples", type=int, default=CalibrationConfig().samples)
    parser.add_argument("--calib-seq-len", type=int, default=CalibrationConfig().seq_len)
    parser.add_argument("--batch-size", type=int, default=16, help="sequences (or questions) per forward pass")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's own)")
    parser.add_argument("--device", default="auto", help="where to prune and evaluate: auto | cpu | cuda")
    parser.add_argument("--eval-dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"],
                        help="dtype of the evaluation (pruning runs in float32); bfloat16 is ~3x faster on CPUs "
                             "with AVX512-BF16, and the papers evaluate in half precision")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--print-only", action="store_true", help="print the table of an existing --out")
    args = parser.parse_args()
    out = args.out or RESULTS / f"paper_table_{Path(args.model).name}.json"
    if args.print_only:
        doc = json.loads(out.read_text())
        print_table(doc, doc["tasks"], list(doc["variants"]))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    variants = split_list(args.variants)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {', '.join(unknown)}: choose from {', '.join(VARIANTS)}")
    tasks = expand_tasks(split_list(args.tasks))
    calib = CalibrationConfig(samples=args.calib_samples, seq_len=args.calib_seq_len)
    doc = {"model": args.model, "limit": args.limit or None, "seed": args.seed,
           "calibration": {"source": calib.source, "samples": calib.samples, "seq_len": calib.seq_len},
           "eval_dtype": args.eval_dtype, "tasks": [], "variants": {}}
    if out.exists():
        old = json.loads(out.read_text())
        if any(old.get(k) != doc[k] for k in RESUME_KEYS):
            raise SystemExit(f"{out} holds another run ({', '.join(f'{k}={old.get(k)}' for k in RESUME_KEYS)}): "
                             "pass another --out or remove it")
        doc = old
    doc["tasks"] += [t for t in tasks if t not in doc["tasks"]]
    doc.update(batch_size=args.batch_size, threads=torch.get_num_threads(), device=resolve_device(args.device).type,
               versions={"torch": torch.__version__, "prunekit": prunekit.__version__})

    def write() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.partial")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(out)

    calibration: torch.Tensor | None = None
    for name in variants:
        entry = doc["variants"].setdefault(name, {"stage": VARIANTS[name], "results": []})
        todo = [t for t in tasks if t not in {r["task"] for r in entry["results"]}]
        if not todo:
            print(f"{name}: all {len(tasks)} tasks already in {out}, skipped")
            continue
        loaded = prunekit.load_model(args.model)  # fresh dense weights (depth pruning changes the shape)
        model, tokenizer = loaded.model, loaded.tokenizer
        stage = VARIANTS[name]
        if stage is not None:  # (again, after an interrupted run: pruning is deterministic given the seed)
            if calibration is None and needs_calibration(parse_stage(stage)):
                calibration = prunekit.calibration_data(model, tokenizer, calib, args.seed)
            t0 = time.perf_counter()
            result = prunekit.prune(model, tokenizer, stages=[stage], calibration=calibration, seed=args.seed,
                                    device=args.device, progress=False, cache_scores=False)
            entry["prune"] = {"seconds": round(time.perf_counter() - t0, 1),
                              "decoder_linear_sparsity": decoder_linear_sparsity(model),
                              "layers": model.config.num_hidden_layers,
                              "blocks_removed": result.structured[0].removed.get("blocks") if result.structured
                              else None}
            write()
        model.to(resolve_device(args.device), dtype=getattr(torch, args.eval_dtype))
        print(f"{name}: {_pruned(entry)}", flush=True)
        for task in todo:
            (result_,) = evaluate_tasks(model, tokenizer, [task], args.limit or None, args.seed, args.batch_size)
            entry["results"].append(result_.to_dict())
            write()
            print(f"  {task}: {result_.score:.1%} {result_.metric} ({result_.examples} examples)", flush=True)
        del model, loaded
        gc.collect()
    print_table(doc, tasks, variants)
    print(f"wrote {out}")


def _pruned(entry: dict) -> str:
    prune = entry.get("prune")
    if prune is None:
        return "dense"
    if prune.get("blocks_removed") is not None:
        return f"removed blocks {prune['blocks_removed']} ({prune['layers']} left)"
    return f"decoder linear sparsity {prune['decoder_linear_sparsity']:.1%}"


def _score(result: dict) -> tuple[float, tuple[float, float]]:
    """The paper's metric and its 95% interval, read as the report reads them."""
    return metric_value(result), metric_interval(result)


def _mean(by_task: dict[str, dict], tasks: list[str]) -> float | None:
    """Mean metric over `tasks`, or None unless every one of them has a result."""
    if not tasks or any(t not in by_task for t in tasks):
        return None
    return sum(_score(by_task[t])[0] for t in tasks) / len(tasks)


def print_table(doc: dict, tasks: list[str], variants: list[str]) -> None:
    variants = [v for v in variants if v in doc["variants"]]
    by = {v: {r["task"]: r for r in doc["variants"][v]["results"]} for v in variants}
    calib = doc["calibration"]
    print(f"\n{doc['model']}: zero-shot, {doc['limit'] or 'all'} examples per task at most, seed {doc['seed']}, "
          f"calibration {calib['samples']} x {calib['seq_len']} {calib['source']} tokens, evaluated in "
          f"{doc.get('eval_dtype', 'float32')}; % with 95% interval")
    print(f"| task | metric | n | {' | '.join(variants)} |\n|---|---|---:|{'---:|' * len(variants)}")
    for task in tasks:
        some = next((by[v][task] for v in variants if task in by[v]), None)
        if some is None:
            continue
        cells = []
        for v in variants:
            if task in by[v]:
                value, (lo, hi) = _score(by[v][task])
                cells.append(f"{value:.1%} ({lo:.1%}-{hi:.1%})".replace("%", ""))
            else:
                cells.append("-")
        print(f"| {task} | {some['metric']} | {some['examples']} | {' | '.join(cells)} |")
    groups = {"mean (multiple choice)": [t for t in tasks if t not in KNOWLEDGE],
              "mean (knowledge)": [t for t in tasks if t in KNOWLEDGE]}
    means = {g: {v: _mean(by[v], ts) for v in variants} for g, ts in groups.items() if ts}
    for group, row in means.items():
        cells = ["-" if m is None else f"{m:.1%}".replace("%", "") for m in row.values()]
        print(f"| **{group}** | | | {' | '.join(cells)} |")
    if "dense" in by and len(means) == 2:
        print("\nLLM-KICK check: relative drop vs dense, (dense - pruned) / dense")
        mc, kn = means.values()
        for v in [v for v in variants if v != "dense"]:
            drops = [_drop(m["dense"], m[v]) for m in (mc, kn)]
            verdict = "n/a" if None in drops else ("yes" if drops[1] > drops[0] else "no")
            shown = ["n/a" if d is None else f"{d:+.1%}" for d in drops]
            print(f"  {v:14s} multiple choice {shown[0]:>7s}, knowledge {shown[1]:>7s}; knowledge fell faster: "
                  f"{verdict}")
    if "dense" in by:
        rates = [f"{t} {r['examples'] / max(r['seconds'], 1e-9):.1f}" for t, r in by["dense"].items() if t in tasks]
        print(f"\ndense examples/s ({doc.get('device', '?')}, {doc.get('threads', '?')} threads): {', '.join(rates)}")


def _drop(dense: float | None, pruned: float | None) -> float | None:
    """(dense - pruned) / dense; None when either is missing or dense scored 0."""
    if dense is None or pruned is None or dense == 0:
        return None
    return (dense - pruned) / dense


if __name__ == "__main__":
    main()
