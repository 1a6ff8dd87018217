"""`prunekit sweep` (a grid of pruning runs evaluated alike) and `prunekit eval --tasks`."""

import csv
import json

import pytest
from test_cli import assert_one_line_error, run_cli

from prunekit import sweep as sweep_module
from prunekit.errors import PrunekitError
from prunekit.recipe import CalibrationConfig, EvaluationConfig
from prunekit.sweep import SweepConfig, run_sweep


@pytest.fixture()
def task_file(tmp_path):
    path = tmp_path / "task.jsonl"
    rows = [{"context": f"the {w} is", "choices": [" red", " blue", " a very long green answer"], "gold": i % 3}
            for i, w in enumerate(["cat", "dog", "sky", "sea", "tree", "car"])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def small_config(model_dir, text_file, task_file, **overrides):
    settings = dict(
        model=str(model_dir), methods=["magnitude", "wanda"], sparsities=[0.3, 0.6],
        patterns=["unstructured", "2:4"],
        calibration=CalibrationConfig(source=str(text_file), samples=4, seq_len=32),
        evaluation=EvaluationConfig(source=str(text_file), samples=2, seq_len=64),
        tasks=[str(task_file)], limit=4,
    )
    return SweepConfig(**{**settings, **overrides})


def test_sweep_points_equal_standalone_runs(tiny_model_dir, text_file, task_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "sweep"
    code, stdout, err = run_cli(
        ["sweep", str(tiny_model_dir), "--out", str(out), "--methods", "magnitude,wanda", "--sparsity", "0.3,0.6",
         "--pattern", "unstructured,2:4", "--calib", str(text_file), "--calib-samples", "4", "--calib-seq-len", "32",
         "--eval-text", str(text_file), "--ppl-samples", "2", "--ppl-seq-len", "64", "--tasks", str(task_file),
         "--limit", "4"], capsys, monkeypatch)
    assert code == 0, err
    result = json.loads((out / "sweep.json").read_text())
    names = sorted(p["report"].split("/")[1] for p in result["points"])
    assert names == sorted(["magnitude-0.3", "magnitude-0.6", "magnitude-2of4-0.5",
                            "wanda-0.3", "wanda-0.6", "wanda-2of4-0.5"])
    for point in result["points"]:
        assert point["decoder_linear_sparsity"] == pytest.approx(point["sparsity"], abs=0.01)
        assert point["zeroshot"][0]["examples"] == 4
        assert (out / point["report"]).with_name("recipe.yaml").exists()
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["method"] for r in rows][0] == "dense" and len(rows) == 7
    assert f"{task_file} acc" in rows[0]
    assert not (tmp_path / "sweep.partial").exists()

    # Each point starts from the dense weights: it equals a standalone `prunekit prune` with the point's recipe,
    # and the sweep's dense perplexity equals `prunekit eval` on the model.
    wanda = next(p for p in result["points"] if p["method"] == "wanda" and p["sparsity"] == 0.6)
    alone = tmp_path / "alone"
    code, _, err = run_cli(["prune", "--recipe", str(out / wanda["report"]).replace("prunekit.json", "recipe.yaml"),
                            "--out", str(alone)], capsys, monkeypatch)
    assert code == 0, err
    standalone = json.loads((alone / "prunekit.json").read_text())
    assert standalone["perplexity"]["pruned"]["perplexity"] == pytest.approx(wanda["perplexity"], rel=1e-5)
    assert standalone["zero_parameters"] == wanda["zero_parameters"]
    code, stdout, err = run_cli(["eval", str(tiny_model_dir), "--text", str(text_file), "--ppl-samples", "2",
                                 "--ppl-seq-len", "64", "--tasks", str(task_file), "--limit", "4", "--json"],
                                capsys, monkeypatch)
    assert code == 0, err
    dense = json.loads(stdout)
    assert dense["perplexity"]["perplexity"] == pytest.approx(result["dense"]["perplexity"], rel=1e-5)
    assert dense["zeroshot"][0]["acc"] == result["dense"]["zeroshot"][0]["acc"]

    # The report reads the sweep and the standalone run together.
    page = tmp_path / "report.html"
    code, _, err = run_cli(["report", str(out), str(alone), "--out", str(page)], capsys, monkeypatch)
    assert code == 0, err
    html = page.read_text()
    for figure in ("perplexity", "zeroshot", "layer-sparsity"):
        assert f'id="{figure}"' in html
    assert "wanda" in html and "magnitude" in html and "2:4" in html
    code, _, err = run_cli(["report", str(tmp_path / "nowhere"), "--out", str(page)], capsys, monkeypatch)
    assert code == 2
    assert_one_line_error(err)


def test_interrupted_sweep_resumes_without_redoing_points(tiny_model_dir, text_file, task_file, tmp_path,
                                                          monkeypatch):
    config = small_config(tiny_model_dir, text_file, task_file, patterns=["unstructured"], tasks=[])
    real_point = sweep_module._run_point
    calls = []

    def failing_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(args[4].method)
        return real_point(*args, **kwargs)

    monkeypatch.setattr(sweep_module, "_run_point", failing_after_two)
    out = tmp_path / "sweep"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(config, out)
    assert not out.exists() and (tmp_path / "sweep.partial" / "points").exists()
    calls.clear()
    monkeypatch.setattr(sweep_module, "_run_point", lambda *a, **k: (calls.append(a[4].method), real_point(*a, **k))[1])
    resumed = run_sweep(config, out)
    assert len(calls) == 2  # only the two points that had not finished
    fresh = run_sweep(config, tmp_path / "fresh")
    assert [p["perplexity"] for p in resumed["points"]] == pytest.approx([p["perplexity"] for p in fresh["points"]])

    other = small_config(tiny_model_dir, text_file, task_file, tasks=[], seed=1)
    (tmp_path / "again.partial").mkdir()
    (tmp_path / "again.partial" / ".prunekit-work").write_text('{"kind": "sweep"}')
    (tmp_path / "again.partial" / "settings.json").write_text("{}")
    (tmp_path / "again.partial" / "dense.json").write_text("{}")  # a finished result of those other settings
    with pytest.raises(PrunekitError, match="other settings"):
        run_sweep(other, tmp_path / "again")


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--methods", "magnitude,bogus"], "unknown method 'bogus'"),
        (["--sparsity", "0.5,abc"], "comma-separated numbers"),
        (["--sparsity", "0.5,1.2"], "outside [0, 1)"),
        (["--pattern", "4:4"], "N:M"),
        (["--tasks", "no_such_task"], "unknown task"),
        (["--methods", "wanda,wanda"], "twice"),
        (["--methods", "wanda,block-influence"], "prunekit prune --method block-influence"),
    ],
)
def test_bad_sweeps_are_one_line_errors(tiny_model_dir, tmp_path, capsys, monkeypatch, flags, fragment):
    code, _, err = run_cli(["sweep", str(tiny_model_dir), "--out", str(tmp_path / "s"), *flags], capsys, monkeypatch)
    assert code != 0
    assert_one_line_error(err)
    assert fragment in err
    assert not (tmp_path / "s.partial").exists()  # rejected before any work


def test_sweep_expands_task_groups(tiny_model_dir, text_file, task_file, tmp_path, monkeypatch):
    from prunekit.eval.harness import TASK_GROUPS

    monkeypatch.setitem(TASK_GROUPS, "mine", (str(task_file),))  # a group, as `paper` is, of a local task
    config = small_config(tiny_model_dir, text_file, task_file, methods=["magnitude"], sparsities=[0.5],
                          patterns=["unstructured"], tasks=["mine"], evaluation=None)
    result = run_sweep(config, tmp_path / "sweep")
    assert [r["task"] for r in result["dense"]["zeroshot"]] == [str(task_file)]
    assert [r["task"] for p in result["points"] for r in p["zeroshot"]] == [str(task_file)]
