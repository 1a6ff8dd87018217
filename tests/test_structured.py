"""Structured pruning: the score math by hand, the surgery through stock transformers, the choices on planted
structure (a block that does nothing, channels that never fire), the score cache, and the one-line errors."""

import json
import math
import subprocess
import sys
import textwrap
from copy import deepcopy

import pytest
import torch
from conftest import CONFIGS, tiny_model
from test_cli import assert_one_line_error, run_cli, small_run
from transformers import AutoModelForCausalLM

from prunekit.api import prune
from prunekit.errors import PrunekitError
from prunekit.methods import depth, kind_of, names, width
from prunekit.methods.width import ChannelStats
from prunekit.models.adapters import adapter_for
from prunekit.models.surgery import remove_layers


def windows(samples: int = 4, seq_len: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 96, (samples, seq_len), generator=torch.Generator().manual_seed(seed))


def run(model, stages, **kwargs):
    return prune(model, stages=stages, calibration=windows(), progress=False, cache_scores=False, **kwargs)


# ---------------------------------------------------------------- the math, by hand


def test_block_influence_and_angular_distance_by_hand():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert depth.block_influence(x, 3 * x).tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    assert depth.block_influence(x, torch.tensor([[0.0, 1.0], [-1.0, 1.0]])).tolist() == pytest.approx(
        [1.0, 1 - 1 / math.sqrt(2)], abs=1e-6)
    assert depth.angular_distance(x, -x).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    assert depth.angular_distance(x, torch.tensor([[0.0, 5.0], [1.0, 1.0]])).tolist() == pytest.approx([0.5, 0.25])


def test_block_choices():
    assert depth.lowest([0.3, 0.1, 0.2, 0.1], 2) == [1, 3]
    assert depth.best_span([0.5, 0.2, 0.4], 3) == [1, 2, 3]
    assert depth.last_blocks(2, 5) == [3, 4]
    chosen = depth.random_blocks(3, 10, seed=1)
    assert chosen == depth.random_blocks(3, 10, seed=1) and len(set(chosen)) == 3 and chosen == sorted(chosen)


def test_channel_scores_by_hand():
    x = torch.tensor([[1.0, 2.0, 0.0], [3.0, 2.0, 4.0]], dtype=torch.float64)
    stats = ChannelStats(x.sum(0), x.square().sum(0), 2)
    assert stats.mean.tolist() == [2.0, 2.0, 2.0]
    assert stats.variance.tolist() == pytest.approx(x.var(dim=0).tolist())  # unbiased, as FLAP
    w = torch.tensor([[1.0, -2.0, 0.5], [-1.0, 0.0, 0.5]])
    assert width.activation_scores(stats).tolist() == [10.0, 8.0, 16.0]
    assert width.wanda_sp_scores(w, stats).tolist() == pytest.approx([2 * math.sqrt(10), 2 * math.sqrt(8), 4.0])
    assert width.flap_scores(w, stats).tolist() == pytest.approx([2.0 * 2, 0.0, 8.0 * 0.5])
    g = torch.tensor([[0.5, 1.0, -2.0], [2.0, 1.0, 1.0]])
    w_in, g_in = torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, 3.0]]), torch.tensor([[1.0, -1.0], [1.0, 5.0], [1.0, 1.0]])
    # |w*g| over the output column j plus the input row j
    assert width.taylor_scores(w, g, [w_in], [g_in]).tolist() == pytest.approx([2.5 + 2, 2.0 + 2, 1.5 + 3])


def test_groups_and_keep():
    scores = torch.tensor([1.0, 5.0, 3.0, 3.0, 0.0, 2.0])
    assert width.group_sums(scores, 2).tolist() == [6.0, 6.0, 2.0]
    assert width.keep_highest(scores, 3).tolist() == [1, 2, 3]
    assert width.keep_within_groups(scores, 2, 1).tolist() == [1, 3]  # groups [1, 5, 3] and [3, 0, 2]


def test_bias_compensation_is_exact_for_constant_channels():
    """Channels whose input never varies are replaced exactly by their mean contribution (FLAP's premise)."""
    torch.manual_seed(0)
    x = torch.randn(50, 6, dtype=torch.float64)
    x[:, [1, 4]] = torch.tensor([0.7, -1.3], dtype=torch.float64)
    w = torch.randn(5, 6, dtype=torch.float64)
    stats = ChannelStats(x.sum(0), x.square().sum(0), len(x))
    removed = torch.tensor([False, True, False, False, True, False])
    assert width.flap_scores(w, stats)[removed].abs().max() < 1e-12  # zero fluctuation: removed first
    bias = width.compensation_bias(w, stats.mean, removed)
    assert torch.allclose(x[:, ~removed] @ w[:, ~removed].T + bias, x @ w.T)


# ---------------------------------------------------------------- surgery through stock transformers

STAGES = [
    {"method": "block-influence", "size": 1},
    {"method": "flap", "part": "mlp", "sparsity": 0.25, "bias_compensation": False},
    {"method": "wanda-sp", "part": "heads", "size": 2},
    {"method": "activation", "part": "kv-heads", "size": 1},
]


@pytest.mark.parametrize("family", list(CONFIGS))
@pytest.mark.parametrize("stage", STAGES, ids=lambda s: f"{s['method']}-{s.get('part', 'blocks')}")
def test_structured_output_reloads_in_stock_transformers(family, stage, tmp_path):
    model = tiny_model(family)
    derived_head_size = ("opt", "stablelm", "olmo2", "gpt_neox", "gpt2", "gpt_bigcode", "falcon", "olmoe", "gpt_oss")
    if family in derived_head_size and stage.get("part") in ("heads", "kv-heads"):
        with pytest.raises(PrunekitError, match="head size|q_norm|sink"):
            run(model, [stage])
        return
    if adapter_for(model).mlp is None and stage.get("part") == "mlp":  # MoE: experts, no dense MLP
        with pytest.raises(PrunekitError, match="has no dense MLP"):
            run(model, [stage])
        return
    layers, parameters = model.config.num_hidden_layers, model.num_parameters()
    result = run(model, [stage])
    assert model.num_parameters() < parameters
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.num_parameters() == model.num_parameters()
    ids = windows(2, 16)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)
    assert reloaded.generate(ids[:1, :4], max_new_tokens=4, min_new_tokens=4, do_sample=False).shape == (1, 8)
    if kind_of(stage["method"]) == "depth":
        assert reloaded.config.num_hidden_layers == layers - 1 == result.structured[0].removed["layers_after"]


def test_gemma_layer_types_follow_the_removed_block(tmp_path):
    model = tiny_model("gemma3_text")  # sliding, full, sliding
    before = list(model.config.layer_types)
    result = run(model, [{"method": "block-last", "size": 1}])
    assert result.structured[0].removed["blocks"] == [2]
    assert model.config.layer_types == before[:2] and model.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]


def test_flap_bias_goes_into_the_config(tmp_path):
    model = tiny_model("llama")
    run(model, [{"method": "flap", "part": "mlp", "sparsity": 0.5}])
    assert model.config.mlp_bias and model.config.intermediate_size == 64
    assert model.model.layers[0].mlp.down_proj.bias.abs().sum() > 0
    assert model.model.layers[0].mlp.up_proj.bias.abs().sum() == 0  # the flag's other biases stay zero
    with pytest.raises(PrunekitError, match="--no-bias-compensation"):
        run(tiny_model("qwen2"), [{"method": "flap", "part": "mlp", "sparsity": 0.5}])


# ---------------------------------------------------------------- choices on planted structure


def _silence_block(model, index):
    layer = model.model.layers[index]
    layer.self_attn.o_proj.weight.data.zero_()
    layer.mlp.down_proj.weight.data.zero_()


@pytest.mark.parametrize("method", ["block-influence", "angular", "block-taylor"])
def test_depth_methods_remove_a_block_that_does_nothing(method):
    model = tiny_model("llama")
    _silence_block(model, 0)
    options = {"gradient_samples": 2} if method == "block-taylor" else {}
    result = run(model, [{"method": method, "size": 1, **options}])
    assert result.structured[0].removed["blocks"] == [0]


def three_block_model(family):
    torch.manual_seed(3)
    config = CONFIGS[family]()
    config.num_hidden_layers = 3
    if getattr(config, "layer_types", None) and len(config.layer_types) != 3:
        config.layer_types = [config.layer_types[0]] * 3
    return AutoModelForCausalLM.from_config(config).eval()


def _perplexity_without(model, block, ids):
    """Perplexity of a copy with the block really removed (config lists and all), by stock forward."""
    copy = deepcopy(model)
    remove_layers(adapter_for(copy), {block})
    with torch.no_grad():
        logits = copy(ids).logits
    return math.exp(torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()))


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "opt"])  # Gemma: sliding and global layers alternate
@pytest.mark.parametrize("method", ["sleb", "block-ppl"])
def test_perplexity_rankings_remove_the_block_whose_absence_hurts_least(method, family):
    model = three_block_model(family)
    ppl = [_perplexity_without(model, b, windows()) for b in range(3)]
    result = run(model, [{"method": method, "size": 1}])
    assert result.structured[0].removed["blocks"] == [min(range(3), key=ppl.__getitem__)]
    if method == "block-ppl":
        assert result.structured[0].scores["perplexity_without_block"] == pytest.approx(ppl, rel=1e-5)


@pytest.mark.parametrize("method", names("width"))
def test_width_methods_remove_channels_that_never_fire(method):
    model = tiny_model("llama")
    dead = torch.arange(0, 128, 4)  # a quarter of the channels: their gate and up rows are zero
    for layer in model.model.layers:
        layer.mlp.gate_proj.weight.data[dead] = 0
        layer.mlp.up_proj.weight.data[dead] = 0
    options = {"gradient_samples": 2} if method == "taylor" else {}
    result = run(model, [{"method": method, "part": "mlp", "size": 96, "bias_compensation": False, **options}])
    for kept in result.structured[0].removed["kept_per_layer"]:
        assert not set(kept) & set(dead.tolist())


def test_scores_are_cached_for_another_size():
    first = tiny_model("llama")
    a = prune(first, stages=[{"method": "flap", "part": "mlp", "size": 96}], calibration=windows(), progress=False)
    second = tiny_model("llama")
    b = prune(second, stages=[{"method": "flap", "part": "mlp", "size": 64}], calibration=windows(), progress=False)
    assert any("cache" in note for note in b.structured[0].notes)
    assert not any("cache" in note for note in a.structured[0].notes)
    for big, small in zip(a.structured[0].removed["kept_per_layer"], b.structured[0].removed["kept_per_layer"],
                          strict=True):
        assert set(small) < set(big)


@pytest.mark.parametrize(("stage", "fraction"), [
    ({"method": "activation", "part": "mlp"}, 0.2),
    ({"method": "block-last"}, 0.3),
    ({"method": "activation", "part": "kv-heads"}, 0.15),
])
def test_param_fraction_removes_about_that_share_of_the_model(stage, fraction):
    model = tiny_model("llama")
    before = model.num_parameters()
    run(model, [{**stage, "param_fraction": fraction}])
    removed = (before - model.num_parameters()) / before
    block = sum(p.numel() for p in tiny_model("llama").model.layers[0].parameters())
    # per unit over the 2 layers: a channel's gate/up rows and down column; a KV group's 2 query heads (q rows, o
    # columns) with its k and v rows (head_dim 16, hidden 64); a block
    unit = {"mlp": 3 * 64 * 2, "kv-heads": (2 * 2 + 2) * 16 * 64 * 2}.get(stage.get("part"), block) / before
    assert abs(removed - fraction) <= unit / 2 + 1e-9  # as close as whole channels / heads / blocks allow


def test_chained_stages_in_one_recipe():
    model = tiny_model("llama")
    result = run(model, [{"method": "block-last", "size": 1}, {"method": "taylor", "part": "mlp", "sparsity": 0.5,
                                                                "gradient_samples": 2},
                         {"method": "wanda", "sparsity": 0.5}])
    assert model.config.num_hidden_layers == 1 and model.config.intermediate_size == 64
    assert [s.stage.split(":")[0] for s in result.structured] == ["block-last", "taylor on mlp"]
    assert result.sparsity == pytest.approx(0.5)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(("stage", "message"), [
    ({"method": "block-influence", "size": 2}, "give a number from 1 to 1"),
    ({"method": "block-influence", "sparsity": 0.1}, "rounds to 0"),
    ({"method": "wanda-sp", "part": "heads", "size": 3}, "multiple of 2"),
    ({"method": "flap", "part": "mlp", "size": 128}, "give a number from 1 to 127"),
    ({"method": "flap", "part": "mlp", "sparsity": 0.001}, "rounds to 0"),
    ({"method": "flap", "part": "kv-heads", "size": 0}, "greater than 0"),
    ({"method": "flap", "part": "blocks", "size": 1}, "prunes width"),
    ({"method": "sleb", "part": "mlp", "size": 1}, "removes blocks"),
    ({"method": "sleb", "size": 1, "sparsity": 0.5}, "exactly one"),
])
def test_bad_structured_targets(stage, message):
    with pytest.raises(PrunekitError, match=message):
        run(tiny_model("llama"), [stage])


def test_cli_depth_prune_and_stock_reload(tiny_model_dir, text_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "shallow"
    code, stdout, err = run_cli([*small_run(tiny_model_dir, text_file, out), "--method", "angular", "--size", "1"],
                                capsys, monkeypatch)
    assert code == 0, err
    report = json.loads((out / "prunekit.json").read_text())
    structure = report["structure"]
    assert structure["config"]["num_hidden_layers"] == 1 and "blocks" in stdout
    check = textwrap.dedent(f"""
        from transformers import AutoModelForCausalLM
        m = AutoModelForCausalLM.from_pretrained({str(out)!r})
        print(m.num_parameters(), m.config.num_hidden_layers)
    """)
    printed = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True).stdout.split()
    assert printed == [str(report["parameters"]), "1"]
    assert structure["dense_parameters"] - structure["parameters_removed"] == report["parameters"]

    code, _, err = run_cli([*small_run(tiny_model_dir, text_file, tmp_path / "x"), "--method", "angular", "--size",
                            "2"], capsys, monkeypatch)
    assert code == 2 and "from 1 to 1" in err
    assert_one_line_error(err)
    assert not (tmp_path / "x").exists()
