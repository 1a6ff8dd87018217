"""Vocabulary pruning where it pays: a small model's embedding and head are a large share of what every decoded
token reads. Dense vs vocabulary-trimmed, alone and with 25% of the blocks removed, in one run.

    .venv/bin/python bench/vocab.py [--model smollm2-135m] [--coverage 0.999] [--blocks 0.25] [--threads 1]
        [--calib-samples 128] [--new-tokens 64] [--repeats 5] [--bin LLAMA_CPP_BIN_DIR] [--type f16]

Variants, each pruned once with `prunekit prune` (cached under bench/results/vocab/):
- dense;
- vocab: the tokens covering --coverage of the English Wikipedia calibration split's tokens (all of its
  documents), with their BPE merge parts, the special tokens and the byte alphabet; tokenizer rewritten;
- depth: --blocks of the decoder blocks removed by block influence (ShortGPT) on --calib-samples x 512 tokens;
- vocab+depth: both, depth first (the recipe's stages in that order).
For each: parameters; perplexity on 16 x 1024 tokens of the held-out Wikipedia split, each model reading the same
text through its own tokenizer, per token and per character (the fair comparison across tokenizers); tokens per
character of that text; decode tokens/s at batch 1 in transformers (prunekit's `bench`: one process per model,
interleaved, medians, --threads) and, when llama.cpp is built (`make bench-llamacpp`, or --bin), in llama.cpp
(llama-bench -n 64 on a GGUF export of each, --type). Prints the table and writes bench/results/vocab.json.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

import prunekit
from prunekit.eval.speed import SpeedConfig, benchmark_models
from prunekit.models.loading import local_checkpoint
from prunekit.recipe import EvaluationConfig, Recipe
from prunekit.runinfo import count_parameters, versions
from prunekit.text.sources import load_texts

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llamacpp  # noqa: E402  (the llama.cpp helpers of bench/llamacpp.py)

RESULTS = Path(__file__).resolve().parent / "results"
WORK = RESULTS / "vocab"


def stages(variant: str, coverage: float, blocks: float) -> list[dict]:
    depth = [{"method": "block-influence", "sparsity": blocks}] if "depth" in variant else []
    vocab = [{"method": "vocab", "coverage": coverage}] if "vocab" in variant else []
    return depth + vocab


def variant_dir(model: str, variant: str, args: argparse.Namespace) -> Path:
    """The pruned model of a variant, made once (a finished run has its prunekit.json)."""
    if variant == "dense":
        return local_checkpoint(model)
    out = WORK / f"{model}-{variant}"
    if not (out / "prunekit.json").exists():
        print(f"pruning {model} {variant} ...", flush=True)
        recipe = Recipe.parse({"model": model, "stages": stages(variant, args.coverage, args.blocks),
                               "calibration": {"samples": args.calib_samples, "seq_len": 512},
                               "evaluation": {"ppl": False}})
        prunekit.run(recipe, out, overwrite=True)
    return out


def quality(path: Path) -> dict:
    """Parameters, perplexity per token and per character, and tokens per character of the held-out text."""
    loaded = prunekit.load_model(str(path))
    result = prunekit.evaluate(loaded.model, loaded.tokenizer, EvaluationConfig(), progress=False)
    texts = load_texts("wikipedia", "evaluation")
    tokens = sum(len(ids) for ids in loaded.tokenizer(texts, add_special_tokens=False)["input_ids"])
    return {"parameters": count_parameters(loaded.model), "vocabulary": len(loaded.tokenizer),
            "perplexity": result.perplexity, "char_perplexity": result.char_perplexity,
            "tokens_per_char": tokens / sum(len(t) for t in texts)}


def llama_cpp_bin(given: str | None) -> Path | None:
    if given:
        return Path(given).expanduser()
    found = sorted(glob.glob(str(Path.home() / ".cache/prunekit/llama.cpp/*/build/bin/llama-bench")))
    return Path(found[-1]).parent if found else None


def table(rows: list[dict], llama: bool) -> str:
    base = rows[0]
    head = ["variant", "params", "vocab", "ppl/token", "ppl/char", "tok/char", "decode tok/s (x)"]
    head += ["llama.cpp decode tok/s (x)"] if llama else []
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        cells = [r["variant"], f"{r['parameters'] / 1e6:.1f}M ({r['parameters'] / base['parameters']:.2f})",
                 f"{r['vocabulary']:,}", f"{r['perplexity']:.2f}", f"{r['char_perplexity']:.4f}",
                 f"{r['tokens_per_char']:.4f}",
                 f"{r['decode_tps']:.1f} ({r['decode_tps'] / base['decode_tps']:.2f}x)"]
        if llama:
            cells.append(f"{r['llama_decode_tps']:.1f} ({r['llama_decode_tps'] / base['llama_decode_tps']:.2f}x)")
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--coverage", type=float, default=0.999)
    parser.add_argument("--blocks", type=float, default=0.25)
    parser.add_argument("--calib-samples", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bin", default=None, help="llama.cpp's build/bin (default: what make bench-llamacpp built)")
    parser.add_argument("--type", default="f16", choices=("f32", "f16", "q8_0"), help="GGUF type for llama.cpp")
    parser.add_argument("--out", type=Path, default=RESULTS / "vocab.json")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    started = time.time()
    variants = ["dense", "vocab", "depth", "vocab+depth"]
    paths = {v: variant_dir(args.model, v, args) for v in variants}
    rows = []
    for variant in variants:
        print(f"evaluating {variant} ...", flush=True)
        rows.append({"variant": variant, "path": str(paths[variant]), **quality(paths[variant])})
    speed = benchmark_models([str(paths[v]) for v in variants],
                             SpeedConfig(batch_sizes=(1,), new_tokens=args.new_tokens, repeats=args.repeats,
                                         threads=args.threads, device="cpu"))
    for row, measured in zip(rows, speed["models"], strict=True):
        row["decode_tps"] = measured["decode_tokens_per_s"]["1"]["median"]
        row["prefill_tps"] = measured["prefill_tokens_per_s"]["median"]
    binary = llama_cpp_bin(args.bin)
    if binary is not None:
        files = [llamacpp.gguf_file(args.model, v, paths[v], args.type) for v in variants]
        for row, measured in zip(rows, llamacpp.llama_bench(binary, files, args.threads), strict=True):
            row["llama_decode_tps"], row["llama_prompt_tps"] = measured["decode_tps"], measured["prompt_tps"]
    print(table(rows, binary is not None))
    if binary is None:
        print("llama.cpp: not measured (build it with `make bench-llamacpp`, or pass --bin)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": args.model, "coverage": args.coverage, "blocks": args.blocks,
                                    "threads": args.threads, "type": args.type, "rows": rows,
                                    "transformers_speed": speed, "seconds": round(time.time() - started),
                                    "versions": versions()}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
