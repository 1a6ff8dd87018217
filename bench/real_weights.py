"""The real-weights table: the main pruning configurations on every offline model with real pretrained weights, in
one run, each scored against its own dense model with the same protocol `prunekit eval` uses.

    .venv/bin/python bench/real_weights.py [--models smollm2-135m,qwen2.5-coder-0.5b] [--threads 1]
        [--calib-samples 32] [--calib-seq-len 512] [--width-method wanda-sp] [--depth-method block-influence]
        [--only wanda,depth] [--out bench/results/real_weights.json]

Per model: dense; Wanda 50% unstructured; SparseGPT 2:4; remove 25% of the decoder blocks (block influence,
ShortGPT, by default); remove 25% of every MLP's channels (Wanda-sp by default: FLAP's bias compensation needs an
MLP bias flag in the config, which Qwen2 lacks, so FLAP would need --no-bias-compensation there). Every
configuration prunes a fresh load of the dense model, with the same calibration windows (--calib-samples x
--calib-seq-len tokens of the Wikipedia calibration split, seed 0, 8 windows per pass, as `prunekit prune` draws
them; scores are not taken from the score cache). Perplexity: prunekit's default protocol (16 non-overlapping
windows of 1024 tokens spread evenly over the held-out Wikipedia articles, each scored on its own; what
`prunekit eval MODEL --ppl` and `prunekit prune` report). The calibration here is smaller than the CLI's default
(128 x 512) to keep the run short: both models took 59 minutes with --threads 1 on 2 CPU cores shared with other
jobs (SmolLM2 22, Qwen 37); the table header says which calibration was used.

Prints a markdown table and rewrites the JSON after every row, so a stopped run keeps what finished. A
configuration that fails is recorded with its error and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
import traceback
from pathlib import Path

import torch

import prunekit
from prunekit.api import decoder_linear_sparsity, evaluation_data
from prunekit.recipe import CalibrationConfig, EvaluationConfig
from prunekit.runinfo import count_parameters, count_zeros, peak_rss_bytes

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGURATIONS = ("dense", "wanda", "sparsegpt", "depth", "width")


def configurations(depth_method: str, width_method: str, blocks: float, mlp: float) -> list[tuple[str, str, dict]]:
    """(key, label, stage) of every pruned configuration."""
    return [
        ("wanda", "Wanda 50% unstructured", {"method": "wanda", "sparsity": 0.5}),
        ("sparsegpt", "SparseGPT 2:4", {"method": "sparsegpt", "pattern": "2:4"}),
        ("depth", f"{depth_method} -{blocks:.0%} blocks", {"method": depth_method, "sparsity": blocks}),
        ("width", f"{width_method} MLP -{mlp:.0%}", {"method": width_method, "part": "mlp", "sparsity": mlp}),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2-135m,qwen2.5-coder-0.5b", help="comma list of models")
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--calib-seq-len", type=int, default=512)
    parser.add_argument("--ppl-samples", type=int, default=EvaluationConfig().samples)
    parser.add_argument("--ppl-seq-len", type=int, default=EvaluationConfig().seq_len)
    parser.add_argument("--blocks", type=float, default=0.25, help="fraction of the decoder blocks removed")
    parser.add_argument("--mlp", type=float, default=0.25, help="fraction of every MLP's channels removed")
    parser.add_argument("--depth-method", default="block-influence")
    parser.add_argument("--width-method", default="wanda-sp", help="wanda-sp | flap | activation | taylor")
    parser.add_argument("--only", default="", help=f"comma list out of {', '.join(CONFIGURATIONS[1:])} "
                        "(dense always runs)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--out", type=Path, default=RESULTS / "real_weights.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    jobs = configurations(args.depth_method, args.width_method, args.blocks, args.mlp)
    if args.only:
        wanted = set(args.only.split(","))
        jobs = [j for j in jobs if j[0] in wanted]
    calib = CalibrationConfig(samples=args.calib_samples, seq_len=args.calib_seq_len)
    evaluation = EvaluationConfig(samples=args.ppl_samples, seq_len=args.ppl_seq_len)
    protocol = {
        "calibration": {"source": calib.source, "split": "calibration (891 articles)", "samples": calib.samples,
                        "seq_len": calib.seq_len, "tokens": calib.samples * calib.seq_len, "seed": 0,
                        "batch_size": calib.batch_size, "score_cache": False,
                        "note": "the same windows for every configuration of a model (each model's own tokenizer)"},
        "evaluation": {"source": evaluation.source, "split": "evaluation (109 held-out articles)",
                       "samples": evaluation.samples, "seq_len": evaluation.seq_len,
                       "tokens": evaluation.samples * evaluation.seq_len,
                       "predicted_tokens": evaluation.samples * (evaluation.seq_len - 1),
                       "perplexity": "exp(mean NLL of tokens 2..L), windows non-overlapping, spread evenly over the "
                                     "held-out stream, each scored on its own (prunekit eval's default)"},
        "configurations": {key: stage for key, _, stage in jobs},
        "dtype": "float32 (the GGUF dequantized)",
        "threads": torch.get_num_threads(),
    }
    document = {"protocol": protocol, "rows": [], "source": _source(),
                "versions": {"torch": torch.__version__, "prunekit": prunekit.__version__}}
    header = (f"calibration {calib.samples} x {calib.seq_len} Wikipedia tokens; perplexity on "
              f"{evaluation.samples} x {evaluation.seq_len} held-out Wikipedia tokens")
    started_all = time.perf_counter()

    def record(row: dict) -> None:
        document["rows"].append(row)
        document["seconds_total"] = round(time.perf_counter() - started_all, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(f".{args.out.name}.partial")
        tmp.write_text(json.dumps(document, indent=2) + "\n")
        tmp.replace(args.out)
        print(_line(row), flush=True)

    print(f"\n{header}\n\n{_HEADER}", flush=True)
    for name in models:
        t0 = time.perf_counter()
        loaded = prunekit.load_model(name)
        model, tokenizer = loaded.model, loaded.tokenizer
        load_seconds = time.perf_counter() - t0
        calibration = prunekit.calibration_data(model, tokenizer, calib)
        eval_windows = evaluation_data(model, tokenizer, evaluation)
        t0 = time.perf_counter()
        dense_ppl = prunekit.evaluate(model, tokenizer, evaluation, f"{name} dense", windows=eval_windows,
                                      progress=False)
        dense_params = count_parameters(model)
        record(_row(name, "dense", "dense", None, model, dense_params, dense_ppl.perplexity, dense_ppl.perplexity,
                    0.0, time.perf_counter() - t0, load_seconds=round(load_seconds, 1),
                    calibration_shape=list(calibration.shape), eval_tokens=dense_ppl.tokens))
        for key, label, stage in jobs:
            del model
            model = prunekit.load_model(name).model  # a fresh dense copy (structured stages change its shape)
            t0 = time.perf_counter()
            try:
                result = prunekit.prune(model, tokenizer, stages=[stage], calibration=calibration, progress=False,
                                        cache_scores=False)
                prune_seconds = time.perf_counter() - t0
                t1 = time.perf_counter()
                ppl = prunekit.evaluate(model, tokenizer, evaluation, f"{name} {label}", windows=eval_windows,
                                        progress=False).perplexity
                extra: dict = {"notes": [f"{m.name}: {n}" for m in result.matrices for n in m.notes]}
                if result.structured:
                    s = result.structured[0]
                    label = f"{label} ({s.stage.split(': ', 1)[-1]})"
                    extra["structure"] = {"stage": s.stage, "notes": s.notes,
                                          **{k: v for k, v in s.removed.items() if k != "kept_per_layer"}}
                record(_row(name, key, label, stage, model, dense_params, ppl, dense_ppl.perplexity, prune_seconds,
                            time.perf_counter() - t1, **extra))
            except Exception as e:  # noqa: BLE001 - a failing configuration is a result of this bench
                traceback.print_exc()
                record({"model": name, "configuration": key, "label": label, "stage": stage,
                        "error": f"{type(e).__name__}: {e}", "seconds": round(time.perf_counter() - t0, 1)})
        del model, loaded

    print(f"\n{header}\n")
    print(_HEADER)
    for row in document["rows"]:
        print(_line(row))
    print(f"\n{document['seconds_total']:.0f} s in all; wrote {args.out}")


def _source() -> dict:
    """The commit the numbers come from, and whether the working tree under src/ differed from it."""
    root = Path(__file__).resolve().parent.parent

    def git(*command: str) -> str:
        try:
            return subprocess.run(["git", *command], cwd=root, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = git("status", "--porcelain", "--", "src").splitlines()
    return {"commit": git("rev-parse", "HEAD").strip() or None, "src_changed_files": len(changed)}


_HEADER = ("| model | configuration | parameters | x dense | zeros (decoder linears) | fp32 size | perplexity "
           "| x dense | prune s |\n|---|---|---:|---:|---:|---:|---:|---:|---:|")


def _row(model_name: str, key: str, label: str, stage: dict | None, model: torch.nn.Module, dense_params: int,
         ppl: float, dense_ppl: float, prune_seconds: float, eval_seconds: float, **extra) -> dict:
    parameters = count_parameters(model)
    return {"model": model_name, "configuration": key, "label": label, "stage": stage,
            "parameters": parameters, "parameters_x_dense": parameters / dense_params,
            "layers": model.config.num_hidden_layers, "intermediate_size": model.config.intermediate_size,
            "decoder_linear_sparsity": decoder_linear_sparsity(model),
            "zero_parameters": count_zeros(model), "float32_bytes": 4 * parameters,
            "perplexity": ppl, "perplexity_x_dense": ppl / dense_ppl,
            "prune_seconds": round(prune_seconds, 1), "eval_seconds": round(eval_seconds, 1),
            "peak_rss_bytes": peak_rss_bytes(), **extra}


def _line(row: dict) -> str:
    if "error" in row:
        return f"| {row['model']} | {row['label']} | failed: {row['error'][:200]} | | | | | | |"
    return (f"| {row['model']} | {row['label']} | {row['parameters'] / 1e6:.1f}M | {row['parameters_x_dense']:.2f} "
            f"| {row['decoder_linear_sparsity']:.1%} | {row['float32_bytes'] / 1e6:,.0f} MB | {row['perplexity']:.2f} "
            f"| {row['perplexity_x_dense']:.2f} | {row['prune_seconds']:.0f} |")


if __name__ == "__main__":
    main()
