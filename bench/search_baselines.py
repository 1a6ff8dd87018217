"""A `prunekit search` result against every uniform recipe of the same parameter budget, side by side.

    .venv/bin/python bench/search_baselines.py OUT [--baselines wanda,sparsegpt,depth,width,flap] [--threads 1]
        [--json bench/measured/search_baselines_MODEL_TARGET.json]

OUT is the output directory of a `prunekit search --target params=F` run. Each baseline is pruned from a fresh load
of the same model with the search's own calibration windows (its recipe: source, samples, length, seed) and scored
exactly as the search scored its choice: KL divergence from the dense model per token on the same held-out
calibration windows, and perplexity on the same evaluation windows. The baselines:

- wanda, sparsegpt: uniform unstructured sparsity of every decoder linear that keeps F of the parameters (the
  search's `uniform_sparsity`);
- depth: ShortGPT's block influence, removing the blocks that bring the model nearest F of its parameters;
- width, flap: every MLP loses the same channels (Wanda-SP scores; FLAP's fluctuation scores with its bias
  compensation), as many as remove (1 - F) of the parameters.

Structured baselines cannot hit F exactly (whole blocks, whole channels); the table gives what each keeps.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "measured"
BASELINES = ("wanda", "sparsegpt", "depth", "width", "flap")


def stage_for(name: str, search: dict, removed_fraction: float) -> dict:
    if name in ("wanda", "sparsegpt"):
        return {"method": name, "sparsity": search["uniform_sparsity"]}
    if name == "depth":
        return {"method": "block-influence", "param_fraction": removed_fraction}
    return {"method": "wanda-sp" if name == "width" else "flap", "part": "mlp", "param_fraction": removed_fraction}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="a prunekit search output directory (params= target)")
    parser.add_argument("--baselines", default=",".join(BASELINES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import prunekit
    from prunekit.api import calibration_data, evaluate, evaluation_data, prune
    from prunekit.engine.search import KLFitness
    from prunekit.recipe import Recipe
    from prunekit.runinfo import count_parameters, count_zeros, versions
    from prunekit.search import held_out_data

    search = json.loads((args.out / "search.json").read_text())
    if search["target"]["key"] != "params" or "uniform_sparsity" not in search:
        raise SystemExit("search_baselines.py compares params= searches in the sparsity space")
    recipe = Recipe.from_yaml(args.out / "recipe.yaml")
    target = search["target"]["value"]
    rows = []
    for name in ["dense", *args.baselines.split(",")]:
        started = time.perf_counter()
        loaded = prunekit.load_model(search["model"], device="cpu")
        model, tokenizer = loaded.model, loaded.tokenizer
        parameters = count_parameters(model)
        held = held_out_data(model, tokenizer, recipe.calibration, search["fitness_samples"], recipe.seed)
        kl = KLFitness(model, held, torch.device("cpu"))
        eval_windows = evaluation_data(model, tokenizer, recipe.evaluation)
        if name != "dense":
            windows = calibration_data(model, tokenizer, recipe.calibration, recipe.seed)
            prune(model, tokenizer, stages=[stage_for(name, search, 1.0 - target)], calibration=windows,
                  seed=recipe.seed, device="cpu", batch_size=recipe.calibration.batch_size)
        kept = count_parameters(model) - count_zeros(model)
        ppl = evaluate(model, tokenizer, recipe.evaluation, f"{name} perplexity", windows=eval_windows)
        rows.append({"baseline": name, "kept_fraction": kept / parameters, "kl": kl() if name != "dense" else 0.0,
                     "perplexity": ppl.perplexity, "seconds": round(time.perf_counter() - started, 1)})
        print(json.dumps(rows[-1]), flush=True)
    searched = {"baseline": "searched", "kept_fraction": search["parameters"]["searched_kept"] /
                search["parameters"]["dense"], "kl": search["fitness"]["searched_pruned"],
                "perplexity": search["perplexity"]["searched"]}
    rows.append(searched)
    print(f"\n{search['model']}, {search['target']['text']}: the search ({search['method']} scores, "
          f"{search['generations']} generations) against uniform recipes of the same budget\n")
    print("| model | parameters kept | KL per token | perplexity | searched vs it |\n|---|---:|---:|---:|---:|")
    for row in rows:
        gain = (f"{(searched['perplexity'] / row['perplexity'] - 1) * 100:+.1f}%"
                if row["baseline"] not in ("dense", "searched") else "")
        print(f"| {row['baseline']} | {row['kept_fraction']:.4f} | {row['kl']:.4f} | {row['perplexity']:.2f} | "
              f"{gain} |")
    path = args.json or RESULTS / f"search_baselines_{search['model']}_{search['target']['text']}.json"
    path.write_text(json.dumps({"search": str(args.out), "model": search["model"], "target": search["target"],
                                "versions": versions(), "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
