"""prunekit.data.score / select: the Python API `prunekit data prune` calls, on a small slice of digits."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from test_cli import assert_one_line_error, run_cli

import prunekit.data
from prunekit.data import DATA_SCORES, load_dataset_spec, score, score_names, select
from prunekit.data import scores as formulas
from prunekit.data.dynamics import TrainingDynamics
from prunekit.data.experiment import DYNAMICS_SCORES, SCORES, SelectionMethod
from prunekit.data.registry import TRAINING_DYNAMICS
from prunekit.data.sources import digits
from prunekit.data.train import TrainConfig
from prunekit.errors import PrunekitError

KNOWN = "el2n, forgetting, aum, entropy, prototype or random"


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory):
    """The first 240 digits as a .npz, a dataset the CLI and the API load the same way."""
    data = digits().subset(torch.arange(240))
    path = tmp_path_factory.mktemp("data") / "digits240.npz"
    np.savez(path, x=data.inputs.numpy(), y=data.labels.numpy(), ids=np.array(data.ids))
    return path


@pytest.mark.parametrize(
    "flags,name,training,selection",
    [
        (["--score", "el2n", "--strategy", "ccs", "--keep", "0.3"], "el2n", True, {"keep": 0.3, "strategy": "ccs"}),
        (["--score", "random", "--keep", "0.5", "--seed", "7"], "random", False,
         {"keep": 0.5, "strategy": "hardest", "seed": 7}),
        (["--score", "prototype", "--keep", "0.4", "--strategy", "easiest", "--class-balanced"], "prototype", False,
         {"keep": 0.4, "strategy": "easiest", "class_balanced": True}),
    ],
)
def test_score_and_select_choose_what_the_cli_chooses(flags, name, training, selection, digits_npz, tmp_path,
                                                      capsys, monkeypatch):
    out = tmp_path / "cli"
    code, _, err = run_cli(["data", "prune", str(digits_npz), *flags, "--epochs", "1", "--runs", "1", "--out",
                            str(out)], capsys, monkeypatch)
    assert code == 0, err
    written = pq.read_table(out / "scores.parquet").to_pydict()

    data = load_dataset_spec(str(digits_npz))
    seed = selection.get("seed", 0)
    values = score(data, name, seed=seed, train=TrainConfig(epochs=1) if training else None, runs=1,
                   say=lambda _: None)
    kept = select(data, values, **selection)
    assert values.dtype == torch.float64 and values.shape == (len(data),)
    assert values.tolist() == written["score"]
    assert kept.tolist() == [i for i, k in enumerate(written["kept"]) if k]
    assert written["id"] == data.ids


def test_unknown_score_is_one_line_naming_the_known_ones(digits_npz, tmp_path, capsys, monkeypatch):
    data = load_dataset_spec(str(digits_npz))
    with pytest.raises(PrunekitError) as info:
        score(data, "grandd")
    assert str(info.value) == f"unknown score 'grandd': use {KNOWN}"
    code, _, err = run_cli(["data", "prune", str(digits_npz), "--score", "grandd", "--out", str(tmp_path / "o")],
                           capsys, monkeypatch)
    assert code == 2 and f"use {KNOWN}" in err
    assert_one_line_error(err)
    assert not (tmp_path / "o").exists()


def test_select_checks_its_arguments_like_the_selection_rules(digits_npz):
    data = load_dataset_spec(str(digits_npz))
    with pytest.raises(PrunekitError, match="not a fraction"):
        select(data, torch.zeros(len(data)), keep=1.5)
    with pytest.raises(PrunekitError, match="unknown selection strategy"):
        select(data, torch.zeros(len(data)), keep=0.5, strategy="best")


def test_one_registry_feeds_the_recorder_the_experiment_and_the_cli():
    assert score_names() == ("el2n", "forgetting", "aum", "entropy", "prototype", "random")
    assert DYNAMICS_SCORES == score_names(needing=TRAINING_DYNAMICS) == ("el2n", "forgetting", "aum", "entropy")
    assert SCORES == ("el2n", "forgetting", "aum", "entropy", "prototype")
    for name in SCORES:
        assert SelectionMethod.parse(f"ccs-{name}").score == name
    for entry in DATA_SCORES.values():
        assert getattr(formulas, entry.formula.__name__) is entry.formula and entry.description
    recorder = TrainingDynamics()
    recorder.record([0, 1], torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]), epoch=0)
    with pytest.raises(PrunekitError, match="use one of el2n, forgetting, aum, entropy$"):
        recorder.scores("prototype")


def test_the_package_select_is_the_function_and_the_rules_module_still_imports():
    from prunekit.data.select import STRATEGIES, keep_count

    assert callable(prunekit.data.select) and prunekit.data.select is select
    assert "ccs" in STRATEGIES and keep_count(10, 0.5) == 5
