"""The one-shot methods side by side on real weights: magnitude, Wanda, SparseGPT, RIA, RIA + channel permutation
(N:M only), Wanda + DSnoT, SparseGPT + DSnoT, ALPS and Wanda++ at 50/60/70% unstructured and 2:4.

    .venv/bin/python bench/one_shot.py [--model smollm2-135m] [--methods wanda,ria,...] [--sparsities 0.5,0.6,0.7,2:4]
        [--calib-samples 128] [--calib-seq-len 512] [--ppl-samples 16] [--ppl-seq-len 1024] [--threads 1]
        [--out bench/measured/one_shot_MODEL.json] [--table]

Method names are the sweep's: a weight method with +dsnot (DSnoT refinement) and/or +permute (channel permutation,
N:M points only). Every configuration runs in its own child process (a fresh load of the dense model, the same
calibration windows: --calib-samples x --calib-seq-len tokens of the Wikipedia calibration split, seed 0, 8 windows
per pass; scores never come from the score cache), so its prune time and peak RSS (getrusage of the child, measured
before the perplexity pass) are its own; the table gives both as ratios to SparseGPT at the same sparsity.
Perplexity: prunekit's default protocol (--ppl-samples non-overlapping windows of --ppl-seq-len tokens spread over
the held-out Wikipedia articles, `prunekit eval`'s default), as bench/real_weights.py does.

The JSON is rewritten after every configuration; a rerun skips the configurations it already holds (delete a row, or
the file, to redo it). A configuration that fails is recorded with its error and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "measured"  # tracked: a rerun resumes what earlier runs measured
METHODS = ("magnitude", "wanda", "sparsegpt", "ria", "ria+permute", "wanda+dsnot", "sparsegpt+dsnot", "alps",
           "wanda++")
SPARSITIES = "0.5,0.6,0.7,2:4"


def _stage(label: str, target: str) -> dict:
    from prunekit.sweep import split_method

    stage = split_method(label)
    return {**stage, "pattern": target} if ":" in target else {**stage, "sparsity": float(target)}


def child(args: argparse.Namespace) -> None:
    """One configuration (or the dense model): prints one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    import prunekit
    from prunekit.api import decoder_linear_sparsity, evaluation_data
    from prunekit.recipe import CalibrationConfig, EvaluationConfig
    from prunekit.runinfo import peak_rss_bytes

    calib = CalibrationConfig(samples=args.calib_samples, seq_len=args.calib_seq_len)
    evaluation = EvaluationConfig(samples=args.ppl_samples, seq_len=args.ppl_seq_len)
    loaded = prunekit.load_model(args.model, device="cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    eval_windows = evaluation_data(model, tokenizer, evaluation)
    row: dict = {"model": args.model, "method": args.child[0], "target": args.child[1]}
    rss_loaded = peak_rss_bytes()
    if args.child[0] != "dense":
        stage = _stage(*args.child)
        row["stage"] = stage
        calibration = prunekit.calibration_data(model, tokenizer, calib)
        started = time.perf_counter()
        result = prunekit.prune(model, tokenizer, stages=[stage], calibration=calibration, progress=False,
                                cache_scores=False, device="cpu")
        row["prune_seconds"] = round(time.perf_counter() - started, 2)
        row["phases"] = {k: round(v, 2) for k, v in result.phases.items()}
        row["peak_rss_prune_bytes"] = peak_rss_bytes()
        row["decoder_linear_sparsity"] = decoder_linear_sparsity(model)
        notes = [n for m in result.matrices for n in m.notes]
        row["notes_sample"] = sorted(set(notes))[:6]
        row["notes_count"] = len(notes)
    row["peak_rss_loaded_bytes"] = rss_loaded
    started = time.perf_counter()
    row["perplexity"] = prunekit.evaluate(model, tokenizer, evaluation, "ppl", windows=eval_windows,
                                          progress=False).perplexity
    row["eval_seconds"] = round(time.perf_counter() - started, 2)
    print("ROW " + json.dumps(row), flush=True)


def _run_child(args: argparse.Namespace, label: str, target: str) -> dict:
    command = [sys.executable, __file__, "--child", label, target, "--model", args.model, "--threads",
               str(args.threads), "--calib-samples", str(args.calib_samples), "--calib-seq-len",
               str(args.calib_seq_len), "--ppl-samples", str(args.ppl_samples), "--ppl-seq-len", str(args.ppl_seq_len)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": str(args.threads)})
    rows = [line[4:] for line in done.stdout.splitlines() if line.startswith("ROW ")]
    if done.returncode or not rows:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"model": args.model, "method": label, "target": target, "error": " | ".join(tail),
                "seconds": round(time.perf_counter() - started, 1)}
    return json.loads(rows[-1])


def _key(row: dict) -> str:
    return f"{row['method']}@{row['target']}"


def table(rows: list[dict]) -> str:
    dense = next((r for r in rows if r["method"] == "dense" and "error" not in r), None)
    by_key = {_key(r): r for r in rows}
    lines = ["| method | target | perplexity | x dense | prune s | time / SparseGPT | peak RSS GB | RSS / SparseGPT |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["method"] == "dense":
            if "error" not in r:
                lines.append(f"| dense | - | {r['perplexity']:.2f} | 1.00 | - | - | "
                             f"{r['peak_rss_loaded_bytes'] / 1e9:.2f} | - |")
            continue
        if "error" in r:
            lines.append(f"| {r['method']} | {r['target']} | error: {r['error'][:80]} | | | | | |")
            continue
        base = by_key.get(f"sparsegpt@{r['target']}")
        ok = base is not None and "error" not in base
        ratio = f"{r['perplexity'] / dense['perplexity']:.2f}" if dense else "-"
        lines.append(
            f"| {r['method']} | {r['target']} | {r['perplexity']:.2f} | {ratio} | {r['prune_seconds']:.0f} | "
            f"{r['prune_seconds'] / base['prune_seconds']:.2f} | " if ok else
            f"| {r['method']} | {r['target']} | {r['perplexity']:.2f} | {ratio} | {r['prune_seconds']:.0f} | - | ")
        lines[-1] += (f"{r['peak_rss_prune_bytes'] / 1e9:.2f} | "
                      + (f"{r['peak_rss_prune_bytes'] / base['peak_rss_prune_bytes']:.2f} |" if ok else "- |"))
    return "\n".join(lines)


def _perplexities(rows: list[dict]) -> dict[tuple[str, str], float]:
    return {(r["method"], r["target"]): r["perplexity"] for r in rows if "error" not in r and r["method"] != "dense"}


def _targets(rows: list[dict]) -> list[str]:
    found = {r["target"] for r in rows if r["method"] != "dense"}
    return sorted((t for t in found if ":" not in t), key=float) + sorted(t for t in found if ":" in t)


def grid(rows: list[dict]) -> str:
    """Perplexity by method (rows, in METHODS order) and target (columns); the best of each column in bold."""
    ppl, targets = _perplexities(rows), _targets(rows)
    best = {t: min((v for (_, tt), v in ppl.items() if tt == t), default=None) for t in targets}
    lines = ["| method | " + " | ".join(targets) + " |", "|---|" + "---:|" * len(targets)]
    for method in [m for m in METHODS if any(k[0] == m for k in ppl)]:
        cells = [("**{:.2f}**" if ppl[(method, t)] == best[t] else "{:.2f}").format(ppl[(method, t)])
                 if (method, t) in ppl else "-" for t in targets]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def directions(rows: list[dict]) -> list[str]:
    """The papers' expected directions, each checked where both sides were measured: RIA <= Wanda, permutation
    improves RIA at N:M, DSnoT improves its base at 60-70%, ALPS best at 70%."""
    ppl, out = _perplexities(rows), []

    def check(claim: str, a: tuple[str, str], b: tuple[str, str]) -> None:
        if a in ppl and b in ppl:
            verdict = "holds" if ppl[a] <= ppl[b] else "does not hold"
            out.append(f"{claim}: {ppl[a]:.2f} vs {ppl[b]:.2f}, {verdict}")

    for target in _targets(rows):
        check(f"RIA <= Wanda at {target}", ("ria", target), ("wanda", target))
        if ":" in target:
            check(f"permutation improves RIA at {target}", ("ria+permute", target), ("ria", target))
        elif float(target) >= 0.6:
            for base in ("wanda", "sparsegpt"):
                check(f"DSnoT improves {base} at {target}", (f"{base}+dsnot", target), (base, target))
    at70 = {m: v for (m, t), v in ppl.items() if t in ("0.7", "0.70")}
    if "alps" in at70 and len(at70) > 1:
        winner = min(at70, key=at70.__getitem__)
        out.append(f"ALPS best at 70%: best is {winner} ({at70[winner]:.2f}), "
                   + ("holds" if winner == "alps" else "does not hold"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--sparsities", default=SPARSITIES, help="comma list of fractions and/or N:M patterns")
    parser.add_argument("--calib-samples", type=int, default=128)
    parser.add_argument("--calib-seq-len", type=int, default=512)
    parser.add_argument("--ppl-samples", type=int, default=16)
    parser.add_argument("--ppl-seq-len", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="[default: bench/measured/one_shot_MODEL.json]")
    parser.add_argument("--table", action="store_true", help="print the tables of what --out holds; run nothing")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "TARGET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    out = args.out or RESULTS / f"one_shot_{args.model}.json"
    protocol = {"model": args.model, "calibration": {"source": "wikipedia", "samples": args.calib_samples,
                                                     "seq_len": args.calib_seq_len, "seed": 0, "batch_size": 8},
                "evaluation": {"source": "wikipedia (held-out articles)", "samples": args.ppl_samples,
                               "seq_len": args.ppl_seq_len}, "threads": args.threads, "device": "cpu"}
    document = json.loads(out.read_text()) if out.exists() else {"protocol": protocol, "rows": []}
    if document.get("protocol") != protocol:
        raise SystemExit(f"{out} holds results of another protocol ({document.get('protocol')}): use another --out")
    done = {_key(r) for r in document["rows"] if "error" not in r}
    document["rows"] = [r for r in document["rows"] if "error" not in r]
    methods = [m.strip().lower() for m in args.methods.split(",") if m.strip()]
    targets = [t.strip() for t in args.sparsities.split(",") if t.strip()]
    jobs = [("dense", "-")] + [(m, t) for m in methods for t in targets if ":" in t or not m.endswith("+permute")]
    for label, target in [] if args.table else jobs:
        if f"{label}@{target}" in done:
            continue
        print(f"{label} @ {target} ...", flush=True)
        row = _run_child(args, label, target)
        document["rows"].append(row)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.partial")
        tmp.write_text(json.dumps(document, indent=2) + "\n")
        tmp.replace(out)
        print("  " + (f"error: {row['error']}" if "error" in row else
                      f"perplexity {row['perplexity']:.2f}, {row.get('prune_seconds', 0):.0f} s"), flush=True)
    print(f"\n{args.model}: calibration {args.calib_samples} x {args.calib_seq_len}, perplexity on "
          f"{args.ppl_samples} x {args.ppl_seq_len} held-out tokens, {args.threads} thread(s)\n")
    print(table(document["rows"]))
    print("\nperplexity by method and target (best in bold):\n")
    print(grid(document["rows"]))
    print("\nthe papers' expected directions:")
    for line in directions(document["rows"]):
        print("  " + line)
    if not args.table:
        print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
