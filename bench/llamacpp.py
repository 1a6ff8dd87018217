"""Pruned models where they run: llama.cpp speed and perplexity of dense, depth-pruned and MLP-pruned models,
next to prunekit's own perplexity of the same models on the same text.

    make bench-llamacpp          # builds llama-bench and llama-perplexity once, then runs this
    .venv/bin/python bench/llamacpp.py --bin ~/.cache/prunekit/llama.cpp/0.3.36/build/bin \\
        [--models smollm2-135m,qwen2.5-coder-0.5b] [--threads 1] [--type f16] [--limit 20000] [--ctx 512]

For each model: dense, depth -25% (block-influence, 25% of the blocks) and MLP -25% (FLAP with bias
compensation, 25% of every MLP's channels), pruned with `prunekit prune` on 16 x 512 Wikipedia calibration tokens
(cached under bench/results/llamacpp/), exported with `prunekit export --to gguf --type TYPE`, then:
FLAP's bias compensation is on where the family can carry the bias (llama: mlp_bias), off for qwen2.
- llama-bench: prompt processing (-p 128) and decoding (-n 64) tokens/s at --threads: --rounds rounds, each
  running every variant once (2 repetitions) in a rotating order; medians over the rounds.
- llama-perplexity on the first --limit characters of the held-out English Wikipedia articles (prunekit's
  evaluation split) as one text, in --ctx token chunks; llama.cpp scores the second half of each chunk.
- prunekit's perplexity (float32 PyTorch) of the source directory on the same text, cut into the same --ctx
  windows: prunekit's protocol (every token after the first of a window) and, as a check of the export, llama.cpp's
  (the second half of each window), which should agree with llama-perplexity up to the --type's rounding.
Prints one table per model (ratios against dense) and writes bench/results/llamacpp.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
WORK = RESULTS / "llamacpp"
PRUNEKIT = [sys.executable, "-m", "prunekit"]
VARIANTS = {
    "dense": None,
    "depth-25%": ["--method", "block-influence", "--sparsity", "0.25"],
    "mlp-25%": ["--method", "flap", "--part", "mlp", "--sparsity", "0.25"],
}


def run(command: list[str], what: str) -> str:
    """Run a command; its stdout, or exit with its stderr's tail (a failed step stops the benchmark)."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{what} failed ({' '.join(command)}):\n{result.stderr[-3000:]}")
    return result.stdout + result.stderr


def dense_dir(model: str) -> Path:
    from prunekit.models.loading import local_checkpoint

    return local_checkpoint(model)


def variant_dir(model: str, variant: str, calib_samples: int) -> Path:
    """The model directory of a variant, pruned once and reused (a finished prune has its prunekit.json)."""
    if VARIANTS[variant] is None:
        return dense_dir(model)
    out = WORK / f"{model}-{variant.replace('%', '')}"
    if not (out / "prunekit.json").exists():
        print(f"pruning {model} {variant} ...", flush=True)
        run([*PRUNEKIT, "prune", model, *VARIANTS[variant], *width_flags(model, variant), "--calib-samples",
             str(calib_samples), "--calib-seq-len", "512", "--no-eval", "--out", str(out), "--overwrite"],
            f"prune {model} {variant}")
    return out


def width_flags(model: str, variant: str) -> list[str]:
    """FLAP's bias compensation adds a down_proj bias, which only families whose config has `mlp_bias` (llama)
    can carry in stock transformers; the others (qwen2) prune without it."""
    if "--part" not in (VARIANTS[variant] or []):
        return []
    return [] if "mlp_bias" in json.loads((dense_dir(model) / "config.json").read_text()) else \
        ["--no-bias-compensation"]


def gguf_file(model: str, variant: str, source: Path, kind: str) -> Path:
    out = WORK / f"{model}-{variant.replace('%', '')}.{kind}.gguf"
    if not out.exists() or out.stat().st_mtime < (source / "config.json").stat().st_mtime:
        print(f"exporting {out.name} ...", flush=True)
        run([*PRUNEKIT, "export", str(source), "--to", "gguf", "--type", kind, "--out", str(out), "--overwrite"],
            f"export {model} {variant}")
    return out


def evaluation_text(limit: int) -> Path:
    """The first `limit` characters of prunekit's held-out Wikipedia articles, as one text file."""
    from prunekit.text.sources import load_texts

    text = "\n\n".join(load_texts("wikipedia", "evaluation"))[:limit]
    path = WORK / f"wikipedia-evaluation-{limit}.txt"
    path.write_text(text)
    return path


def llama_bench_once(binary: Path, file: Path, threads: int) -> dict:
    """One llama-bench run of one file: mean prompt (pp128) and decode (tg64) tokens/s over 2 repetitions."""
    output = run([str(binary / "llama-bench"), "-m", str(file), "-t", str(threads), "-p", "128", "-n", "64",
                  "-r", "2", "-o", "json"], "llama-bench")
    rows = json.loads(output[output.index("["): output.rindex("]") + 1])
    return {"prompt_tps": next(r["avg_ts"] for r in rows if r["n_prompt"] > 0),
            "decode_tps": next(r["avg_ts"] for r in rows if r["n_gen"] > 0),
            "model_size": rows[0]["model_size"], "model_n_params": rows[0]["model_n_params"]}


def llama_bench(binary: Path, files: list[Path], threads: int, rounds: int) -> list[dict]:
    """Per file, the medians over `rounds` rounds; each round runs every file once, in an order that rotates, so
    that load from other work on a shared machine falls on all variants alike rather than on one."""
    runs: list[list[dict]] = [[] for _ in files]
    for r in range(rounds):
        order = list(range(len(files)))
        order = order[r % len(order):] + order[: r % len(order)]
        for i in order:
            runs[i].append(llama_bench_once(binary, files[i], threads))
    speeds = []
    for measured in runs:
        speed = {key: statistics.median(m[key] for m in measured) for key in ("prompt_tps", "decode_tps")}
        speed.update(model_size=measured[0]["model_size"], model_n_params=measured[0]["model_n_params"],
                     prompt_tps_runs=[m["prompt_tps"] for m in measured],
                     decode_tps_runs=[m["decode_tps"] for m in measured])
        speeds.append(speed)
    return speeds


def llama_perplexity(binary: Path, file: Path, text: Path, ctx: int, threads: int) -> tuple[float, float]:
    output = run([str(binary / "llama-perplexity"), "-m", str(file), "-f", str(text), "-c", str(ctx),
                  "-b", str(ctx), "-t", str(threads)], "llama-perplexity")
    match = re.search(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", output)
    if match is None:
        sys.exit(f"no perplexity in llama-perplexity's output:\n{output[-2000:]}")
    return float(match.group(1)), float(match.group(2))


@torch.no_grad()
def prunekit_perplexity(source: Path, text: Path, ctx: int) -> dict:
    """prunekit's protocol (tokens 2..L of each window) and llama.cpp's (second half) from one forward pass per
    window; the text is one document, tokenized whole as llama.cpp does, cut into consecutive `ctx` windows."""
    import prunekit

    loaded = prunekit.load_model(str(source))
    ids = loaded.tokenizer(text.read_text(), add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    windows = ids[: ids.numel() // ctx * ctx].view(-1, ctx)
    totals = {"prunekit": [0.0, 0], "second_half": [0.0, 0]}
    for window in windows:
        logits = loaded.model(input_ids=window[None], use_cache=False).logits[0, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits, window[1:], reduction="none")
        totals["prunekit"][0] += nll.sum().item()
        totals["prunekit"][1] += nll.numel()
        half = nll[ctx // 2:]  # llama.cpp: the logits at positions ctx/2 .. ctx-2 of each chunk
        totals["second_half"][0] += half.sum().item()
        totals["second_half"][1] += half.numel()
    return {"ppl": math.exp(totals["prunekit"][0] / totals["prunekit"][1]),
            "ppl_llamacpp_protocol": math.exp(totals["second_half"][0] / totals["second_half"][1]),
            "tokens": int(windows.numel()), "windows": int(windows.shape[0])}


def cached(key: str, compute: Callable[[], object]) -> object:
    """Perplexities are deterministic: a rerun (say, to measure speed again) reuses them from WORK/cache.json,
    keyed by the file's name and modification time and the text's settings."""
    path = WORK / "cache.json"
    cache = json.loads(path.read_text()) if path.exists() else {}
    if key not in cache:
        cache[key] = compute()
        path.write_text(json.dumps(cache, indent=1) + "\n")
    return cache[key]


def key_of(path: Path, text: Path, ctx: int) -> str:
    stamp = (path / "config.json" if path.is_dir() else path).stat().st_mtime
    return f"{path}@{stamp}|{text.name}|{ctx}"


def table(model: str, rows: list[dict]) -> str:
    dense = rows[0]
    head = ("| variant | blocks | MLP | params | GGUF MB | prompt t/s | x | decode t/s | x | llama.cpp ppl | x | "
            "prunekit ppl | x | PyTorch, llama.cpp protocol |")
    lines = [f"{model}:", "", head, "|---|" + "---:|" * 13]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['blocks']} | {r['mlp']} | {r['params'] / 1e6:.1f}M | {r['gguf_bytes'] / 1e6:.0f}"
            f" | {r['prompt_tps']:.1f} | {r['prompt_tps'] / dense['prompt_tps']:.2f} | {r['decode_tps']:.1f} | "
            f"{r['decode_tps'] / dense['decode_tps']:.2f} | {r['llamacpp_ppl']:.2f} | "
            f"{r['llamacpp_ppl'] / dense['llamacpp_ppl']:.2f} | {r['prunekit_ppl']:.2f} | "
            f"{r['prunekit_ppl'] / dense['prunekit_ppl']:.2f} | {r['torch_ppl_llamacpp_protocol']:.2f} |")
    return "\n".join(lines)


def same_order(rows: list[dict]) -> bool:
    def order(key: str) -> list[str]:
        return [r["variant"] for r in sorted(rows, key=lambda r: r[key])]
    return order("llamacpp_ppl") == order("prunekit_ppl")


def bench_model(model: str, args: argparse.Namespace, text: Path) -> list[dict]:
    sources = {v: variant_dir(model, v, args.calib_samples) for v in VARIANTS}
    files = {v: gguf_file(model, v, sources[v], args.type) for v in VARIANTS}
    print(f"llama-bench {model} ({args.threads} threads) ...", flush=True)
    speeds = llama_bench(args.bin, list(files.values()), args.threads, args.rounds)
    rows = []
    for (variant, source), speed in zip(sources.items(), speeds, strict=True):
        config = json.loads((source / "config.json").read_text())
        print(f"perplexity {model} {variant} ...", flush=True)
        file = files[variant]
        ppl, err = cached("llama.cpp " + key_of(file, text, args.ctx),
                          lambda f=file: llama_perplexity(args.bin, f, text, args.ctx, args.threads))
        ours = cached("prunekit " + key_of(source, text, args.ctx),
                      lambda s=source: prunekit_perplexity(s, text, args.ctx))
        flags = [*(VARIANTS[variant] or []), *width_flags(model, variant)]
        rows.append({"variant": variant, "source": str(source), "flags": flags, "gguf": str(files[variant]),
                     "gguf_bytes": files[variant].stat().st_size, "blocks": config["num_hidden_layers"],
                     "mlp": config["intermediate_size"], "params": speed["model_n_params"], **speed,
                     "llamacpp_ppl": ppl, "llamacpp_ppl_error": err, "prunekit_ppl": ours["ppl"],
                     "torch_ppl_llamacpp_protocol": ours["ppl_llamacpp_protocol"], "ppl_tokens": ours["tokens"],
                     "ppl_windows": ours["windows"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", type=Path, required=True, help="folder with llama-bench and llama-perplexity")
    parser.add_argument("--models", default="smollm2-135m,qwen2.5-coder-0.5b")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp and PyTorch threads")
    parser.add_argument("--type", default="f16", choices=("f32", "f16", "q8_0"), help="GGUF type")
    parser.add_argument("--limit", type=int, default=20000, help="characters of held-out text for perplexity")
    parser.add_argument("--ctx", type=int, default=512, help="perplexity window (llama.cpp chunk) in tokens")
    parser.add_argument("--calib-samples", type=int, default=16, help="calibration windows of 512 tokens")
    parser.add_argument("--rounds", type=int, default=3, help="llama-bench rounds over the variants (medians)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    WORK.mkdir(parents=True, exist_ok=True)
    text = evaluation_text(args.limit)
    started = time.time()
    result = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "machine": platform.processor() or platform.machine(), "models": {}}
    for model in args.models.split(","):
        rows = bench_model(model, args, text)
        result["models"][model] = {"rows": rows, "same_order": same_order(rows)}
        print("\n" + table(model, rows))
        print(f"\nllama.cpp's perplexity orders the variants as prunekit's does: {same_order(rows)}\n", flush=True)
    result["seconds"] = round(time.time() - started, 1)
    (RESULTS / "llamacpp.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {RESULTS / 'llamacpp.json'}")


if __name__ == "__main__":
    main()
