"""Regression tests for `prunekit report`: where it may write (defect 2), what it survives reading (defect 9), and
what it may read at all (defect 12)."""

from __future__ import annotations

import copy
import json
import random
import re
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from test_cli import assert_one_line_error, run_cli
from test_report import make_prune, make_recovery, make_sweep, prune_report, write_json, zeroshot

from prunekit.errors import PrunekitError
from prunekit.report import write_report
from prunekit.report.runs import Dense, Point, Recovery, Run, accuracy_interval, layer_sparsity, load_run

# Values of the wrong type (or out of range) for any key of a report.
WRONG: tuple[Any, ...] = ("x", "4096", "", [], [1, "a"], {}, {"a": 1}, None, True, 0, -1, 1.5, 10**400, 1e308,
                          float("nan"), "$\\frac{$")


def one_line_error(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(PrunekitError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert message and "\n" not in message
    return message


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` (links not followed) and its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def svg_comments(html: str) -> list[str]:
    """The text of every label the plots drew: matplotlib writes it as a comment before the glyph outlines."""
    return re.findall(r"<!-- (.*?) -->", html)


# --- defect 2: the report is never written into or around a run, nor over a file without --overwrite ------------

def test_defect2_out_inside_run_refused(tmp_path):
    prune, sweep = make_prune(tmp_path / "wanda50"), make_sweep(tmp_path / "sweep")
    before = snapshot(tmp_path)
    for runs, out in [([prune], prune / "prunekit.json"), ([prune / "prunekit.json"], prune / "prunekit.json"),
                      ([prune], prune / "report.html"), ([sweep], sweep / "points/wanda-0.5/prunekit.json"),
                      ([prune, sweep], sweep / "sub" / "report.html")]:
        message = one_line_error(write_report, runs, out, overwrite=True)
        assert "would overwrite the input" in message and "choose another --out" in message
    # Around a run: a directory that holds one (refused even with overwrite).
    assert "would overwrite the input" in one_line_error(write_report, [sweep], tmp_path, overwrite=True)
    assert snapshot(tmp_path) == before  # the run's JSON is still JSON; nothing was added


def test_defect2_out_checked_before_reading(tmp_path):
    """A run that cannot be read still gets the --out message first: the output is checked before any reading."""
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "prunekit.json").write_text("{not json")
    assert "would overwrite the input" in one_line_error(write_report, [tmp_path / "broken"],
                                                         tmp_path / "broken" / "prunekit.json")
    (tmp_path / "report.html").write_text("old")
    assert "already exists" in one_line_error(write_report, [tmp_path / "broken"], tmp_path / "report.html")
    (tmp_path / "folder").mkdir()
    message = one_line_error(write_report, [make_prune(tmp_path / "run")], tmp_path / "folder", overwrite=True)
    assert "is a directory: give a file name" in message
    assert "is a directory: give a file name" in one_line_error(write_report, [tmp_path / "run"], tmp_path / "folder")


def test_defect2_existing_out_needs_overwrite(tmp_path):
    run = make_prune(tmp_path / "run")
    out = tmp_path / "reports" / "report.html"
    out.parent.mkdir()
    out.write_text("an older report")
    message = one_line_error(write_report, [run], out)
    assert message == f"--out {out} already exists: choose another --out or pass --overwrite"
    assert out.read_text() == "an older report"
    assert write_report([run], out, overwrite=True) == out
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temporary sibling left
    assert out.stat().st_mode & 0o777 == 0o644


def test_defect2_cli_refuses_and_exits_2(tmp_path, capsys, monkeypatch):
    run = make_prune(tmp_path / "run")
    before = (run / "prunekit.json").read_bytes()
    code, _, err = run_cli(["report", str(run), "--out", str(run / "prunekit.json")], capsys, monkeypatch)
    assert code == 2 and "would overwrite the input" in err
    assert_one_line_error(err)
    assert (run / "prunekit.json").read_bytes() == before
    out = tmp_path / "report.html"
    out.write_text("old")
    code, _, err = run_cli(["report", str(run), "--out", str(out)], capsys, monkeypatch)
    assert code == 2 and "pass --overwrite" in err and out.read_text() == "old"
    assert_one_line_error(err)
    code, _, err = run_cli(["report", str(run), "--out", str(out), "--overwrite"], capsys, monkeypatch)
    assert code == 0 and out.read_text().startswith("<!DOCTYPE html>")


# --- defect 9: files that are not UTF-8, values of the wrong type, `$` in labels ---------------------------------

def test_defect9_recipe_yaml_not_utf8_is_one_line_error(tmp_path, capsys, monkeypatch):
    run = make_prune(tmp_path / "run")
    (run / "recipe.yaml").write_bytes(b"model: tiny\n\xff\xfe stages: []\n")
    out = tmp_path / "report.html"
    message = one_line_error(write_report, [run], out)
    assert message.startswith(f"recipe {run / 'recipe.yaml'} is not UTF-8 text (byte 0xff)")
    assert not out.exists()
    code, _, err = run_cli(["report", str(run), "--out", str(out)], capsys, monkeypatch)
    assert code == 2 and not out.exists()
    assert_one_line_error(err)


def test_defect9_json_not_utf8_is_one_line_error(tmp_path):
    run = make_prune(tmp_path / "run")
    (run / "prunekit.json").write_bytes((run / "prunekit.json").read_bytes().replace(b"tiny-llama", b"tiny-\xe9", 1))
    assert "is not UTF-8 text (byte 0xe9)" in one_line_error(write_report, [run], tmp_path / "report.html")
    sweep = make_sweep(tmp_path / "sweep")
    (sweep / "sweep.json").write_bytes(b"\x80{}")
    assert "is not UTF-8 text (byte 0x80)" in one_line_error(write_report, [sweep], tmp_path / "report.html")
    sweep = make_sweep(tmp_path / "sweep2")
    (sweep / "points/wanda-0.5/prunekit.json").write_bytes(b"{\"a\": \"\xff\"}")
    assert "is not UTF-8 text (byte 0xff)" in one_line_error(write_report, [sweep], tmp_path / "report.html")
    assert not (tmp_path / "report.html").exists()


def test_defect9_json_unparseable_numbers_are_one_line_error(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "prunekit.json").write_text('{"prunekit_report_version": 1, "parameters": ' + "9" * 5000 + "}")
    assert "is not valid JSON" in one_line_error(write_report, [tmp_path / "run"], tmp_path / "report.html")
    (tmp_path / "run" / "prunekit.json").write_text("[" * 100_000 + "]" * 100_000)
    assert "is not valid JSON" in one_line_error(write_report, [tmp_path / "run"], tmp_path / "report.html")


def test_defect9_numel_string_is_skipped(tmp_path):
    report = prune_report("wanda", 0.5, 36.0)
    report["matrices"][0]["numel"] = "4096"  # layer 0 keeps its other matrix
    report["matrices"][2]["zeros"] = "lots"
    report["matrices"][4] = {"name": ["layers", 2], "numel": 10, "zeros": 5}
    write_json(tmp_path / "run" / "prunekit.json", report)
    html = write_report([tmp_path / "run"], tmp_path / "report.html").read_text()
    assert 'id="layer-sparsity"' in html
    assert layer_sparsity(report["matrices"]) == pytest.approx({i: 0.5 for i in range(6)}, abs=1e-3)


def test_defect9_layer_sparsity_and_interval_ignore_wrong_types():
    matrices = [{"name": "layers.0.a", "numel": 100, "zeros": 50}, "not a dict", None,
                {"name": "layers.0.b", "numel": "100", "zeros": 100}, {"name": "layers.0.c", "numel": 100},
                {"name": "layers.1.a", "numel": 10**400, "zeros": 1}, {"name": "layers.1.b", "numel": 10, "zeros": 11},
                {"name": "layers.1.c", "numel": -10, "zeros": -5}, {"name": 3, "numel": 10, "zeros": 1},
                {"name": "layers.2.a", "numel": True, "zeros": False}, {"name": "layers.3.a", "numel": 8.0, "zeros": 2}]
    assert layer_sparsity(matrices) == {0: 0.5, 3: 0.25}
    assert accuracy_interval({"acc": 0.5, "acc_ci95": ["a", "b"], "acc_stderr": "c"}) == (0.5, 0.5)
    assert accuracy_interval({"acc": "x"}) == (0.0, 0.0)


def _nodes(data: Any, path: tuple = ()) -> Iterator[tuple]:
    """The path of every value inside `data` (keys of dicts, indexes of lists), the version keys left out."""
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        if key not in ("prunekit_report_version", "prunekit_sweep_version"):
            yield (*path, key)
            yield from _nodes(value, (*path, key))


def _replaced(data: Any, path: tuple, value: Any) -> Any:
    out = copy.deepcopy(data)
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


def _everywhere(data: Any, pick: Any) -> Any:
    """`data` with every leaf replaced by pick() (the version keys kept)."""
    if isinstance(data, dict):
        return {k: v if k in ("prunekit_report_version", "prunekit_sweep_version") else _everywhere(v, pick)
                for k, v in data.items()}
    if isinstance(data, list):
        return [_everywhere(v, pick) for v in data]
    return pick()


def _check_types(run: Run) -> None:
    """What the page and the plots are handed has the declared types: nothing of the JSON's wrong types is left."""
    items: list[object] = [run, *run.points, *run.dense, *([run.recovery] if run.recovery else [])]
    for item in items:
        for f in fields(item):
            value = getattr(item, f.name)
            allowed = {"str": str, "float": float, "int": int, "dict": dict, "Path": Path, "tuple": tuple,
                       "Recovery": Recovery}
            names = [part.split("[")[0].strip() for part in str(f.type).split("|")]
            if value is None:
                assert "None" in names, (type(item).__name__, f.name)
                continue
            kinds = tuple(allowed[n] for n in names if n in allowed)
            assert isinstance(value, kinds) and not isinstance(value, bool), (type(item).__name__, f.name, value)
    for item in [*run.points, *run.dense]:
        for result in item.zeroshot:
            assert isinstance(result["task"], str) and isinstance(result["acc"], float)
            assert all(result.get(k) is None or isinstance(result[k], float) for k in ("acc_stderr", "chance"))
            assert result.get("examples") is None or isinstance(result["examples"], int)
        assert all(isinstance(n, str) for n in getattr(item, "notes", ()))
    assert all(isinstance(n, str) for n in run.notes)


@pytest.fixture
def small_runs(tmp_path: Path) -> dict[str, tuple[Path, str, dict]]:
    """A prune run, a two-point sweep and a recovery run: (directory, the JSON file's name, its content)."""
    sweep = tmp_path / "sweep"
    write_json(sweep / "points/p/prunekit.json", prune_report("wanda", 0.5, 36.0))
    sweep_json = {"prunekit_sweep_version": 1, "model": "m", "pattern": "unstructured",
                  "perplexity_protocol": {"source": "wikipedia", "samples": 4, "seq_len": 1024},
                  "dense": {"perplexity": 18.5, "parameters": 200_000, "zero_parameters": 0,
                            "zeroshot": [zeroshot(0.41)]},
                  "points": [{"method": "wanda", "sparsity": 0.5, "pattern": "unstructured", "perplexity": 36.0,
                              "zeroshot": [zeroshot(0.3)], "prune_seconds": 10.0, "decoder_linear_sparsity": 0.5,
                              "parameters": 200_000, "zero_parameters": 75_000, "report": "points/p/prunekit.json"},
                             {"method": "magnitude", "sparsity": 0.9, "error": "out of memory"}],
                  "seconds": {"total": 12.0}, "versions": {"prunekit": "0.1.0"}}
    prune = make_prune(tmp_path / "prune")
    recovery = make_recovery(tmp_path / "recovery")
    return {"prune": (prune, "prunekit.json", json.loads((prune / "prunekit.json").read_text())),
            "sweep": (sweep, "sweep.json", sweep_json),
            "recovery": (recovery, "prunekit.json", json.loads((recovery / "prunekit.json").read_text()))}


@pytest.mark.parametrize("kind", ["prune", "sweep", "recovery"])
def test_defect9_wrong_type_anywhere_is_read_as_missing(small_runs, kind):
    """Every single value of the report replaced by every wrong value: the run still reads, well typed."""
    directory, name, data = small_runs[kind]
    for path in _nodes(data):
        for value in WRONG:
            (directory / name).write_text(json.dumps(_replaced(data, path, value)))
            _check_types(load_run(directory))


def test_defect9_wrong_types_everywhere_still_render(small_runs, tmp_path):
    """Every value of all three reports replaced at once (by one wrong value, or by a random mix): the page renders."""
    picks = [(lambda v=v: v) for v in WRONG] + [(lambda r=random.Random(seed): r.choice(WRONG)) for seed in range(3)]
    for pick in picks:
        for directory, name, data in small_runs.values():
            (directory / name).write_text(json.dumps(_everywhere(data, pick)))
        runs = [directory for directory, _, _ in small_runs.values()]
        out = write_report(runs, tmp_path / "out" / "report.html", overwrite=True)
        assert out.read_text().startswith("<!DOCTYPE html>")


def _numbers_replaced(data: Any, pick: Any) -> Any:
    """`data` with every number (not the version keys) replaced by pick(); its structure and strings kept."""
    if isinstance(data, dict):
        return {k: v if k in ("prunekit_report_version", "prunekit_sweep_version") else _numbers_replaced(v, pick)
                for k, v in data.items()}
    if isinstance(data, list):
        return [_numbers_replaced(v, pick) for v in data]
    return pick() if isinstance(data, (int, float)) and not isinstance(data, bool) else data


EXTREME = (1e308, -1e308, 10**400, 0, -1, 5e-324, 1e30, 1.0, 0.5, 2, float("nan"))


def test_defect9_extreme_numbers_still_render(small_runs, tmp_path):
    """Numbers far out of range (or a mix of them) where the plots expect a perplexity, an accuracy or a loss."""
    picks = [(lambda v=v: v) for v in EXTREME] + [(lambda r=random.Random(seed): r.choice(EXTREME))
                                                  for seed in range(3)]
    for pick in picks:
        for directory, name, data in small_runs.values():
            (directory / name).write_text(json.dumps(_numbers_replaced(data, pick)))
        (small_runs["sweep"][0] / "points/p/prunekit.json").write_text(
            json.dumps(_numbers_replaced(prune_report("wanda", 0.5, 36.0), pick)))
        runs = [directory for directory, _, _ in small_runs.values()]
        assert write_report(runs, tmp_path / "out" / "report.html", overwrite=True).is_file()


def test_defect9_dollar_signs_drawn_literally(tmp_path):
    method, task = r"wanda$\frac{$", "$x$ task"
    report = prune_report(method, 0.5, 36.0, zeroshot=[zeroshot(0.3, task)])
    run = tmp_path / "a$b$c"
    write_json(run / "prunekit.json", report)
    write_json(tmp_path / "rec$1$" / "prunekit.json", {"recovery": {"losses": [3.0, 2.5, 2.0]}})
    html = write_report([run, tmp_path / "rec$1$"], tmp_path / "report.html").read_text()
    drawn = svg_comments(html)
    assert method in drawn  # the perplexity legend
    assert f"{task} (100 examples)" in drawn  # the zero-shot panel's title
    assert f"{method} 50%" in drawn  # the per-layer legend
    assert "rec$1$" in drawn  # the loss legend
    assert not any("\\$" in text for text in drawn)


def test_defect9_labels_stay_escaped_in_page_and_svg(tmp_path):
    method = "</svg><script>alert(1)</script>--><b>"
    report = prune_report(method, 0.5, 36.0, zeroshot=[zeroshot(0.3, "<i>task</i>")])
    write_json(tmp_path / "run" / "prunekit.json", report)
    html = write_report([tmp_path / "run"], tmp_path / "report.html").read_text()
    assert "<script" not in html and "<b>" not in html and "<i>" not in html
    assert html.count("</svg>") == html.count("<svg")
    assert "&lt;/svg&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in html


# --- defect 12: nothing outside the run directories given is read -----------------------------------------------

SECRET = "model: the-secret-model\n"


def _outside(tmp_path: Path) -> Path:
    """A prune run outside the sweep, whose recipe.yaml holds a secret."""
    outside = make_prune(tmp_path / "outside")
    (outside / "recipe.yaml").write_text(SECRET)
    (tmp_path / "secret.yaml").write_text(SECRET)
    return outside


def test_defect12_point_report_outside_sweep_not_read(tmp_path):
    outside = _outside(tmp_path)
    sweep = make_sweep(tmp_path / "sweep")
    data = json.loads((sweep / "sweep.json").read_text())
    (sweep / "points/link-dir").symlink_to(outside, target_is_directory=True)
    (sweep / "points/link-file").mkdir()
    (sweep / "points/link-file/prunekit.json").symlink_to(outside / "prunekit.json")
    links = [str(outside / "prunekit.json"), "../outside/prunekit.json", "points/../../outside/prunekit.json",
             "points/link-dir/prunekit.json", "points/link-file/prunekit.json", "points/a\0b/prunekit.json"]
    for point, link in zip(data["points"], links, strict=False):
        point["report"] = link
    (sweep / "sweep.json").write_text(json.dumps(data))
    html = write_report([sweep], tmp_path / "report.html").read_text()
    assert "the-secret-model" not in html
    for point, link in zip(data["points"], links[:-1], strict=False):
        assert (f"{point['method']} at sparsity {point['sparsity']}: its report {link} lies outside the sweep "
                f"directory {sweep}; not read") in html
    nul = "wanda at sparsity 0.7: its report path &quot;points/a\\u0000b/prunekit.json&quot; is not a file name"
    assert nul in html
    sweep_run = load_run(sweep)
    assert [p.recipe_text for p in sweep_run.points[:6]] == [None] * 6 and sweep_run.points[6].recipe_text


def test_defect12_recipe_linked_outside_run_not_read(tmp_path):
    _outside(tmp_path)
    prune = make_prune(tmp_path / "prune")
    (prune / "recipe.yaml").unlink()
    (prune / "recipe.yaml").symlink_to(tmp_path / "secret.yaml")
    sweep = make_sweep(tmp_path / "sweep")
    (sweep / "points/wanda-0.5/recipe.yaml").symlink_to(tmp_path / "secret.yaml")
    html = write_report([prune, sweep], tmp_path / "report.html").read_text()
    assert "the-secret-model" not in html
    assert f"{prune / 'recipe.yaml'} links outside the run directory {prune}; not read" in html
    assert f"{sweep / 'points/wanda-0.5/recipe.yaml'} links outside the run directory {sweep}; not read" in html
    assert "method: wanda" in html  # the report's own copy of the recipe instead


def test_defect12_run_json_linked_outside_refused(tmp_path):
    outside = _outside(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "prunekit.json").symlink_to(outside / "prunekit.json")
    message = one_line_error(write_report, [tmp_path / "run"], tmp_path / "report.html")
    assert "outside the run directory" in message and not (tmp_path / "report.html").exists()


def test_defect12_links_inside_runs_still_followed(tmp_path):
    """A run directory that is itself a symlink, and links that stay inside the sweep, are read as before."""
    sweep = make_sweep(tmp_path / "real" / "sweep")
    (tmp_path / "sweep-link").symlink_to(sweep, target_is_directory=True)
    (sweep / "points/alias").symlink_to(sweep / "points/wanda-0.5", target_is_directory=True)
    data = json.loads((sweep / "sweep.json").read_text())
    data["points"][3]["report"] = "points/alias/prunekit.json"
    data["points"][4]["report"] = f"{sweep}/points/wanda-0.5/prunekit.json"  # absolute, but inside
    (sweep / "sweep.json").write_text(json.dumps(data))
    run = load_run(tmp_path / "sweep-link")
    assert not run.notes
    assert all(p.recipe_text and p.matrices for p in run.points if p.error is None)
    assert isinstance(run.points[0], Point) and isinstance(run.dense[0], Dense)
