"""The experiment and the `prunekit data` commands, end to end on scikit-learn's digits."""

import json

import pyarrow.parquet as pq
import pytest
from test_cli import assert_one_line_error, run_cli

from prunekit.data.experiment import ExperimentConfig, SelectionMethod, run_experiment
from prunekit.data.sources import digits
from prunekit.data.train import TrainConfig
from prunekit.errors import PrunekitError


def test_selection_method_names():
    assert SelectionMethod.parse("random+kd") == SelectionMethod("random+kd", "random", None, True)
    assert SelectionMethod.parse("ccs-aum") == SelectionMethod("ccs-aum", "ccs", "aum", False)
    assert SelectionMethod.parse("el2n-easy").strategy == "easiest"
    assert SelectionMethod.parse("forgetting-middle") == SelectionMethod("forgetting-middle", "middle",
                                                                         "forgetting", False)
    with pytest.raises(PrunekitError, match="unknown selection method"):
        SelectionMethod.parse("ccs-bogus")


def test_data_prune_command_writes_the_kept_subset(tmp_path, capsys, monkeypatch):
    out = tmp_path / "digits-ccs"
    code, stdout, err = run_cli(["data", "prune", "digits", "--score", "el2n", "--keep", "0.3", "--strategy", "ccs",
                                 "--epochs", "2", "--runs", "1", "--out", str(out)], capsys, monkeypatch)
    assert code == 0, err
    scores, kept = pq.read_table(out / "scores.parquet"), pq.read_table(out / "kept.parquet")
    assert scores.num_rows == 1797 and kept.num_rows == round(0.3 * 1797) == sum(scores.column("kept").to_pylist())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["strategy"] == "ccs" and summary["score"] == "el2n"
    code, _, err = run_cli(["data", "prune", "digits", "--keep", "1.5", "--score", "random", "--out",
                            str(tmp_path / "bad")], capsys, monkeypatch)
    assert code == 2 and "(0, 1]" in err
    assert_one_line_error(err)
    assert not (tmp_path / "bad").exists()


def test_data_experiment_command_writes_table_plot_and_report(tmp_path, capsys, monkeypatch):
    out = tmp_path / "experiment"
    code, stdout, err = run_cli(["data", "experiment", "digits", "--methods", "random,el2n,random+kd",
                                 "--fractions", "0.5", "--seeds", "0", "--eval-size", "0.25", "--epochs", "2",
                                 "--score-runs", "1", "--out", str(out)], capsys, monkeypatch)
    assert code == 0, err
    result = json.loads((out / "results.json").read_text())
    assert [(s["method"], s["fraction"]) for s in result["summary"]] == [
        ("random", 0.5), ("el2n", 0.5), ("random+kd", 0.5)]
    assert all(0 <= r["accuracy"] <= 1 and r["kept"] == round(0.5 * result["train_examples"])
               for r in result["runs"])
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert "<table>" in (out / "report.html").read_text() and "keep 0.5" in stdout


def test_experiment_results_do_not_depend_on_the_number_of_worker_processes():
    train_data, eval_data = digits().split(0.25, seed=0)
    config = ExperimentConfig(fractions=(0.3,), seeds=(0, 1), methods=("random", "ccs-el2n+kd"),
                              train=TrainConfig(epochs=2), score_runs=1)
    results = [run_experiment(train_data, eval_data, ExperimentConfig(**{**vars(config), "workers": workers}),
                              say=lambda _: None) for workers in (1, 2)]
    assert [(r["method"], r["seed"], r["accuracy"]) for r in results[0]["runs"]] == [
        (r["method"], r["seed"], r["accuracy"]) for r in results[1]["runs"]]
    with pytest.raises(PrunekitError, match="workers=0"):
        ExperimentConfig(workers=0)
