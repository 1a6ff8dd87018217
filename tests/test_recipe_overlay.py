"""Command-line flags laid over recipes (prunekit.recipe: overlay, overlay_stage, recipe_from_flags)."""

import textwrap

import pytest
from test_cli import run_cli

from prunekit.errors import PrunekitError
from prunekit.recipe import (
    DEFAULT_METHOD,
    Recipe,
    overlay,
    overlay_stage,
    parse_floats,
    recipe_from_flags,
    split_list,
)


def test_split_list_and_parse_floats():
    assert split_list(" mlp.*, self_attn.q_proj,,") == ["mlp.*", "self_attn.q_proj"]
    assert split_list("") == []
    assert parse_floats("0.3, 0.5,0.7", "--sparsity") == [0.3, 0.5, 0.7]
    with pytest.raises(PrunekitError) as info:
        parse_floats("0.3,half", "--sparsity")
    assert str(info.value) == "--sparsity must be comma-separated numbers, e.g. 0.3,0.5,0.7; got '0.3,half'"


def test_overlay_sets_only_the_given_values():
    data = {"calibration": {"source": "a.txt", "samples": 8}}
    assert overlay(data, "calibration", samples=4, seq_len=None) is data
    assert data == {"calibration": {"source": "a.txt", "samples": 4}}
    overlay(data, "evaluation", ppl=None, dense=None)
    assert "evaluation" not in data  # nothing given: the recipe's defaults still apply
    overlay(data, "evaluation", ppl=False)
    assert data["evaluation"] == {"ppl": False}


def test_overlay_stage_defaults_to_wanda_and_refuses_to_guess_among_stages():
    assert overlay_stage({}) == {"stages": [{"method": DEFAULT_METHOD}]}
    assert overlay_stage({"stages": [{"method": "magnitude", "sparsity": 0.3}]}, sparsity=0.6, pattern=None) == {
        "stages": [{"method": "magnitude", "sparsity": 0.6}]}
    two = {"stages": [{"method": "wanda"}, {"method": "magnitude"}]}
    assert overlay_stage(dict(two), method=None) == two
    with pytest.raises(PrunekitError, match="several stages"):
        overlay_stage(dict(two), sparsity=0.5)


def test_recipe_from_flags_without_a_file():
    recipe = recipe_from_flags(
        model="smollm2-135m", seed=5, device="cpu", stream=True,
        stage={"method": "magnitude", "sparsity": 0.4, "targets": ["mlp.*"], "pattern": None},
        calibration={"samples": 4, "seq_len": None}, evaluation={"ppl": False, "samples": None},
    )
    assert isinstance(recipe, Recipe)
    assert (recipe.model, recipe.seed, recipe.device, recipe.dtype, recipe.stream) == (
        "smollm2-135m", 5, "cpu", "auto", True)
    stage = recipe.stages[0]
    assert (stage.method, stage.sparsity, stage.targets, stage.pattern) == ("magnitude", 0.4, ["mlp.*"], "unstructured")
    assert (recipe.calibration.samples, recipe.calibration.seq_len) == (4, 512)
    assert recipe.evaluation.ppl is False and recipe.evaluation.samples == 16
    with pytest.raises(PrunekitError) as info:
        recipe_from_flags()
    assert str(info.value) == "name a MODEL to prune (see `prunekit models`) or pass --recipe"


def test_flags_win_over_the_recipe_file_and_switches_only_turn_on(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent("""
        model: from-the-file
        seed: 3
        calibration: {source: a.txt, samples: 8}
        stages:
          - {method: magnitude, sparsity: 0.25}
    """))
    recipe = recipe_from_flags(path, seed=9, stage={"sparsity": 0.5}, calibration={"seq_len": 64})
    assert (recipe.model, recipe.seed, recipe.stream, recipe.trust_remote_code) == ("from-the-file", 9, False, False)
    assert (recipe.stages[0].method, recipe.stages[0].sparsity) == ("magnitude", 0.5)
    assert (recipe.calibration.source, recipe.calibration.samples, recipe.calibration.seq_len) == ("a.txt", 8, 64)
    assert recipe_from_flags(path, "other-model").model == "other-model"
    path.write_text("model: m\ntrust_remote_code: true\nstages: [{method: wanda}]\n")
    with pytest.raises(PrunekitError, match="only the command line can switch on"):
        recipe_from_flags(path)
    assert recipe_from_flags(path, trust_remote_code=True).trust_remote_code is True


def test_the_prune_command_runs_the_recipe_recipe_from_flags_builds(tmp_path, capsys, monkeypatch):
    import prunekit.api

    handed = []

    def capture(recipe, out, overwrite=False):
        handed.append(recipe)
        raise PrunekitError("captured")

    monkeypatch.setattr(prunekit.api, "run", capture)
    code, _, err = run_cli(["prune", "some-model", "--out", str(tmp_path / "o"), "--method", "sparsegpt",
                            "--sparsity", "0.6", "--targets", "mlp.*, self_attn.q_proj", "--calib-samples", "4",
                            "--text-column", "body", "--no-dense-eval", "--seed", "2"], capsys, monkeypatch)
    assert code == 2 and "captured" in err
    assert handed == [recipe_from_flags(
        None, "some-model", seed=2,
        stage={"method": "sparsegpt", "sparsity": 0.6, "targets": ["mlp.*", "self_attn.q_proj"]},
        calibration={"samples": 4, "text_column": "body"}, evaluation={"text_column": "body", "dense": False},
    )]
