"""2:4 sparse weights through PyTorch's semi-structured sparse kernels against the same model dense, on a CUDA GPU.

    .venv/bin/python bench/sparse_kernels.py [--model smollm2-135m] [--as-is] [--dtype bfloat16]
        [--prompt-len 512] [--new-tokens 64] [--batch-sizes 1,16,64] [--repeats 5] [--out FILE]

By default every linear but the head is first pruned to 2:4 by magnitude, so any model can be timed (a model
already pruned 2:4 is left as it is by that: its groups hold 2 non-zeros at most); `--as-is` keeps the weights
exactly as saved, and then only the linears that are 2:4 already run sparse. The measurement is
prunekit.eval.sparse_kernels (what `prunekit bench MODEL --sparse-kernels` runs): dense and sparse rounds
alternate, medians; prefill tokens/s at batch 1, decode tokens/s per batch size, the logits' largest difference.
Prints a table and writes bench/results/sparse_kernels.json. Without a CUDA GPU it prints "not measured: no CUDA
GPU" and writes nothing (an earlier result stays).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from rich.console import Console

from prunekit.errors import PrunekitError
from prunekit.eval.sparse_kernels import SparseKernelConfig, benchmark_sparse_kernels, render_table

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--as-is", action="store_true", help="do not prune to 2:4 by magnitude first")
    parser.add_argument("--dtype", default="auto", help="auto | float16 | bfloat16")
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", default="1,16,64")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=RESULTS / "sparse_kernels.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("not measured: no CUDA GPU (PyTorch's 2:4 semi-structured sparse kernels run on NVIDIA GPUs only)")
        return
    config = SparseKernelConfig(prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                                batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")),
                                repeats=args.repeats, warmup=args.warmup, device=args.device, dtype=args.dtype)
    try:
        result = benchmark_sparse_kernels(args.model, config, make_2to4=not args.as_is)
    except PrunekitError as error:  # an old GPU, a model with nothing the kernels take: one line, as the CLI says it
        print(f"not measured: {error}")
        sys.exit(2)
    Console().print(render_table(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
