"""The newer one-shot methods: RIA with channel permutation, DSnoT, ALPS, Wanda++ (issue 18).

Each is checked on small random layers with correlated inputs (X = Z A with a random mixing A, so the Hessian is far
from diagonal) for the property that defines it, then end to end through the command line."""

import json

import pytest
import torch
from conftest import tiny_model
from test_cli import assert_one_line_error, run_cli, small_run

from prunekit.api import prune
from prunekit.engine.layerwise import apply_mlp_permutation
from prunekit.errors import PrunekitError
from prunekit.methods import get_method
from prunekit.methods.alps import alps
from prunekit.methods.dsnot import dsnot, reconstruction_error
from prunekit.methods.patterns import SparsityPattern
from prunekit.methods.permutation import channel_permutation, kept_score
from prunekit.methods.ria import ria_scores
from prunekit.models.adapters import adapter_for
from prunekit.models.adapters.base import submodule
from prunekit.recipe import StageConfig
from prunekit.sweep import SweepConfig, point_name

UNSTRUCTURED, TWO_FOUR = SparsityPattern(), SparsityPattern(2, 4)


def correlated(tokens: int = 512, features: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=g) / features**0.5
    scales = torch.logspace(-1, 1, features)[torch.randperm(features, generator=g)]
    return (torch.randn(tokens, features, generator=g) @ mixing) * scales


def layer_weight(rows: int = 48, cols: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def error(x: torch.Tensor, dense: torch.Tensor, new: torch.Tensor) -> float:
    return torch.linalg.norm(x.double() @ dense.double().T - x.double() @ new.double().T).item() ** 2


def pruned_weight(weight: torch.Tensor, pruned) -> torch.Tensor:
    return pruned.weight if pruned.weight is not None else weight * pruned.keep


def base_prune(name: str, weight: torch.Tensor, x: torch.Tensor, sparsity: float, pattern: SparsityPattern):
    norms, hessian = {"input_norms": x.square().sum(0)}, {"hessian": x.T @ x}
    statistics = {"magnitude": {}, "wanda": norms, "ria": norms, "sparsegpt": hessian, "alps": hessian}[name]
    options = {"block_size": 16} if name == "sparsegpt" else {}
    return get_method(name).prune(weight, statistics, sparsity, pattern, **options)


# RIA


def test_ria_score_is_the_formula_on_a_hand_made_example():
    weight = torch.tensor([[1.0, -2.0, 0.0], [3.0, 1.0, -4.0]])
    norms = torch.tensor([4.0, 9.0, 16.0])  # sums of squares: ||X_j||_2 = 2, 3, 4
    rows, cols = [3.0, 8.0], [4.0, 3.0, 4.0]  # sum |W| over each row (inputs) and each column (outputs)
    expected = torch.tensor([[(abs(weight[i, j].item()) / rows[i] + abs(weight[i, j].item()) / cols[j])
                              * [2.0, 3.0, 4.0][j] ** 0.5 for j in range(3)] for i in range(2)])
    assert torch.allclose(ria_scores(weight, norms), expected, rtol=1e-6, atol=0)
    assert torch.allclose(ria_scores(weight, norms, a=1.0), expected * torch.tensor([2.0, 3.0, 4.0]).sqrt(),
                          rtol=1e-6)
    with pytest.raises(PrunekitError, match="exponent"):
        get_method("ria").check_parameters({"a": -1.0})


def test_ria_keeps_the_exact_sparsity_and_nm():
    x, weight = correlated(), layer_weight()
    assert (base_prune("ria", weight, x, 0.5, TWO_FOUR).keep.view(48, -1, 4).sum(-1) == 2).all()
    assert (base_prune("ria", weight, x, 0.7, UNSTRUCTURED).keep.sum(1) == 19).all()


# Channel permutation


@pytest.mark.parametrize("pattern", [TWO_FOUR, SparsityPattern(4, 8)])
def test_permutation_keeps_at_least_the_stored_orders_score(pattern):
    x, weight = correlated(features=128), layer_weight(32, 128)
    scores = ria_scores(weight, x.square().sum(0))
    perm = channel_permutation(scores, pattern.n, pattern.m)
    assert sorted(perm.tolist()) == list(range(128))
    assert kept_score(scores[:, perm], pattern.n, pattern.m) >= kept_score(scores, pattern.n, pattern.m)
    # a layout whose stored order is bad: important channels crowded into the same groups
    crowded = scores[:, scores.sum(0).argsort(descending=True)]
    perm = channel_permutation(crowded, pattern.n, pattern.m)
    assert kept_score(crowded[:, perm], pattern.n, pattern.m) > 1.01 * kept_score(crowded, pattern.n, pattern.m)


@pytest.mark.parametrize("family", ["llama", "phi3", "gpt2"])  # separate gate/up, fused gate_up, Conv1D
def test_permutation_keeps_the_unpruned_models_function(family):
    model = tiny_model(family)
    ids = torch.randint(3, 96, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(ids).logits
        adapter = adapter_for(model)
        for i, layer in enumerate(adapter.layers):
            down = submodule(layer, adapter.mlp.output)
            old = down.weight.detach().clone()
            apply_mlp_permutation(adapter, layer, torch.randperm(128, generator=torch.Generator().manual_seed(i)))
            assert not torch.equal(old, down.weight)
        after = model(ids).logits
    assert torch.allclose(before, after, atol=1e-5, rtol=1e-5)


# DSnoT


@pytest.mark.parametrize("base", ["magnitude", "wanda", "sparsegpt", "ria"])
@pytest.mark.parametrize("pattern,sparsity", [(UNSTRUCTURED, 0.6), (UNSTRUCTURED, 0.7), (TWO_FOUR, 0.5)])
def test_dsnot_never_raises_the_reconstruction_error_and_keeps_the_pattern(base, pattern, sparsity):
    x, weight = correlated(), layer_weight()
    hessian = x.T @ x
    pruned = base_prune(base, weight, x, sparsity, pattern)
    before = error(x, weight, pruned_weight(weight, pruned))
    previous = before
    for steps in (1, 5, 50):  # more cycles never hurt either
        refined = dsnot(weight, pruned, hessian, pattern, steps)
        new = pruned_weight(weight, refined)
        after = error(x, weight, new)
        assert after <= previous * (1 + 1e-9)
        previous = after
        assert (new[~refined.keep] == 0).all()
        assert torch.equal(refined.keep.sum(1), pruned.keep.sum(1))  # exact per-row sparsity
        if pattern.is_nm:
            assert (refined.keep.view(48, -1, 4).sum(-1) == 2).all()
    assert abs(reconstruction_error(weight, pruned_weight(weight, refined), hessian) - after) <= 1e-6 * after
    if base == "magnitude":
        assert after < 0.5 * before  # magnitude ignores the inputs: plenty to gain


# ALPS


@pytest.mark.parametrize("pattern,sparsity", [(UNSTRUCTURED, 0.7), (TWO_FOUR, 0.5)])
def test_alps_reconstructs_better_than_sparsegpt(pattern, sparsity):
    x, weight = correlated(), layer_weight()
    errors = {}
    for name in ("wanda", "sparsegpt", "alps"):
        pruned = base_prune(name, weight, x, sparsity, pattern)
        new = pruned_weight(weight, pruned)
        assert (new[~pruned.keep] == 0).all()
        errors[name] = error(x, weight, new)
        if name == "alps":
            kept = pruned.keep.view(48, -1, 4).sum(-1) == 2 if pattern.is_nm else pruned.keep.sum(1) == 19
            assert kept.all()
    assert errors["alps"] < errors["sparsegpt"] < errors["wanda"], errors


def test_alps_stays_finite_on_an_ill_conditioned_hessian():
    x = correlated(tokens=8, features=64)  # rank 8 < 64
    x[:, 3] = 0  # an input that never fires
    weight = layer_weight()
    for pattern, sparsity in ((UNSTRUCTURED, 0.7), (TWO_FOUR, 0.5)):
        for damping in (1e-10, 0.01):
            pruned = alps(weight, x.T @ x, sparsity, pattern, damping=damping)
            assert torch.isfinite(pruned.weight).all() and (pruned.weight[:, 3] == 0).all()
    huge = alps(weight, (x.T @ x) * 1e30, 0.5, UNSTRUCTURED)
    assert torch.isfinite(huge.weight).all()
    with pytest.raises(PrunekitError, match="rho0"):
        alps(weight, x.T @ x, 0.5, UNSTRUCTURED, rho0=0.0)
    with pytest.raises(PrunekitError, match="rho0"):
        get_method("alps").check_parameters({"rho0": -1.0})


# Wanda++


def _block_error(model: torch.nn.Module, dense: torch.nn.Module, ids: torch.Tensor) -> float:
    with torch.no_grad():
        mine = model(ids, output_hidden_states=True).hidden_states[1]
        theirs = dense(ids, output_hidden_states=True).hidden_states[1]
    return float((mine - theirs).square().mean())


def test_wanda_pp_block_output_error_below_wandas():
    ids = torch.randint(3, 96, (16, 32), generator=torch.Generator().manual_seed(0))
    dense = tiny_model("llama")
    errors, notes = {}, []
    for method, parameters in (("wanda", {}), ("wanda++", {"lr": 1e-4, "steps": 20})):
        model = tiny_model("llama")
        result = prune(model, stages=[{"method": method, "sparsity": 0.5, "layers": [0], "parameters": parameters}],
                       calibration=ids, device="cpu", progress=False, batch_size=4)
        errors[method] = _block_error(model, dense, ids)
        notes += [n for m in result.matrices for n in m.notes]
    assert errors["wanda++"] < errors["wanda"], errors
    assert any(n.startswith("regional optimisation: block output MSE") for n in notes), notes


# Recipes and sweeps


def test_stage_settings_and_sweep_names():
    stage = StageConfig.parse({"method": "sparsegpt", "sparsity": 0.6, "refine": "dsnot", "refine_steps": 10})
    assert stage.to_stage().refine == "dsnot" and stage.to_stage().refine_steps == 10
    assert "hessian" in stage.to_stage().needs
    assert StageConfig.parse({"method": "ria", "pattern": "2:4", "permute": True}).to_stage().permute
    for bad, fragment in (({"method": "ria", "sparsity": 0.5, "permute": True}, "N:M"),
                          ({"method": "wanda", "refine_steps": 5}, "refine"),
                          ({"method": "wanda", "refine": "other"}, "refine"),
                          ({"method": "alps", "parameters": {"rho0": 0}}, "rho0")):
        with pytest.raises(PrunekitError, match=fragment):
            StageConfig.parse(bad)
    config = SweepConfig(model="x", methods=["wanda+dsnot", "ria+permute", "wanda++", "wanda+++dsnot"],
                         sparsities=[0.5], patterns=["unstructured", "2:4"])
    names = [point_name(s) for s in config.stages()]
    assert names == ["wanda+dsnot-0.5", "wanda+dsnot-2of4-0.5", "ria+permute-2of4-0.5", "wanda++-0.5",
                     "wanda++-2of4-0.5", "wanda+++dsnot-0.5", "wanda+++dsnot-2of4-0.5"]
    with pytest.raises(PrunekitError, match="N:M"):
        SweepConfig(model="x", methods=["ria+permute"], sparsities=[0.5]).stages()


# Command line


def test_cli_one_shot_methods_end_to_end(tiny_model_dir, text_file, tmp_path, capsys, monkeypatch):
    from transformers import AutoModelForCausalLM

    runs = {"ria-permute": ["--method", "ria", "--pattern", "2:4", "--permute"],
            "alps-dsnot": ["--method", "alps", "--sparsity", "0.7", "--refine", "dsnot", "--refine-steps", "5",
                           "--param", "rho0=0.2"],
            "wandapp": ["--method", "wanda++", "--sparsity", "0.5", "--param", "steps=2"]}
    for name, flags in runs.items():
        out = tmp_path / name
        code, _, err = run_cli([*small_run(tiny_model_dir, text_file, out), *flags, "--no-dense-eval"], capsys,
                               monkeypatch)
        assert code == 0, err
        report = json.loads((out / "prunekit.json").read_text())
        model = AutoModelForCausalLM.from_pretrained(out)
        down = model.model.layers[0].mlp.down_proj.weight
        if name == "ria-permute":
            assert report["recipe"]["stages"][0]["permute"] is True
            assert ((down != 0).view(down.shape[0], -1, 4).sum(-1) == 2).all()  # 2:4 in the stored order
            notes = [n for m in report["matrices"] for n in m.get("notes", [])]
            assert any("channel permutation" in n for n in notes), notes
        elif name == "alps-dsnot":
            assert report["recipe"]["stages"][0]["refine"] == "dsnot"
            assert report["recipe"]["stages"][0]["parameters"] == {"rho0": 0.2}
            assert abs((down == 0).float().mean().item() - 0.7) < 0.01
        else:
            assert (down == 0).float().mean().item() == 0.5


@pytest.mark.parametrize("flags,fragment", [
    (["--method", "ria", "--sparsity", "0.5", "--permute"], "N:M"),
    (["--method", "block-influence", "--size", "1", "--refine", "dsnot"], "structured method"),
    (["--method", "alps", "--param", "rho0=0"], "rho0"),
    (["--method", "alps", "--param", "rho0=-0.5"], "rho0"),
    (["--method", "wanda", "--pattern", "2:4", "--permute", "--targets", "self_attn.*"], "down_proj"),
])
def test_cli_bad_one_shot_input_is_one_line_and_writes_nothing(tiny_model_dir, text_file, tmp_path, capsys,
                                                               monkeypatch, flags, fragment):
    out = tmp_path / "never"
    code, _, err = run_cli([*small_run(tiny_model_dir, text_file, out), *flags], capsys, monkeypatch)
    assert code == 2 and fragment in err, err
    assert_one_line_error(err)
    assert not out.exists() and not list(tmp_path.glob(".never*"))


def test_cli_wanda_pp_without_a_differentiable_path(tiny_model_dir, text_file, tmp_path, capsys, monkeypatch):
    from transformers.models.llama import modeling_llama

    forward = modeling_llama.LlamaMLP.forward
    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", lambda self, x: forward(self, x).detach())
    out = tmp_path / "never"
    code, _, err = run_cli([*small_run(tiny_model_dir, text_file, out), "--method", "wanda++"], capsys, monkeypatch)
    assert code == 2 and "differentiable" in err, err
    assert_one_line_error(err)
    assert not out.exists() and not list(tmp_path.glob(".never*"))


def test_cli_sweep_runs_refined_and_permuted_points(tiny_model_dir, text_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "sweep"
    code, stdout, err = run_cli(
        ["sweep", str(tiny_model_dir), "--out", str(out), "--methods", "wanda+dsnot,ria+permute,alps",
         "--sparsity", "0.6", "--pattern", "unstructured,2:4", "--calib", str(text_file), "--calib-samples", "4",
         "--calib-seq-len", "32", "--eval-text", str(text_file), "--ppl-samples", "2", "--ppl-seq-len", "64"],
        capsys, monkeypatch)
    assert code == 0, err
    result = json.loads((out / "sweep.json").read_text())
    assert sorted((p["method"], p["pattern"]) for p in result["points"]) == [
        ("alps", "2:4"), ("alps", "unstructured"), ("ria+permute", "2:4"), ("wanda+dsnot", "2:4"),
        ("wanda+dsnot", "unstructured")]
    for point in result["points"]:
        assert point["decoder_linear_sparsity"] == pytest.approx(point["sparsity"], abs=0.02)
        assert point["perplexity"] > 1
