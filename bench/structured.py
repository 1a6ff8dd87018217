"""Structured pruning on SmolLM2-135M's real weights: what each choice of blocks / channels costs in perplexity,
and what the smaller models gain in speed, in one run.

    .venv/bin/python bench/structured.py [--blocks 0.25] [--mlp 0.25] [--calib-samples 16] [--seeds 0,1,2]
        [--skip-speed] [--threads N]

Fidelity: every method prunes a fresh copy of the dense model with the same calibration windows (Wikipedia
calibration split; SLEB, which runs about blocks x layers / 2 forward passes, the first --sleb-samples of them,
cut to --sleb-seq-len tokens) and is scored on the same held-out windows (16 x 1024, evaluation split). Depth: remove
round(blocks x layers) blocks by block influence, angular distance, SLEB, perplexity and Taylor ranking, against
the last blocks and random blocks (mean over seeds). Width: remove a fraction of every MLP's channels (and one
query head per KV group) by FLAP with and without bias compensation, Wanda-sp, activation energy and Taylor.
Speed: `prunekit bench` (prunekit.eval.speed) on the dense model, the block-influence model and the FLAP MLP model,
each in its own process, interleaved, medians. Writes bench/results/structured.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import prunekit
from prunekit.eval.speed import SpeedConfig, benchmark_models, render_table
from prunekit.progress import console
from prunekit.recipe import CalibrationConfig, EvaluationConfig
from prunekit.runinfo import count_parameters

RESULTS = Path(__file__).resolve().parent / "results"


def width_jobs(mlp: float, heads_kept: int) -> list[tuple[str, dict]]:
    jobs = [(f"flap mlp {mlp:g}", {"method": "flap", "part": "mlp", "sparsity": mlp}),
            (f"flap mlp {mlp:g} no bias", {"method": "flap", "part": "mlp", "sparsity": mlp,
                                          "bias_compensation": False})]
    jobs += [(f"{m} mlp {mlp:g}", {"method": m, "part": "mlp", "sparsity": mlp}) for m in
             ("wanda-sp", "activation", "taylor")]
    heads = {"part": "heads", "size": heads_kept}
    jobs += [("flap heads -1/group", {"method": "flap", **heads}),
             ("flap heads -1/group no bias", {"method": "flap", **heads, "bias_compensation": False}),
             ("wanda-sp heads -1/group", {"method": "wanda-sp", **heads})]
    return jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--blocks", type=float, default=0.25, help="fraction of blocks removed")
    parser.add_argument("--mlp", type=float, default=0.25, help="fraction of MLP channels removed")
    parser.add_argument("--calib-samples", type=int, default=16)
    parser.add_argument("--calib-seq-len", type=int, default=512)
    parser.add_argument("--sleb-samples", type=int, default=4,
                        help="calibration windows SLEB uses (it runs ~blocks x layers / 2 forwards; default 4)")
    parser.add_argument("--sleb-seq-len", type=int, default=256)
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the random-block baseline")
    parser.add_argument("--only", default="", help="comma-separated substrings: run only matching jobs")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="speed: threads per model (default: torch's)")
    parser.add_argument("--repeats", type=int, default=5, help="speed: measured runs per model")
    args = parser.parse_args()

    loaded = prunekit.load_model(args.model)
    dense, tokenizer = loaded.model, loaded.tokenizer
    calibration = prunekit.calibration_data(dense, tokenizer, CalibrationConfig(samples=args.calib_samples,
                                                                               seq_len=args.calib_seq_len))
    evaluation = EvaluationConfig()
    layers = dense.config.num_hidden_layers
    blocks = round(args.blocks * layers)
    jobs: list[tuple[str, dict]] = [(f"{m} -{blocks}", {"method": m, "size": blocks}) for m in
                                    ("block-influence", "angular", "sleb", "block-ppl", "block-taylor", "block-last")]
    jobs += [(f"block-random -{blocks} seed {s}", {"method": "block-random", "size": blocks, "seed": int(s)})
             for s in args.seeds.split(",")]
    jobs += width_jobs(args.mlp, dense.config.num_attention_heads - dense.config.num_key_value_heads)
    if args.only:
        jobs = [j for j in jobs if any(o in j[0] for o in args.only.split(","))]

    rows: list[dict] = []
    dense_ppl = prunekit.evaluate(dense, tokenizer, evaluation, "dense perplexity").perplexity
    rows.append({"job": "dense", "parameters": count_parameters(dense), "perplexity": dense_ppl, "seconds": 0.0})
    saved: dict[str, Path] = {}
    workdir = Path(tempfile.mkdtemp(prefix="prunekit-structured-"))
    for name, stage in jobs:
        model = copy.deepcopy(dense)
        started = time.perf_counter()
        windows = calibration
        if stage["method"] == "sleb":
            windows = calibration[: args.sleb_samples, : args.sleb_seq_len]
        result = prunekit.prune(model, stages=[stage], calibration=windows, cache_scores=False)
        seconds = time.perf_counter() - started
        ppl = prunekit.evaluate(model, tokenizer, evaluation, name).perplexity
        removed = result.structured[0].removed
        rows.append({"job": name, "stage": stage, "calibration": list(windows.shape),
                     "parameters": count_parameters(model), "perplexity": ppl,
                     "seconds": seconds, "removed": removed.get("blocks", removed.get("per_layer_after"))})
        console.log(f"{name}: ppl {ppl:.2f}, {rows[-1]['parameters']:,} parameters, {seconds:.0f} s")
        if name.startswith(("block-influence", f"flap mlp {args.mlp:g}")) and "no bias" not in name:
            saved[name] = workdir / name.replace(" ", "_")
            model.save_pretrained(saved[name])
            tokenizer.save_pretrained(saved[name])
        del model

    random_rows = [r for r in rows if r["job"].startswith("block-random")]
    summary = {}
    if random_rows:
        values = [r["perplexity"] for r in random_rows]
        summary["block-random mean"] = {"perplexity": statistics.mean(values),
                                        "spread": [min(values), max(values)]}
    print_fidelity(rows, summary, dense_ppl)

    speed = None
    if not args.skip_speed and saved:
        config = SpeedConfig(repeats=args.repeats, threads=args.threads)
        speed = benchmark_models([args.model, *map(str, saved.values())], config)
        console.print(render_table(speed))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "structured.json"
    out.write_text(json.dumps({"model": args.model, "calibration": list(calibration.shape),
                               "evaluation": evaluation.model_dump(), "fidelity": rows, "summary": summary,
                               "speed": speed}, indent=2) + "\n")
    console.print(f"wrote {out}")


def print_fidelity(rows: list[dict], summary: dict, dense_ppl: float) -> None:
    print(f"\n{'job':34} {'parameters':>12} {'ppl':>9} {'x dense':>8} {'seconds':>8}  removed")
    for r in rows:
        removed = r.get("removed", "")
        print(f"{r['job']:34} {r['parameters']:>12,} {r['perplexity']:>9.2f} {r['perplexity'] / dense_ppl:>8.2f} "
              f"{r['seconds']:>8.0f}  {removed if isinstance(removed, int) else removed or ''}")
    for name, s in summary.items():
        print(f"{name:34} {'':>12} {s['perplexity']:>9.2f} {s['perplexity'] / dense_ppl:>8.2f}           "
              f"spread {s['spread'][0]:.2f}..{s['spread'][1]:.2f}")
    print()


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
