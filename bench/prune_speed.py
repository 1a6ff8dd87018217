"""How long Wanda pruning takes next to the floor every activation-aware method pays.

    .venv/bin/python bench/prune_speed.py [--model smollm2-135m] [--samples 128] [--seq-len 512] [--repeats 1]

The floor is one forward pass of the calibration set through the whole model (batches of 8, no gradients).
Each measurement runs in a fresh process so peak RSS is its own. Prints a table with the ratio prune/floor and
writes bench/results/prune_speed.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def worker(kind: str, model_name: str, samples: int, seq_len: int) -> dict:
    import torch

    import prunekit
    from prunekit.recipe import CalibrationConfig
    from prunekit.runinfo import peak_rss_bytes

    loaded = prunekit.load_model(model_name)
    model = loaded.model
    windows = prunekit.calibration_data(model, loaded.tokenizer, CalibrationConfig(samples=samples, seq_len=seq_len))
    started = time.perf_counter()
    if kind == "floor":
        with torch.no_grad():
            for batch in windows.split(8):
                model(input_ids=batch, use_cache=False)
    else:
        prunekit.prune(model, method="wanda", sparsity=0.5, calibration=windows, progress=False)
    return {"seconds": time.perf_counter() - started, "peak_rss_bytes": peak_rss_bytes()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--worker", choices=["floor", "wanda"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "prune_speed.json")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.samples, args.seq_len)))
        return

    runs: dict[str, list[dict]] = {"floor": [], "wanda": []}
    for repeat in range(args.repeats):
        for kind in runs:
            command = [sys.executable, __file__, "--worker", kind, "--model", args.model,
                       "--samples", str(args.samples), "--seq-len", str(args.seq_len)]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            runs[kind].append(json.loads(output.strip().splitlines()[-1]))
            print(f"repeat {repeat + 1}: {kind}: {runs[kind][-1]['seconds']:.1f} s", flush=True)
    median = {k: {m: statistics.median(r[m] for r in v) for m in ("seconds", "peak_rss_bytes")}
              for k, v in runs.items()}
    ratio = median["wanda"]["seconds"] / median["floor"]["seconds"]
    print(f"\n{args.model}, {args.samples} x {args.seq_len} calibration tokens, median of {args.repeats}")
    print(f"{'':34s} {'seconds':>8s} {'peak RSS GB':>12s}")
    print(f"{'floor: one forward of the calib set':34s} {median['floor']['seconds']:8.1f} "
          f"{median['floor']['peak_rss_bytes'] / 1e9:12.2f}")
    print(f"{'prunekit wanda 50% (layer by layer)':34s} {median['wanda']['seconds']:8.1f} "
          f"{median['wanda']['peak_rss_bytes'] / 1e9:12.2f}")
    print(f"ratio prune / floor: {ratio:.2f} (target <= 1.5)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": args.model, "calibration": [args.samples, args.seq_len],
                                    "runs": runs, "median": median, "ratio": ratio}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
