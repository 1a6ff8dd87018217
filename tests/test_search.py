"""`prunekit search`: EvoPress-style per-layer sparsity search to a parameter budget."""

import copy
import json
import random

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from conftest import CONFIGS, tiny_model
from safetensors.torch import load_file
from test_cli import assert_one_line_error, run_cli

from prunekit import budget
from prunekit.api import prune
from prunekit.engine import latency
from prunekit.engine.search import (
    Candidates,
    DepthSpace,
    EvolutionSettings,
    ScoreLevels,
    WeightLevels,
    WidthDepthSpace,
    WidthLevel,
    dense_scores,
    dense_variants,
    evolve,
    line_neighbours,
)
from prunekit.errors import PrunekitError
from prunekit.methods import get_method
from prunekit.methods.cost import blocks_for_params, blocks_for_speedup, fit_line, max_speedup
from prunekit.methods.evolution import (
    block_switch,
    kept_level_switch,
    kl_sum,
    layer_sparsities,
    level_switch,
    nm_allocation,
    offset_bounds,
    reference_log_probs,
)
from prunekit.models.adapters import adapter_for
from prunekit.recipe import StageConfig, StructuredStageConfig
from prunekit.text.tokens import calibration_windows, held_out_windows


def test_level_switch_keeps_the_budget_and_the_bounds():
    rng = random.Random(0)
    low, high = offset_bounds(0.35, 0.1, 0.9)
    assert (low, high) == (-3, 5)  # 0.35 - 0.3 >= 0 and 0.35 + 0.5 <= 0.9
    offsets = [0] * 6
    for _ in range(500):
        offsets = level_switch(offsets, low, high, rng, switches=rng.randint(1, 3))
        assert sum(offsets) == 0 and all(low <= o <= high for o in offsets)
    assert all(0.0 <= s <= 0.9 + 1e-9 for s in layer_sparsities(0.35, offsets, 0.1))
    assert level_switch([0, 0], 0, 0, rng) == [0, 0]  # nothing can move
    assert level_switch([1, -1], -1, 1, random.Random(3)) == [0, 0]  # the only legal switch
    first = level_switch([0] * 8, -2, 2, random.Random(7), 3)
    assert first == level_switch([0] * 8, -2, 2, random.Random(7), 3)


def test_block_switch_removes_and_restores_within_the_budget():
    """A removed layer sits exactly at sparsity 1 (offset `removed`), the sum of the offsets never changes, kept
    layers stay in their bounds, and both moves happen."""
    rng = random.Random(0)
    base, step = 0.3, 0.1
    removed = round((1 - base) / step)  # 7
    low, high = offset_bounds(base, step, 0.9)  # -3, 6
    offsets, seen = [0] * 8, set()
    for _ in range(400):
        if rng.random() < 0.5:
            offsets = block_switch(offsets, low, high, removed, rng)
        else:
            offsets = kept_level_switch(offsets, low, high, removed, rng)
        assert sum(offsets) == 0
        assert all(low <= o <= high for o in offsets if o != removed)
        seen.add(offsets.count(removed))
        assert offsets.count(removed) < 8
    assert {0, 1, 2} <= seen
    assert all(s in (1.0,) or s <= 0.9 + 1e-9 for s in layer_sparsities(base, offsets, step))
    # no room: the other layers cannot give the 7 steps a removal frees
    assert block_switch([0, 0], -3, 6, removed, random.Random(1)) == [0, 0]
    assert kept_level_switch([7, 1, -1], -1, 1, 7, random.Random(2)) == [7, 0, 0]  # the one legal switch; 7 stays


def test_kl_sum_is_the_kl_divergence():
    torch.manual_seed(0)
    dense, other = torch.randn(5, 11), torch.randn(5, 11)
    reference = reference_log_probs(dense)
    expected = F.kl_div(F.log_softmax(other, -1), reference.float(), log_target=True, reduction="sum")
    assert kl_sum(reference, other) == pytest.approx(float(expected), rel=1e-5)
    assert kl_sum(reference_log_probs(dense), dense) == pytest.approx(0.0, abs=1e-2)


def test_held_out_windows_never_overlap_the_calibration_windows():
    stream = torch.arange(64 * 10)
    calibration = calibration_windows(stream, 6, 10, seed=3)
    held = held_out_windows(stream, 4, 10, seed=3, calibration_samples=6)
    assert held.shape == (4, 10)
    assert not set(calibration[:, 0].tolist()) & set(held[:, 0].tolist())
    with pytest.raises(PrunekitError, match="held-out"):
        held_out_windows(stream, 60, 10, seed=3, calibration_samples=6)


def test_layer_sparsity_prunes_each_layer_to_its_own_sparsity():
    model = tiny_model("llama")
    result = prune(model, stages=[{"method": "magnitude", "layer_sparsity": [0.25, 0.75]}], progress=False)
    for matrix in result.matrices:
        wanted = 0.25 if matrix.name.startswith("layers.0.") else 0.75
        assert matrix.sparsity == pytest.approx(wanted, abs=1 / 64)
    assert StageConfig(method="wanda", layer_sparsity=[0.2, 0.4]).sparsity == pytest.approx(0.3)


@pytest.mark.parametrize("stage, fragment", [
    ({"method": "wanda", "layer_sparsity": [0.5, 0.5], "pattern": "2:4"}, "N:M"),
    ({"method": "magnitude", "layer_sparsity": [0.5, 0.5], "allocation": "global"}, "drop one of them"),
    ({"method": "wanda", "layer_sparsity": [0.2, 0.4], "sparsity": 0.5}, "not the mean"),
    ({"method": "wanda", "layer_sparsity": [0.2, 1.0]}, "less than 1"),
])
def test_bad_layer_sparsity_is_refused(stage, fragment):
    with pytest.raises(PrunekitError, match=fragment):
        StageConfig.parse(stage)


def test_layer_sparsity_needs_one_entry_per_layer():
    with pytest.raises(PrunekitError, match="one sparsity per layer"):
        prune(tiny_model("llama"), stages=[{"method": "magnitude", "layer_sparsity": [0.5, 0.5, 0.5]}],
              progress=False)


def test_layer_pattern_gives_each_layer_its_own_nm_pattern():
    """layer_pattern: layer 0 keeps 1 of every 4 weights, layer 1 stays dense (untouched); the stage's sparsity is
    their mean."""
    model = tiny_model("llama")
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    prune(model, stages=[{"method": "wanda", "layer_pattern": ["1:4", "dense"]}],
          calibration=torch.randint(0, model.config.vocab_size, (2, 16)), progress=False)
    for name, value in model.state_dict().items():
        if name.startswith("model.layers.1.") or not name.endswith("proj.weight"):
            assert torch.equal(value, dense[name]), name
        elif name.startswith("model.layers.0."):
            groups = (value != 0).reshape(value.shape[0], -1, 4).sum(-1)
            assert bool((groups == 1).all()), name
    assert StageConfig(method="wanda", layer_pattern=["1:4", "dense"]).sparsity == pytest.approx(0.375)


def test_nm_allocation_is_the_nearest_to_uniform():
    assert nm_allocation(0.5, 4, 6) == (0.5, [0] * 6)  # 2:4 everywhere
    low, offsets = nm_allocation(0.4, 4, 5)  # 8 of 20 quarter steps: two layers at 1/4, three at 2/4, spread
    assert low == 0.25 and offsets == [0, 1, 0, 1, 1]
    assert sum(layer_sparsities(low, offsets, 0.25)) / 5 == pytest.approx(0.4)


@pytest.mark.parametrize("stage, fragment", [
    ({"method": "wanda", "layer_pattern": ["2:4", "unstructured"]}, "not unstructured"),
    ({"method": "wanda", "layer_pattern": ["2:4", "5:4"]}, "invalid N:M"),
    ({"method": "wanda", "layer_pattern": ["2:4", "2:4"], "pattern": "2:4"}, "drop one of them"),
    ({"method": "wanda", "layer_pattern": ["2:4", "dense"], "layer_sparsity": [0.5, 0.0]}, "drop layer_sparsity"),
    ({"method": "wanda", "layer_pattern": ["2:4", "dense"], "sparsity": 0.5}, "not the mean"),
    ({"method": "sparsegpt", "layer_pattern": ["2:4", "3:6"], "block_size": 64}, "multiple of M=6"),
])
def test_bad_layer_pattern_is_refused(stage, fragment):
    with pytest.raises(PrunekitError, match=fragment):
        StageConfig.parse(stage)


@pytest.mark.parametrize("method, group", [("magnitude", 0), ("wanda", 0), ("magnitude", 4), ("wanda", 4)])
def test_candidates_equal_the_engine_on_dense_inputs(method, group):
    """A candidate's masks come from the dense model's scores: for magnitude that is the engine's prune exactly; for
    Wanda it is exactly the engine's first layer (whose inputs are dense in both). `group` 4: the levels are N:4
    patterns (layer_pattern in the engine)."""
    torch.manual_seed(1)
    windows = torch.randint(3, 96, (4, 16))
    model = tiny_model("llama")
    adapter = adapter_for(model)
    scores = dense_scores(adapter, windows, get_method(method), {}, torch.device("cpu"))
    candidates = Candidates(adapter, ScoreLevels(scores, group), windows[:2], torch.device("cpu"))
    levels = [0.25, 0.75] if group else [0.3, 0.6]
    candidates.apply(levels)
    applied = {k: v.clone() for k, v in model.state_dict().items()}
    candidates.restore()
    stage = {"method": method, "layer_pattern": ["3:4", "1:4"]} if group else \
        {"method": method, "layer_sparsity": levels}
    prune(model, stages=[stage], calibration=windows, progress=False)
    engine = model.state_dict()
    layers = ("layers.0.", "layers.1.") if method == "magnitude" else ("layers.0.",)
    compared = [k for k in engine if any(p in k for p in layers)]
    assert compared and all(torch.equal(applied[k], engine[k]) for k in compared)
    assert candidates.fitness() > 0


def test_weight_levels_are_the_engine_sparsegpt_on_dense_inputs():
    """A weight-updating method's variants are the layer as SparseGPT leaves it on the dense inputs: exactly the
    engine's first layer (dense inputs in both), at every level; levels outside the table are refused."""
    torch.manual_seed(1)
    windows = torch.randint(3, 96, (4, 16))
    model = tiny_model("llama")
    adapter = adapter_for(model)
    method = get_method("sparsegpt")
    options = {"block_size": 128, "damping": 0.01}
    variants = dense_variants(adapter, windows, method, options, [0.0, 0.3, 0.6], torch.device("cpu"))
    assert all(sorted(levels) == [0.3, 0.6] for levels in variants.values())  # 0 is the dense weight itself
    candidates = Candidates(adapter, WeightLevels(variants), windows[:2], torch.device("cpu"))
    for first in (0.3, 0.6):
        candidates.apply([first, 0.0])
        applied = {k: v.clone() for k, v in model.state_dict().items()}
        candidates.restore()
        dense = {k: v.clone() for k, v in model.state_dict().items()}
        prune(model, stages=[{"method": "sparsegpt", "layer_sparsity": [first, 0.3]}], calibration=windows,
              progress=False)
        engine = model.state_dict()
        compared = [k for k in engine if "layers.0." in k]
        assert compared and all(torch.equal(applied[k], engine[k]) for k in compared)
        zeros = sum(int((engine[k] == 0).sum()) for k in compared if k.endswith("proj.weight"))
        assert zeros > 0 and any(not torch.equal(applied[k], dense[k]) for k in compared)
        model.load_state_dict(dense)
    with pytest.raises(KeyError, match="no variant at sparsity 0.45"):
        candidates.apply([0.45, 0.0])


def _sensitive_model_dir(tmp_path, tokenizer, dead_channels: int = 0):
    """Four layers; the last three write almost nothing into the residual stream, so pruning them costs little and
    a search should move sparsity from the first layer to them. `dead_channels`: the last that many MLP channels of
    every block write almost nothing either (a narrower MLP is then nearly free)."""
    config = CONFIGS["llama"]()
    config.num_hidden_layers = 4
    config.pad_token_id = 0
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for layer in model.model.layers[1:]:
            layer.self_attn.o_proj.weight.mul_(0.02)
            layer.mlp.down_proj.weight.mul_(0.02)
        for layer in model.model.layers if dead_channels else ():
            layer.mlp.down_proj.weight[:, -dead_channels:].mul_(1e-3)
    path = tmp_path / (f"dead-{dead_channels}" if dead_channels else "sensitive")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _search_args(model_dir, text_file, out, *extra):
    return ["search", str(model_dir), "--target", "params=0.7", "--out", str(out), "--calib", str(text_file),
            "--calib-samples", "4", "--calib-seq-len", "32", "--fitness-samples", "3", "--eval-text", str(text_file),
            "--ppl-samples", "2", "--ppl-seq-len", "64", "--step", "0.1", "--offspring", "6", *extra]


def _search_with_target(searched, out, target, capsys, monkeypatch, *extra):
    """A CLI search of the sensitive model to `target`: its search.json and stdout (it must succeed)."""
    _, text, model_dir = searched
    args = _search_args(model_dir, text, out, *extra)
    args[args.index("--target") + 1] = target
    code, stdout, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    return json.loads((out / "search.json").read_text()), stdout


def assert_recipe_reproduces(out, again, capsys, monkeypatch):
    """`prunekit prune --recipe OUT/recipe.yaml` gives the searched model bit for bit."""
    code, _, err = run_cli(["prune", "--recipe", str(out / "recipe.yaml"), "--out", str(again)], capsys, monkeypatch)
    assert code == 0, err
    a, b = load_file(out / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def searched(tmp_path_factory, tokenizer):
    """One search of the sensitive model, run through the command line (shared by the tests below)."""
    from conftest import make_text

    root = tmp_path_factory.mktemp("search")
    text = root / "text.txt"
    text.write_text(make_text(20000, seed=1))
    model_dir = _sensitive_model_dir(root, tokenizer)
    return root, text, model_dir


def test_search_beats_uniform_at_the_same_budget(searched, capsys, monkeypatch):
    root, text, model_dir = searched
    out = root / "out"
    code, stdout, err = run_cli(_search_args(model_dir, text, out, "--generations", "12"), capsys, monkeypatch)
    assert code == 0, err
    result = json.loads((out / "search.json").read_text())
    chosen, base = result["layer_sparsity"], result["uniform_sparsity"]
    assert sum(chosen) / len(chosen) == pytest.approx(base)  # the budget holds exactly
    kept = result["parameters"]
    assert abs(kept["searched_kept"] - kept["baseline_kept"]) <= 4 * 64  # row rounding only
    assert kept["searched_kept"] / kept["dense"] == pytest.approx(0.7, abs=0.005)
    assert chosen[0] < base  # the sensitive layer keeps more
    fitness = result["fitness"]
    assert fitness["searched_search"] < fitness["baseline_search"]
    assert fitness["searched_pruned"] < fitness["baseline_pruned"]
    history = [h["fitness"] for h in result["history"]]
    assert history == sorted(history, reverse=True) and len(history) == 12
    assert "searched" in stdout and "layer sparsity" in stdout

    assert_recipe_reproduces(out, root / "again", capsys, monkeypatch)


def test_sparsegpt_search_beats_uniform_sparsegpt(searched, tmp_path, capsys, monkeypatch):
    """The sparsity space with SparseGPT's levels: the budget holds, no layer leaves its --max-steps, the search
    beats uniform SparseGPT of the same budget, and the recipe reproduces the model."""
    root, text, model_dir = searched
    out = tmp_path / "sparsegpt"
    code, _, err = run_cli(_search_args(model_dir, text, out, "--generations", "8", "--method", "sparsegpt",
                                        "--max-steps", "2", "--no-ppl"), capsys, monkeypatch)
    assert code == 0, err
    result = json.loads((out / "search.json").read_text())
    chosen, base = result["layer_sparsity"], result["uniform_sparsity"]
    assert sum(chosen) / len(chosen) == pytest.approx(base)
    assert all(abs(s - base) <= 2 * 0.1 + 1e-9 for s in chosen)
    assert result["levels"]["count"] == 5 and result["levels"]["from"] == "weights pruned per level"
    assert result["baseline"].startswith("uniform sparsegpt")
    fitness = result["fitness"]
    assert fitness["searched_search"] < fitness["baseline_search"]
    assert fitness["searched_pruned"] < fitness["baseline_pruned"]
    assert_recipe_reproduces(out, tmp_path / "again", capsys, monkeypatch)


def test_depth_sparsity_search_removes_a_block_that_writes_little(searched, tmp_path, capsys, monkeypatch):
    """Space depth,sparsity on the sensitive model (blocks 1-3 write almost nothing): the search removes some
    of them and spends what it frees on the other layers, beating uniform sparsity and the sparsity-only search of
    the same settings; the budget holds, the recipe reproduces the model, and stock transformers loads it with
    fewer blocks."""
    from transformers import AutoModelForCausalLM

    flags = ("--max-sparsity", "0.7", "--generations", "10")  # no layer below 0.7 as sparsity: 1 - 0.7 is the gain
    result, stdout = _search_with_target(searched, tmp_path / "ds", "params=0.45", capsys, monkeypatch,
                                         "--space", "depth,sparsity", *flags)
    only, _ = _search_with_target(searched, tmp_path / "s", "params=0.45", capsys, monkeypatch, *flags)
    removed, chosen = result["blocks"]["searched"], result["layer_sparsity"]
    assert removed and set(removed) <= {1, 2, 3} and 0 not in removed
    assert all((s == 1.0) == (i in removed) for i, s in enumerate(chosen))
    steps = (1 - result["uniform_sparsity"]) / result["step"]  # sparsity 1 on the grid: --step 0.1 shrunk
    assert result["step"] <= 0.1 and steps == pytest.approx(round(steps))
    kept = result["parameters"]
    assert kept["searched_kept"] <= kept["baseline_kept"] + 4 * 64  # row rounding; a removed block's norms go too
    assert kept["searched_kept"] / kept["dense"] == pytest.approx(0.45, abs=0.01)
    fitness = result["fitness"]
    assert fitness["searched_pruned"] < fitness["baseline_pruned"]
    assert fitness["searched_pruned"] < only["fitness"]["searched_pruned"] / 2  # 4.1e-5 against 1.2e-4 here
    assert "removed" in stdout
    out = tmp_path / "ds"
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.config.num_hidden_layers == 4 - len(removed)
    assert_recipe_reproduces(out, tmp_path / "again", capsys, monkeypatch)


def test_width_sparsity_search_narrows_the_mlp_where_channels_are_dead(searched, tokenizer, tmp_path, capsys,
                                                                     monkeypatch):
    """--space sparsity,width on a model whose last 48 of 128 MLP channels write almost nothing: every width level
    meets the budget with its own uniform sparsity, narrowing beats uniform sparsity at full width, the search starts
    from the best level and beats it, and the checkpoint is a stock narrower model with the parameters counted and a
    recipe that reproduces it."""
    from transformers import AutoModelForCausalLM

    _, text, _ = searched
    model_dir = _sensitive_model_dir(tmp_path, tokenizer, dead_channels=48)
    out = tmp_path / "sw"
    args = _search_args(model_dir, text, out, "--generations", "8", "--space", "width,sparsity", "--step", "0.05")
    args[args.index("--target") + 1] = "params=0.55"
    code, stdout, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    result = json.loads((out / "search.json").read_text())
    assert result["space"] == "sparsity,width"
    width, dense = result["width"], result["parameters"]["dense"]
    levels = width["levels"]
    assert [lv["channels"] for lv in levels] == [128, 112, 96, 88, 72, 64]  # every 10% in multiples of 8
    assert all(lv["uniform_sparsity"] > 0 and "skipped" not in lv for lv in levels)
    assert all(lv["parameters_kept"] / dense == pytest.approx(0.55, abs=0.005) for lv in levels)  # row rounding
    sparsities = [lv["uniform_sparsity"] for lv in levels]
    assert sparsities == sorted(sparsities, reverse=True)  # narrower: fewer zeros needed
    full, best = levels[0], min(levels, key=lambda lv: lv["fitness_pruned"])
    assert best["channels"] < 128 and best["fitness_pruned"] < full["fitness_pruned"]
    assert width["searched"] == best["channels"] and result["baseline"] == best["name"]
    assert [b["kind"] for b in result["baselines"]] == ["sparsity"] + ["width+sparsity"] * 5
    assert result["uniform_sparsity"] == best["uniform_sparsity"]
    chosen = result["layer_sparsity"]
    assert sum(chosen) / len(chosen) == pytest.approx(best["uniform_sparsity"])
    fitness = result["fitness"]
    assert fitness["searched_search"] < fitness["baseline_search"]
    assert fitness["searched_pruned"] < fitness["baseline_pruned"] == best["fitness_pruned"]
    saved = AutoModelForCausalLM.from_pretrained(out)
    assert saved.config.intermediate_size == width["searched"]
    assert sum(int(p.count_nonzero()) for p in saved.parameters()) == result["parameters"]["searched_kept"]
    assert result["parameters"]["searched_kept"] / dense == pytest.approx(0.55, abs=0.005)
    assert "MLP channels kept" in stdout and "layer sparsity" in stdout and "uniform MLP width" in stdout
    assert_recipe_reproduces(out, tmp_path / "again", capsys, monkeypatch)


def test_every_part_at_once_is_a_stock_model_the_recipe_reproduces(searched, tmp_path, capsys, monkeypatch):
    """--space depth,heads,sparsity,width: every (width, heads) level is tried, the blocks the search removes and the
    heads and channels it keeps are the saved model's, and the budget holds."""
    from transformers import AutoModelForCausalLM

    result, stdout = _search_with_target(searched, tmp_path / "all", "params=0.45", capsys, monkeypatch, "--space",
                                         "width,sparsity,heads,depth", "--max-sparsity", "0.7", "--generations", "4",
                                         "--no-ppl")
    width, blocks = result["width"], result["blocks"]
    assert {(lv["channels"], lv["heads"]) for lv in width["levels"]} == {(c, h) for c in (128, 112, 96, 88, 72, 64)
                                                                          for h in (4, 2)}
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "all")
    assert saved.config.intermediate_size == width["searched"]
    assert saved.config.num_attention_heads == width["searched_heads"]
    assert saved.config.num_hidden_layers == 4 - blocks["removed"]
    assert [s == 1.0 for s in result["layer_sparsity"]] == [i in blocks["searched"] for i in range(4)]
    assert sum(int(p.count_nonzero()) for p in saved.parameters()) == result["parameters"]["searched_kept"]
    assert result["parameters"]["searched_kept"] <= 0.45 * result["parameters"]["dense"] * 1.01
    assert result["fitness"]["searched_search"] <= result["fitness"]["baseline_search"]
    assert "heads kept" in stdout
    assert_recipe_reproduces(tmp_path / "all", tmp_path / "again", capsys, monkeypatch)


def test_nm_search_gives_each_layer_its_own_pattern(searched, tmp_path, capsys, monkeypatch):
    """--pattern 2:4: every layer is dense, 3:4, 2:4 or 1:4; the start and baseline is the nearest to uniform
    (params=0.7 needs 5 of 16 quarter steps: one layer at 2:4, three at 3:4), the mean sparsity stays there, the
    sensitive first layer keeps the most, the search beats the baseline, and every saved layer holds its pattern
    exactly (the recipe reproduces it)."""
    result, stdout = _search_with_target(searched, tmp_path / "nm", "params=0.7", capsys, monkeypatch,
                                         "--pattern", "2:4", "--generations", "8", "--no-ppl")
    patterns, chosen = result["layer_pattern"], result["layer_sparsity"]
    assert result["step"] == 0.25 and set(patterns) <= {"dense", "3:4", "2:4", "1:4"}
    assert result["baseline"] == "nearest-uniform wanda 3:4 + 2:4"
    assert result["uniform_sparsity"] == pytest.approx(5 / 16)
    assert sum(chosen) / 4 == pytest.approx(5 / 16)
    assert chosen[0] == min(chosen) < max(chosen)
    assert result["fitness"]["searched_pruned"] < result["fitness"]["baseline_pruned"]
    saved = load_file(tmp_path / "nm" / "model.safetensors")
    for name, weight in saved.items():
        if ".layers." in name and name.endswith("proj.weight"):
            layer = int(name.split(".layers.")[1].split(".")[0])
            kept = 4 if patterns[layer] == "dense" else int(patterns[layer][0])
            assert bool(((weight != 0).reshape(weight.shape[0], -1, 4).sum(-1) == kept).all()), name
    assert "layer pattern: " + " ".join(patterns) in stdout
    from prunekit.report import load_run

    assert [(p.pattern, p.sparsity) for p in load_run(tmp_path / "nm").points] == [("N:M per layer", 5 / 16)]
    assert_recipe_reproduces(tmp_path / "nm", tmp_path / "again", capsys, monkeypatch)


def test_pareto_front_keeps_the_points_nothing_beats():
    from prunekit.search import front_targets, pareto_front

    # (fraction kept, KL): 0.7 with KL 0.5 is beaten by 0.6 with KL 0.4 (cheaper and better)
    assert pareto_front([(0.6, 0.4), (0.7, 0.5), (0.8, 0.1)], higher_cost_is_cheaper=False) == [0, 2]
    # speed-ups: faster is cheaper; 1.2x with KL 0.3 is beaten by 1.3x with KL 0.2
    assert pareto_front([(1.2, 0.3), (1.3, 0.2), (1.5, 0.9)], higher_cost_is_cheaper=True) == [1, 2]
    assert [str(t) for t in front_targets("decode=1.5x, 1.2")] == ["decode=1.2x", "decode=1.5x"]


def test_a_front_runs_one_search_per_budget(searched, tmp_path, capsys, monkeypatch):
    """--target params=0.8,0.6: one complete search per budget (the same as searching it alone), front.json with
    the Pareto front, and a report that takes the front's directory and shows every budget."""
    root, text, model_dir = searched
    out = tmp_path / "front"
    args = _search_args(model_dir, text, out, "--generations", "3", "--no-ppl")
    args[args.index("--target") + 1] = "params=0.8,0.6"
    code, stdout, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    front = json.loads((out / "front.json").read_text())
    assert front["targets"] == ["params=0.6", "params=0.8"]
    assert [p["folder"] for p in front["points"]] == ["params-0.6", "params-0.8"]
    for point, fraction in zip(front["points"], (0.6, 0.8), strict=True):
        result = json.loads((out / point["folder"] / "search.json").read_text())
        assert result["target"]["value"] == fraction and point["fitness"] == result["fitness"]["searched_pruned"]
        assert point["cost"] == pytest.approx(fraction, abs=0.01)
    fitness = [p["fitness"] for p in front["points"]]
    assert fitness[0] > fitness[1]  # keeping less costs more KL: both points are on the front
    assert front["pareto"] == [0, 1] and "Pareto front" in " ".join(stdout.split())
    alone = tmp_path / "alone"
    args = _search_args(model_dir, text, alone, "--generations", "3", "--no-ppl")
    args[args.index("--target") + 1] = "params=0.6"
    assert run_cli(args, capsys, monkeypatch)[0] == 0
    assert json.loads((alone / "search.json").read_text())["layer_sparsity"] == json.loads(
        (out / "params-0.6" / "search.json").read_text())["layer_sparsity"]
    from prunekit.report import write_report

    html = write_report([out], tmp_path / "report.html").read_text()
    assert "params=0.6" in html and "params=0.8" in html


def test_search_is_deterministic_and_resumes(searched, tmp_path, capsys, monkeypatch):
    root, text, model_dir = searched
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache-a"))
    code, _, err = run_cli(_search_args(model_dir, text, tmp_path / "short", "--generations", "3", "--no-ppl"),
                           capsys, monkeypatch)
    assert code == 0, err
    code, _, err = run_cli(_search_args(model_dir, text, tmp_path / "resumed", "--generations", "6", "--no-ppl"),
                           capsys, monkeypatch)
    assert code == 0, err
    assert "resuming the search at generation 3" in " ".join(err.split())
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache-b"))
    code, _, err = run_cli(_search_args(model_dir, text, tmp_path / "fresh", "--generations", "6", "--no-ppl"),
                           capsys, monkeypatch)
    assert code == 0, err
    resumed = json.loads((tmp_path / "resumed" / "search.json").read_text())
    fresh = json.loads((tmp_path / "fresh" / "search.json").read_text())
    assert resumed["layer_sparsity"] == fresh["layer_sparsity"]
    assert resumed["history"] == fresh["history"]


@pytest.mark.parametrize("flags, fragment", [
    (["--target", "params"], "KEY=VALUE"),
    (["--target", "speed=2"], "unknown --target key"),
    (["--target", "memory=1GB"], "not below the dense model"),
    (["--target", "memory=lots"], "not a size"),
    (["--target", "memory=1kB"], "out of reach by removing blocks"),
    (["--target", "memory=100kB", "--space", "sparsity"], "use --space depth"),
    (["--target", "decode=0.9"], "speed-up above 1"),
    (["--target", "decode=fast"], "not a number"),
    (["--target", "decode=1.3x", "--space", "sparsity"], "use --space depth"),
    (["--target", "params=0.7", "--space", "width"], "unknown search space"),
    (["--target", "params=0.7", "--space", "depth,width", "--min-width", "1"], "min width"),
    (["--target", "params=0.7", "--space", "depth,heads", "--min-heads", "0"], "min heads"),
    (["--target", "params=0.02", "--space", "depth,width"], "give params between"),
    (["--target", "params=0.7", "--space", "depth,width", "--width-method", "wanda"], "width method"),
    (["--target", "params=0.01", "--space", "depth"], "out of reach by removing blocks"),
    (["--target", "params=1.2"], "between 0 and 1"),
    (["--target", "params=0.01"], "out of reach"),
    (["--target", "params=0.7", "--method", "wanda++"], "optimises whole blocks"),
    (["--target", "params=0.7", "--method", "gradient"], "more than one calibration pass"),
    (["--target", "params=0.7", "--method", "nosuch"], "unknown method"),
    (["--target", "params=0.7", "--step", "0"], "step"),
    (["--target", "decode=1.3x", "--space", "depth,sparsity"], "needs structure"),
    (["--target", "decode=1.3x", "--space", "sparsity,width"], "needs structure"),
    (["--target", "params=0.7", "--space", "depth,sparsity", "--pattern", "2:4"], "N:M pattern of its own"),
    (["--target", "params=0.7", "--pattern", "5:4"], "invalid N:M"),
    (["--target", "params=0.7", "--space", "width,sparsity", "--min-width", "1"], "min width"),
    (["--target", "memory=1MB", "--space", "sparsity,depth"], "needs structure"),
    (["--target", "params=0.7", "--recover", "bogus"], "unknown recovery method"),
    (["--target", "params=0.7", "--max-sparsity", "1"], "max sparsity"),
    (["--target", "params=0.7,decode=1.3x"], "of one kind"),
    (["--target", "params=0.7,0.7"], "repeats a budget"),
    (["--target", "params=0.7,1.5"], "between 0 and 1"),
    (["--target", "params=0.6,0.7", "--recover", "lora", "--recover-out", "x"], "drop --recover-out"),
])
def test_bad_searches_are_one_line_errors(tiny_model_dir, tmp_path, capsys, monkeypatch, flags, fragment):
    out = tmp_path / "out"
    code, _, err = run_cli(["search", str(tiny_model_dir), "--out", str(out), *flags], capsys, monkeypatch)
    assert code == 2
    assert_one_line_error(err)
    assert fragment in " ".join(err.split())
    assert not out.exists()


# ---------------------------------------------------------------- depth space and latency targets


def test_cost_model_line_and_block_counts():
    assert fit_line([1, 2, 4], [3.0, 5.0, 9.0]) == pytest.approx((1.0, 2.0))
    with pytest.raises(ValueError):
        fit_line([2, 2], [1.0, 3.0])
    # 10 blocks at 1 s each plus 2 s outside them: 12 s; 1.5x faster is 8 s, 6 blocks
    assert blocks_for_speedup(2.0, 1.0, 10, 1.5) == 6
    assert blocks_for_speedup(2.0, 1.0, 10, 1.2) == 8  # 10 s exactly: the boundary counts
    assert blocks_for_speedup(2.0, 1.0, 10, 10.0) == 0  # 1.2 s is below one block
    assert max_speedup(2.0, 1.0, 10) == pytest.approx(4.0)
    # 100 parameters outside 10 blocks of 90: keeping 60% (600) leaves room for 5 blocks
    assert blocks_for_params(1000, 90, 10, 0.6) == 5
    assert blocks_for_params(1000, 90, 10, 0.1) == 0


def _four_block_model():
    from transformers import AutoModelForCausalLM

    config = CONFIGS["llama"]()
    config.num_hidden_layers = 4
    torch.manual_seed(2)
    return AutoModelForCausalLM.from_config(config).eval()


def test_block_list_removes_exactly_the_listed_blocks():
    model = _four_block_model()
    before = [layer.mlp.up_proj.weight.clone() for layer in model.model.layers]
    prune(model, stages=[{"method": "block-list", "blocks": [2, 0]}], progress=False)
    assert model.config.num_hidden_layers == 2
    kept = zip(model.model.layers, [1, 3], strict=True)
    assert all(torch.equal(layer.mlp.up_proj.weight, before[i]) for layer, i in kept)
    with pytest.raises(PrunekitError, match="do not exist"):
        prune(model, stages=[{"method": "block-list", "blocks": [5]}], progress=False)
    with pytest.raises(PrunekitError, match="give blocks"):
        StructuredStageConfig(method="block-list", size=1)


def test_depth_candidate_is_the_model_without_its_blocks():
    model = _four_block_model()
    adapter = adapter_for(model)
    windows = torch.randint(3, 96, (2, 16))
    space = DepthSpace(adapter, windows, torch.device("cpu"), removed=[1])
    fitness = space.fitness([1, 0, 1, 0])
    assert space.start == [1, 0, 1, 1]
    prune(model, stages=[{"method": "block-list", "blocks": [1, 3]}], progress=False)
    assert space.kl() == pytest.approx(fitness, rel=1e-6)  # the same KL from the model with the blocks removed


def test_depth_search_finds_the_best_blocks_of_a_small_space():
    """Removing 2 of 4 blocks has 6 candidates: the search must end on the one with the least KL."""
    from itertools import combinations

    adapter = adapter_for(_four_block_model())
    windows = torch.randint(3, 96, (3, 16))
    space = DepthSpace(adapter, windows, torch.device("cpu"), removed=[2, 3])
    every = {pair: space.fitness([0 if i in pair else 1 for i in range(4)]) for pair in combinations(range(4), 2)}
    state = evolve(space, EvolutionSettings(generations=8, offspring=4, survivors=2), seed=0)
    assert space.removed(state.genome) == list(min(every, key=every.get))
    assert state.fitness == pytest.approx(min(every.values()))
    assert state.start_fitness == pytest.approx(every[(2, 3)])


def _width_levels(model, windows):
    """The dense blocks (3 kept of 4) and the blocks with half the MLP channels by Wanda-SP (2 kept)."""
    narrowed = copy.deepcopy(model)
    prune(narrowed, stages=[{"method": "wanda-sp", "part": "mlp", "size": 64}], calibration=windows, progress=False)
    adapter = adapter_for(model)
    return [WidthLevel(adapter.mlp_width, list(adapter.layers), 3), WidthLevel(64, list(adapter_for(narrowed).layers),
                                                                              2)]


def test_width_depth_candidate_is_the_engine_output():
    """A candidate of the depth,width space runs the level's blocks without the removed ones: the same KL as the
    model the engine's width stage and block-list give."""
    model = _four_block_model()
    windows = torch.randint(3, 96, (4, 16))
    space = WidthDepthSpace(adapter_for(model), windows[:2], torch.device("cpu"), _width_levels(model, windows),
                            start=[0, 1, 1, 1, 0])
    fitness = space.fitness([1, 1, 0, 1, 0])
    prune(model, stages=[{"method": "wanda-sp", "part": "mlp", "size": 64}, {"method": "block-list", "blocks": [1, 3]}],
          calibration=windows, progress=False)
    assert model.config.intermediate_size == 64 and model.config.num_hidden_layers == 2
    assert space.kl() == pytest.approx(fitness, rel=1e-6)
    with pytest.raises(ValueError, match="number of blocks"):
        WidthDepthSpace(adapter_for(model), windows[:2], torch.device("cpu"), space.levels, start=[1, 1, 1, 1, 0])


def test_width_depth_mutations_keep_each_level_count():
    model = _four_block_model()
    windows = torch.randint(3, 96, (4, 16))
    space = WidthDepthSpace(adapter_for(model), windows[:1], torch.device("cpu"), _width_levels(model, windows),
                            start=[0, 1, 1, 1, 0])
    rng, genome, seen = random.Random(0), space.start, set()
    for _ in range(300):
        genome = space.mutate(genome, rng, rng.randint(1, 3))
        assert sum(genome[1:]) == space.levels[genome[0]].keep
        seen.add((genome[0], tuple(genome[1:])))
    assert {level for level, _ in seen} == {0, 1} and len(seen) == 4 + 6  # every choice of 3 and of 2 blocks


def test_line_neighbours_step_along_one_part():
    """A level's moves: the nearest narrower and wider level in each part with the other part the same (a level
    left out is stepped over); one part alone is the list's previous and next."""
    sizes = [(128, 4), (128, 2), (96, 4), (64, 4), (64, 2)]  # (96, 2) left out
    assert line_neighbours(sizes) == [[1, 2], [0, 4], [0, 3], [2, 4], [1, 3]]
    assert line_neighbours([(128,), (96,), (64,)]) == [[1], [0, 2], [1]]


def test_width_depth_candidate_with_fewer_heads_is_the_engine_output():
    """A level with half the MLP channels and half the query heads (one per key/value head) by Wanda-SP: a
    candidate's KL is that of the engine's output of the same stages and block-list, and the saved shape holds."""
    model = _four_block_model()
    windows = torch.randint(3, 96, (4, 16))
    stages = [{"method": "wanda-sp", "part": "mlp", "size": 64}, {"method": "wanda-sp", "part": "heads", "size": 2}]
    narrowed = copy.deepcopy(model)
    prune(narrowed, stages=stages, calibration=windows, progress=False)
    adapter = adapter_for(model)
    levels = [WidthLevel(128, list(adapter.layers), 3, 4), WidthLevel(64, list(adapter_for(narrowed).layers), 2, 2)]
    space = WidthDepthSpace(adapter, windows[:2], torch.device("cpu"), levels, start=[0, 1, 1, 1, 0])
    fitness = space.fitness([1, 0, 1, 1, 0])
    prune(model, stages=[*stages, {"method": "block-list", "blocks": [0, 3]}], calibration=windows, progress=False)
    assert (model.config.intermediate_size, model.config.num_attention_heads) == (64, 2)
    assert model.config.num_key_value_heads == 2 and model.config.num_hidden_layers == 2
    assert space.kl() == pytest.approx(fitness, rel=1e-6)


def test_latency_model_is_fitted_once_and_cached(monkeypatch):
    calls = []

    def fake_time(adapter, layers, kind, probe, device):
        calls.append(len(layers))
        return 0.002 + 0.001 * len(layers)

    monkeypatch.setattr(latency, "time_layers", fake_time)
    adapter = adapter_for(_four_block_model())
    line, cached = latency.latency_model(adapter, "decode", torch.device("cpu"))
    assert not cached and calls == [1, 2, 3, 4] * 6  # interleaved: a discarded round, then 5
    assert (line.intercept, line.slope) == pytest.approx((0.002, 0.001))
    again, cached = latency.latency_model(adapter, "decode", torch.device("cpu"))
    assert cached and again == line and len(calls) == 24
    refreshed, cached = latency.latency_model(adapter, "decode", torch.device("cpu"), refresh=True)
    assert not cached and len(calls) == 48 and refreshed == line
    monkeypatch.setattr(latency, "time_layers", lambda *_args: 0.01)  # flat: depth costs nothing
    with pytest.raises(PrunekitError, match="does not grow with depth"):
        latency.latency_model(adapter, "prefill", torch.device("cpu"))


def test_latency_plane_in_depth_and_mlp_width(monkeypatch):
    """Timed with every MLP narrowed too: a block costs 0.4 ms plus 0.6 ms at full width, so the plane is fitted
    exactly, kept apart from the depth-only line in the cache, and a width that costs nothing is refused."""
    adapter = adapter_for(_four_block_model())
    full = adapter.mlp_width

    def fake_time(adapter, layers, kind, probe, device):
        return 0.002 + sum(0.0004 + 0.0006 * layer.mlp.down_proj.in_features / full for layer in layers)

    monkeypatch.setattr(latency, "time_layers", fake_time)
    plane, cached = latency.latency_model(adapter, "decode", torch.device("cpu"), widths=(0.75, 0.5))
    assert not cached and plane.widths == [0.75, 0.5] and len(plane.width_seconds) == 2
    assert (plane.intercept, plane.slope, plane.width_slope) == pytest.approx((0.002, 0.001, 0.0006))
    assert plane.seconds_for(4, 0.5) == pytest.approx(0.002 + 4 * 0.0007)
    line, cached = latency.latency_model(adapter, "decode", torch.device("cpu"))
    assert line.width_slope == 0 and line.slope == pytest.approx(0.001)  # the depth-only line, its own entry
    narrowed = latency.narrowed_layers(adapter, 0.5)
    assert [layer.mlp.up_proj.out_features for layer in narrowed] == [round(full / 2)] * 4
    assert adapter.layers[0].mlp.up_proj.out_features == full  # the model itself untouched
    monkeypatch.setattr(latency, "time_layers", lambda _a, layers, *_rest: 0.002 + 0.001 * len(layers))
    with pytest.raises(PrunekitError, match="does not grow with MLP width"):
        latency.latency_model(adapter, "prefill", torch.device("cpu"), widths=(0.5,))


def _timed_by_shape(full_channels, full_heads, head_dim=16):
    """Fake timings: 1 ms outside the blocks, a block 0.3 ms plus 0.3 ms at full MLP width plus 0.4 ms with every
    query head."""
    def fake_time(adapter, layers, kind, probe, device):
        return 0.001 + sum(0.0003 + 0.0003 * layer.mlp.down_proj.in_features / full_channels
                           + 0.0004 * layer.self_attn.o_proj.in_features / (full_heads * head_dim)
                           for layer in layers)
    return fake_time


def test_latency_plane_in_depth_width_and_heads(monkeypatch):
    """Timed with every MLP narrowed and with every attention cut to fewer heads: each part's share is fitted
    exactly, alone or together, each set of probes its own cache entry; heads that cost nothing are refused."""
    adapter = adapter_for(_four_block_model())
    monkeypatch.setattr(latency, "time_layers", _timed_by_shape(adapter.mlp_width, adapter.num_heads))
    both, _ = latency.latency_model(adapter, "decode", torch.device("cpu"), widths=(0.5,), heads=(2,))
    assert (both.intercept, both.slope, both.width_slope, both.head_slope) == pytest.approx(
        (0.001, 0.001, 0.0003, 0.0004))
    assert both.heads == [0.5] and len(both.head_seconds) == 1
    assert both.seconds_for(3, 0.5, 0.5) == pytest.approx(0.001 + 3 * (0.0003 + 0.00015 + 0.0002))
    heads_only, cached = latency.latency_model(adapter, "decode", torch.device("cpu"), heads=(2,))
    assert not cached and heads_only.width_slope == 0 and heads_only.head_slope == pytest.approx(0.0004)
    fewer = latency.fewer_heads_layers(adapter, 2)
    assert [layer.self_attn.q_proj.out_features for layer in fewer] == [2 * 16] * 4
    assert [layer.self_attn.k_proj.out_features for layer in fewer] == [2 * 16] * 4  # GQA: keys and values stay
    assert adapter.layers[0].self_attn.q_proj.out_features == 4 * 16  # the model itself untouched
    monkeypatch.setattr(latency, "time_layers", lambda _a, layers, *_rest: 0.002 + 0.001 * len(layers))
    with pytest.raises(PrunekitError, match="does not grow with attention heads"):
        latency.latency_model(adapter, "prefill", torch.device("cpu"), heads=(2,))


def test_decode_target_search_removes_the_blocks_the_cost_model_allows(searched, tmp_path, capsys, monkeypatch):
    """decode=1.3x on 4 blocks timed at 1 + k ms per token: 5 ms / 1.3 = 3.85 ms leaves 2 blocks. The speed-up check
    after saving really runs (prunekit bench's workers on the saved output); its value is not asserted (timings are
    not, in unit tests), only recorded consistently."""
    root, text, model_dir = searched
    monkeypatch.setattr(latency, "time_layers", lambda _a, layers, *_rest: 0.001 + 0.001 * len(layers))
    out = tmp_path / "decode"
    args = _search_args(model_dir, text, out, "--generations", "4")
    args[args.index("--target") + 1] = "decode=1.3x"
    code, stdout, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    result = json.loads((out / "search.json").read_text())
    assert result["space"] == "depth" and result["blocks"]["removed"] == 2
    assert result["cost"]["predicted"] == pytest.approx(5 / 3)
    measured = result["cost"]["measured"]
    assert measured > 0 and result["cost"]["met"] == (measured >= 1.3 * 0.95)
    assert result["fitness"]["searched_pruned"] <= result["fitness"]["baseline_pruned"] + 1e-9
    assert len(result["blocks"]["searched"]) == 2 and f"measured {measured:.3f}x" in stdout
    from transformers import AutoModelForCausalLM

    from prunekit.report import write_report

    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 2
    html = write_report([out], tmp_path / "report.html").read_text()
    assert "<h2>Budget search</h2>" in html and "decode=1.3x" in html and f"{measured:.3f}" in html
    assert_recipe_reproduces(out, tmp_path / "again", capsys, monkeypatch)


def test_depth_width_search_beats_both_uniform_recipes(searched, tmp_path, capsys, monkeypatch):
    """--space depth,width: the levels, the uniform depth and uniform width baselines of the same budget, a choice
    at least as good as both on the search's KL, a stock checkpoint of that shape with the parameters counted, and
    a recipe that reproduces it."""
    root, text, model_dir = searched
    out = tmp_path / "dw"
    code, stdout, err = run_cli(_search_args(model_dir, text, out, "--generations", "6", "--space", "width,depth"),
                                capsys, monkeypatch)
    assert code == 0, err
    result = json.loads((out / "search.json").read_text())
    assert result["space"] == "depth,width"
    width, blocks, cost = result["width"], result["blocks"], result["cost"]
    levels = width["levels"]
    assert levels[0]["channels"] == width["channels"] == 128 and levels[0]["blocks_kept"] < 4
    uniform = cost["uniform_width_channels"]
    assert levels[-1] == {**levels[-1], "channels": uniform, "blocks_kept": 4}
    assert [b["kind"] for b in result["baselines"]] == ["depth", "width"]
    fitness = result["fitness"]
    assert fitness["searched_search"] <= min(b["fitness_search"] for b in result["baselines"]) + 1e-12
    assert fitness["searched_search"] == pytest.approx(fitness["searched_pruned"], rel=1e-5)
    dense = result["parameters"]["dense"]
    for b in result["baselines"]:
        assert b["parameters_kept"] <= 0.7 * dense
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(out)
    assert saved.config.intermediate_size == width["searched"]
    assert saved.config.num_hidden_layers == 4 - blocks["removed"]
    assert sum(int(p.count_nonzero()) for p in saved.parameters()) == result["parameters"]["searched_kept"]
    assert result["parameters"]["searched_kept"] <= 0.7 * dense
    assert "MLP channels kept" in stdout and "uniform MLP width" in stdout
    assert_recipe_reproduces(out, tmp_path / "again", capsys, monkeypatch)


def test_depth_width_without_a_uniform_recipe_compares_with_the_best_level(searched, tmp_path, capsys, monkeypatch):
    """params=0.3 is out of reach of uniform depth and of uniform width alone: the baseline is the best width level
    with block influence's blocks, and the search starts from it."""
    result, _ = _search_with_target(searched, tmp_path / "dw30", "params=0.3", capsys, monkeypatch,
                                    "--generations", "2", "--space", "depth,width", "--no-ppl")
    assert [b["kind"] for b in result["baselines"]] == ["level"]
    assert all(level["channels"] < 128 for level in result["width"]["levels"])
    assert result["fitness"]["searched_search"] <= result["baselines"][0]["fitness_search"]
    assert result["parameters"]["searched_kept"] <= 0.3 * result["parameters"]["dense"]


def test_depth_width_decode_target_uses_the_latency_plane(searched, tmp_path, capsys, monkeypatch):
    """decode=1.3x with a block timed at 0.4 + 0.6 x width ms and 1 ms outside: every level keeps the blocks the
    plane allows, the chosen model's speed-up is predicted from it (each baseline's too), and the report shows the
    search."""
    full = 128

    def fake_time(adapter, layers, kind, probe, device):
        return 0.001 + sum(0.0004 + 0.0006 * layer.mlp.down_proj.in_features / full for layer in layers)

    monkeypatch.setattr(latency, "time_layers", fake_time)
    out = tmp_path / "dw-decode"
    result, _ = _search_with_target(searched, out, "decode=1.3x", capsys, monkeypatch,
                                    "--generations", "2", "--space", "depth,width", "--no-ppl")
    cost = result["cost"]

    def seconds(blocks, channels):
        return 0.001 + blocks * (0.0004 + 0.0006 * channels / full)

    budget = seconds(4, full) / 1.3
    for level in result["width"]["levels"]:
        allowed = max(k for k in range(5) if seconds(k, level["channels"]) <= budget + 1e-12)
        assert level["blocks_kept"] == min(allowed, 3 if level["channels"] == full else 4)
    kept = 4 - result["blocks"]["removed"]
    assert cost["predicted"] == pytest.approx(seconds(4, full) / seconds(kept, result["width"]["searched"]))
    assert all(b["predicted"] >= 1.3 - 1e-9 for b in result["baselines"])
    assert cost["baseline_predicted"] in [b["predicted"] for b in result["baselines"]]
    assert "measured" in cost
    from prunekit.report import write_report

    html = write_report([out], tmp_path / "report.html").read_text()
    assert "<h2>Budget search</h2>" in html and "depth,width" in html


def test_depth_heads_width_search_narrows_both_parts(searched, tmp_path, capsys, monkeypatch):
    """--space depth,heads,width: every combination of MLP width and head levels (a dominated one left out), the
    uniform baselines of the same budget, a choice at least as good on the search's KL, a stock checkpoint of that
    shape with the parameters counted, and a recipe that reproduces it."""
    out = tmp_path / "dhw"
    result, stdout = _search_with_target(searched, out, "params=0.7", capsys, monkeypatch, "--generations", "6",
                                         "--space", "width,heads,depth")
    assert result["space"] == "depth,heads,width"
    width, blocks = result["width"], result["blocks"]
    pairs = [(level["channels"], level["heads"]) for level in width["levels"]]
    assert width["heads"] == 4 and {h for _, h in pairs} == {4, 2} and pairs == sorted(pairs, reverse=True)
    for level in width["levels"]:  # no level keeps as few blocks as one wider in one part and equal in the other
        assert not any(other["blocks_kept"] >= level["blocks_kept"] and other is not level
                       and ((other["channels"] > level["channels"] and other["heads"] == level["heads"])
                            or (other["channels"] == level["channels"] and other["heads"] > level["heads"]))
                       for other in width["levels"])
    assert {"depth", "width"} <= {b["kind"] for b in result["baselines"]}
    fitness = result["fitness"]
    assert fitness["searched_search"] <= min(b["fitness_search"] for b in result["baselines"]) + 1e-12
    assert fitness["searched_search"] == pytest.approx(fitness["searched_pruned"], rel=1e-5)
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(out)
    assert saved.config.intermediate_size == width["searched"]
    assert saved.config.num_attention_heads == width["searched_heads"]
    assert saved.config.num_hidden_layers == 4 - blocks["removed"]
    assert sum(int(p.count_nonzero()) for p in saved.parameters()) == result["parameters"]["searched_kept"]
    assert result["parameters"]["searched_kept"] <= 0.7 * result["parameters"]["dense"]
    assert f"heads kept: {width['searched_heads']} of 4" in stdout
    assert_recipe_reproduces(out, tmp_path / "again", capsys, monkeypatch)


def test_depth_heads_decode_target_uses_the_head_plane(searched, tmp_path, capsys, monkeypatch):
    """decode=1.3x with heads in the plane: each level keeps the blocks the plane allows at its head count, and the
    chosen model's speed-up is predicted from it."""
    monkeypatch.setattr(latency, "time_layers", _timed_by_shape(128, 4))
    result, _ = _search_with_target(searched, tmp_path / "dh", "decode=1.3x", capsys, monkeypatch,
                                    "--generations", "2", "--space", "depth,heads", "--no-ppl")

    def seconds(blocks, heads):
        return 0.001 + blocks * (0.0006 + 0.0004 * heads / 4)

    budget = seconds(4, 4) / 1.3
    levels = result["width"]["levels"]
    assert [(level["channels"], level["heads"]) for level in levels] == [(128, 4), (128, 2)]
    for level in levels:
        allowed = max(k for k in range(5) if seconds(k, level["heads"]) <= budget + 1e-12)
        assert level["blocks_kept"] == min(allowed, 3 if level["heads"] == 4 else 4)
    kept = 4 - result["blocks"]["removed"]
    searched_heads = result["width"]["searched_heads"]
    assert result["cost"]["predicted"] == pytest.approx(seconds(4, 4) / seconds(kept, searched_heads))


def test_mixture_of_experts_searches_heads_but_not_mlp_width(searched, tokenizer, tmp_path, capsys, monkeypatch):
    """Routed experts have no MLP width to cut: depth,width is a one-line error that names the spaces that work,
    and depth,heads prunes the attention of the MoE model, which reloads with the heads it searched."""
    _, text, _ = searched
    model_dir = tmp_path / "moe"
    tiny_model("qwen2_moe").save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    args = _search_args(model_dir, text, tmp_path / "dw", "--generations", "1", "--space", "depth,width", "--no-ppl")
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 2 and "routed experts" in err and "depth,heads" in err and not (tmp_path / "dw").exists()
    assert_one_line_error(err)
    out = tmp_path / "dh"
    args = _search_args(model_dir, text, out, "--generations", "2", "--space", "depth,heads", "--no-ppl")
    args[args.index("--target") + 1] = "params=0.95"  # both blocks with half the heads (0.94), or one block
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    result = json.loads((out / "search.json").read_text())
    assert [(level["heads"], level["blocks_kept"]) for level in result["width"]["levels"]] == [(4, 1), (2, 2)]
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(out)
    assert saved.config.num_attention_heads == result["width"]["searched_heads"]
    assert saved.config.num_hidden_layers == 2 - result["blocks"]["removed"]
    assert sum(int(p.count_nonzero()) for p in saved.parameters()) == result["parameters"]["searched_kept"]


def test_search_can_recover_the_chosen_model(searched, tmp_path, capsys, monkeypatch):
    root, text, model_dir = searched
    out = tmp_path / "chosen"
    args = _search_args(model_dir, text, out, "--generations", "1", "--recover", "lora", "--recover-steps", "2")
    code, stdout, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    recovered = tmp_path / "chosen-lora"
    result = json.loads((out / "search.json").read_text())
    assert result["recovered"]["path"] == str(recovered) and result["recovered"]["steps"] == 2
    assert set(result["recovered"]["perplexity"]) == {"before", "after"}
    assert result["recovered"]["perplexity"]["before"] == pytest.approx(result["perplexity"]["searched"], rel=1e-4)
    chosen, tuned = load_file(out / "model.safetensors"), load_file(recovered / "model.safetensors")
    changed = [k for k in chosen if not torch.equal(chosen[k], tuned[k])]
    assert changed  # fine-tuned ...
    assert all(torch.equal(tuned[k][chosen[k] == 0], chosen[k][chosen[k] == 0]) for k in chosen)  # ... zeros kept
    assert "recovered (lora, 2 steps)" in " ".join(stdout.split())


def test_sizes_and_targets_parse():
    assert budget.parse_size("1.5GB") == 1.5e9 and budget.parse_size("800MiB") == 800 * 2**20
    assert budget.parse_size("5e8") == 5e8
    assert str(budget.parse_target("memory=1.2GB")) == "memory=1.2GB"
    assert budget.parse_target(0.75) == budget.Target("params", 0.75)
    assert budget.parse_target("decode=1.3x") == budget.parse_target("DECODE=1.3")


def test_memory_target_keeps_the_most_blocks_that_fit(searched, tmp_path, capsys, monkeypatch):
    root, text, model_dir = searched
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    dense = budget.weight_bytes(model)
    per_block = sum(p.numel() * p.element_size() for p in model.model.layers[0].parameters())
    limit = dense - 1.5 * per_block  # one block is not enough, two are
    out = tmp_path / "memory"
    args = _search_args(model_dir, text, out, "--generations", "2", "--no-ppl")
    args[args.index("--target") + 1] = f"memory={limit:.0f}B"
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    result = json.loads((out / "search.json").read_text())
    assert result["space"] == "depth" and result["blocks"]["removed"] == 2
    assert result["cost"]["bytes_kept"] == dense - 2 * per_block <= limit
    assert budget.weight_bytes(AutoModelForCausalLM.from_pretrained(out)) == dense - 2 * per_block
