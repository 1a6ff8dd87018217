"""Streamed pruning (`prunekit prune --stream`) next to the in-memory path on the same model and inputs.

    .venv/bin/python bench/streaming.py [--model qwen2.5-coder-1.5b] [--method wanda] [--calib-samples 32]
        [--calib-batch-size 1]

Runs `prunekit prune` twice in fresh processes, in memory and with --stream, same recipe, seed and calibration batch
size (so the same calibration windows in the same batches), and reads each process's peak RSS from the kernel
(wait4). Then compares the two outputs tensor by tensor (one tensor in memory at a time): names, dtypes and values
must be identical, bit for bit. Prints a table and writes bench/results/streaming.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
PRUNEKIT = Path(sys.executable).with_name("prunekit")


def run(command: list[str]) -> dict:
    """Run a command; its wall time and peak RSS (bytes) as the kernel counted them."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    output = process.stdout.read() if process.stdout else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{output[-2000:]}")
    return {"seconds": time.perf_counter() - started, "peak_rss_bytes": usage.ru_maxrss * 1024}


def compare(a: Path, b: Path) -> dict:
    """Tensor-by-tensor equality of two safetensors directories, loading one tensor of each at a time."""
    from safetensors import safe_open

    def index(directory: Path) -> dict[str, Path]:
        names: dict[str, Path] = {}
        for file in directory.glob("*.safetensors"):
            with safe_open(file, framework="pt") as f:
                names.update(dict.fromkeys(f.keys(), file))
        return names

    left, right = index(a), index(b)
    differing = []
    for name in sorted(set(left) & set(right)):
        with safe_open(left[name], framework="pt") as f, safe_open(right[name], framework="pt") as g:
            x, y = f.get_tensor(name), g.get_tensor(name)
            if x.dtype != y.dtype or x.shape != y.shape or not bool((x.view(-1) == y.view(-1)).all()):
                differing.append(name)
    return {"tensors": len(left), "only_in_memory": sorted(set(left) - set(right)),
            "only_streamed": sorted(set(right) - set(left)), "differing": differing,
            "identical": not differing and set(left) == set(right)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--method", default="wanda")
    parser.add_argument("--sparsity", default="0.5")
    parser.add_argument("--calib-samples", default="32")
    parser.add_argument("--calib-batch-size", default="1", help="the same in both runs, so the inputs are the same")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "streaming.json")
    args = parser.parse_args()
    common = [str(PRUNEKIT), "prune", args.model, "--method", args.method, "--sparsity", args.sparsity,
              "--calib-samples", args.calib_samples, "--calib-batch-size", args.calib_batch_size, "--device", "cpu",
              "--no-eval"]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="prunekit-stream-", dir=BENCH / "results") as tmp:
        for mode, extra in (("streamed", ["--stream"]), ("in_memory", [])):
            out = Path(tmp) / mode
            print(f"{mode}: {' '.join(common[1:] + extra)}", flush=True)
            results[mode] = run([*common, *extra, "--out", str(out)])
            report = json.loads((out / "prunekit.json").read_text())
            results[mode] |= {"prune_seconds": report["seconds"]["prune"], "parameters": report["parameters"],
                              "sparsity": report["decoder_linear_sparsity"],
                              "phases": report["prune_phase_seconds"]}
            print(f"    {results[mode]['seconds']:.0f} s, peak RSS {results[mode]['peak_rss_bytes'] / 1e9:.2f} GB",
                  flush=True)
        comparison = compare(Path(tmp) / "in_memory", Path(tmp) / "streamed")
        size = sum(f.stat().st_size for f in (Path(tmp) / "in_memory").glob("*.safetensors"))
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{args.model}, {args.method} {args.sparsity}, {args.calib_samples} x 512 calibration tokens, "
          f"checkpoint {size / 1e9:.2f} GB")
    print(f"{'path':<10} | {'wall s':>7} | {'prune s':>7} | {'peak RSS GB':>11} | sparsity")
    for mode, r in results.items():
        print(f"{mode:<10} | {r['seconds']:7.0f} | {r['prune_seconds']:7.0f} | {r['peak_rss_bytes'] / 1e9:11.2f} | "
              f"{r['sparsity']:.2%}")
    verdict = "identical, bit for bit" if comparison["identical"] else f"DIFFERENT: {comparison}"
    print(f"outputs: {comparison['tensors']} tensors, {verdict}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": args.model, "method": args.method, "sparsity": args.sparsity,
                                    "calibration": [int(args.calib_samples), 512], "checkpoint_bytes": size,
                                    "runs": results, "comparison": comparison}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
