"""Dense-to-MoE conversion (moefy): the clustering, the router fit and scaling, the converted layer's function, and
the converted checkpoint through prunekit.api.run, reloaded by stock transformers with equal logits and pruned
further with an expert method."""

import pytest
import torch
from conftest import make_text, tiny_model
from test_cli import assert_one_line_error, run_cli, small_run
from transformers import AutoModelForCausalLM

from prunekit.api import prune, run
from prunekit.engine.moefy import moefy
from prunekit.errors import PrunekitError
from prunekit.methods.moefy import balanced_clusters, fit_router, router_scale
from prunekit.models.adapters import adapter_for
from prunekit.recipe import Recipe

CPU = torch.device("cpu")
CALIBRATION = torch.randint(3, 96, (8, 32), generator=torch.Generator().manual_seed(0))
IDS = torch.randint(3, 96, (2, 16), generator=torch.Generator().manual_seed(7))


def test_balanced_clusters_recover_planted_groups_in_equal_sizes():
    generator = torch.Generator().manual_seed(0)
    directions = torch.randn(4, 50, generator=generator)
    truth = torch.arange(32) % 4
    features = directions[truth] + 0.1 * torch.randn(32, 50, generator=generator)
    labels = balanced_clusters(features, 4)
    assert torch.bincount(labels).tolist() == [8, 8, 8, 8]
    # the same partition as the planted one, up to the clusters' names
    assert all(len(set(labels[truth == g].tolist())) == 1 for g in range(4))
    assert torch.equal(labels, balanced_clusters(features, 4))  # deterministic
    with pytest.raises(ValueError, match="equal clusters"):
        balanced_clusters(features, 5)


def test_router_fit_recovers_a_linear_map_and_the_scale_keeps_the_ordering():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(500, 16, generator=generator, dtype=torch.float64)
    truth = torch.randn(4, 16, generator=generator, dtype=torch.float64)
    y = x @ truth.T
    assert torch.allclose(fit_router(x.T @ x, x.T @ y, ridge=1e-9), truth, atol=1e-6)
    logits = x @ truth.T
    scale = router_scale(logits, spread=0.01)
    scaled = logits * scale
    assert float((scaled.max(1).values - scaled.min(1).values).max()) == pytest.approx(0.01)
    assert torch.equal(scaled.argsort(dim=1), logits.argsort(dim=1))


@torch.no_grad()
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_every_expert_active_gives_the_dense_function(family):
    """With top_k = experts, the converted model adds every expert with a gate within 1% of 1/k times k: the dense
    MLP, so the logits stay within 1% of the dense model's."""
    dense = tiny_model(family)
    expected = dense(IDS).logits
    converted, done = moefy(adapter_for(dense), 4, 4, CALIBRATION, CPU, 4)
    assert type(converted).__name__ == {"llama": "MixtralForCausalLM", "qwen2": "Qwen2MoeForCausalLM",
                                        "qwen3": "Qwen3MoeForCausalLM"}[family]
    assert done["expert_width"] == 32 and adapter_for(converted).num_experts == 4
    difference = (converted(IDS).logits - expected).abs().max()
    assert difference < 0.01 * expected.abs().max()


@torch.no_grad()
def test_the_fitted_router_chooses_better_experts_than_a_random_router():
    dense = tiny_model("llama")
    expected = dense(IDS).logits
    converted, _ = moefy(adapter_for(dense), 4, 2, CALIBRATION, CPU, 4)
    fitted = (converted(IDS).logits - expected).pow(2).mean()
    adapter = adapter_for(converted)
    generator = torch.Generator().manual_seed(0)
    for layer in adapter.layers:
        router = adapter.moe(layer)[1]
        router.weight.copy_(torch.randn(router.weight.shape, generator=generator) * router.weight.std())
    random = (converted(IDS).logits - expected).pow(2).mean()
    assert fitted < random


def test_converted_checkpoint_reloads_and_prunes_further(tmp_path, tokenizer):
    source = tmp_path / "dense"
    tiny_model("qwen2").save_pretrained(source)
    tokenizer.save_pretrained(source)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_text(3000, seed=1))
    calibration = dict(source=str(corpus), samples=4, seq_len=32, batch_size=4)
    recipe = Recipe.parse(dict(model=str(source), device="cpu", calibration=calibration,
                               stages=[dict(method="moefy", size=4, top_k=2)], evaluation=dict(ppl=False)))
    report = run(recipe, tmp_path / "moe")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "moe").eval()
    assert reloaded.config.model_type == "qwen2_moe" and reloaded.config.num_experts == 4
    assert reloaded.num_parameters() == report["parameters"]
    assert report["structure"]["stages"][0]["removed"]["top_k"] == 2
    # the converted model is an MoE model like any other: REAP keeps 3 of its 4 experts
    pruned = run(Recipe.parse(dict(model=str(tmp_path / "moe"), device="cpu", calibration=calibration,
                                   stages=[dict(method="reap", size=3)], evaluation=dict(ppl=False))),
                 tmp_path / "reap")
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "reap").config.num_experts == 3
    assert pruned["parameters"] < report["parameters"]


def test_cli_converts_and_prints_the_table(tmp_path, tokenizer, capsys, monkeypatch):
    source = tmp_path / "dense"
    tiny_model("llama").save_pretrained(source)
    tokenizer.save_pretrained(source)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_text(3000, seed=1))
    code, out, err = run_cli([*small_run(source, corpus, tmp_path / "out"), "--method", "moefy", "--experts", "4",
                              "--top-k", "2"], capsys, monkeypatch)
    assert code == 0, err
    assert "4 experts of 32 channels, top 2" in out
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out").config.model_type == "mixtral"


def test_moefy_refuses_what_it_cannot_convert(tmp_path, tokenizer, capsys, monkeypatch):
    for family, stage, message in (("llama", dict(method="moefy", size=3), "into 3 equal experts"),
                                   ("llama", dict(method="moefy", size=4, top_k=5), "from 1 to 4 experts"),
                                   ("opt", dict(method="moefy", size=4), "moefy converts llama"),
                                   ("llama", dict(method="moefy", sparsity=0.5), "give the expert count")):
        with pytest.raises(PrunekitError, match=message) as error:
            prune(tiny_model(family), stages=[stage], calibration=CALIBRATION, progress=False, cache_scores=False)
        assert "\n" not in str(error.value)
    source = tmp_path / "dense"
    tiny_model("llama").save_pretrained(source)
    tokenizer.save_pretrained(source)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_text(3000, seed=1))
    out = tmp_path / "out"
    code, _, err = run_cli([*small_run(source, corpus, out), "--method", "moefy", "--experts", "5"], capsys,
                           monkeypatch)
    assert code == 2 and "into 5 equal experts" in err
    assert_one_line_error(err)
    assert not out.exists()
