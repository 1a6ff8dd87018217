"""prunekit.report: reading run directories, the per-layer arithmetic, error messages, and the page as headless
Chromium renders it (every plot drawn, nothing fetched, a screenshot that is not blank)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from prunekit.errors import PrunekitError
from prunekit.report import write_report
from prunekit.report.runs import accuracy_interval, layer_index, layer_sparsity, load_run
from prunekit.report.tables import paper_table

CHROMIUM = os.environ.get("PRUNEKIT_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("PRUNEKIT_CHROMEDRIVER", "/usr/bin/chromedriver")
# Flags that keep Chromium from reaching for the network (this may run with none) or a display.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars"]
LAYERS = 6


# --- synthetic run directories ---------------------------------------------------------------------------------------

def matrices(sparsity: float, tilt: float = 0.0) -> list[dict]:
    """Two matrices per layer of different sizes; layer i has sparsity + tilt * (i - middle), like OWL would."""
    out = []
    for layer in range(LAYERS):
        target = sparsity + tilt * (layer - (LAYERS - 1) / 2)
        for name, numel in (("self_attn.q_proj", 64 * 64), ("mlp.up_proj", 64 * 256)):
            zeros = round(numel * target)
            out.append({"name": f"layers.{layer}.{name}", "numel": numel, "zeros": zeros, "sparsity": zeros / numel,
                        "notes": []})
    return out


def zeroshot(acc: float, task: str = "goal_inference", chance: float = 0.25) -> dict:
    return {"task": task, "examples": 100, "acc": acc, "acc_stderr": 0.045, "acc_norm": acc - 0.02,
            "acc_norm_stderr": 0.045, "seconds": 4.0, "chance": chance,
            "acc_ci95": [max(0.0, acc - 0.09), min(1.0, acc + 0.09)]}


def prune_report(method: str, sparsity: float, perplexity: float | None, tilt: float = 0.0, **extra: object) -> dict:
    parameters = 200_000
    zeros = sum(m["zeros"] for m in matrices(sparsity, tilt))
    measured = {"tokens": 4096, "samples": 4, "seq_len": 1024, "source": "wikipedia"}
    return {
        "prunekit_report_version": 1, "source_model": "tiny-llama",
        "recipe": {"model": "tiny-llama", "seed": 0,
                   "stages": [{"method": method, "sparsity": sparsity, "pattern": "unstructured"}]},
        "seed": 0, "versions": {"prunekit": "0.1.0"}, "parameters": parameters, "zero_parameters": zeros,
        "decoder_linear_sparsity": sparsity, "matrices": matrices(sparsity, tilt), "notes": [],
        "perplexity": {"dense": {"perplexity": 18.5, **measured},
                       "pruned": {"perplexity": perplexity, **measured} if perplexity else None},
        "seconds": {"prune": 12.5, "total": 30.0}, "structure": None, "peak_rss_bytes": 1_800_000_000,
        **extra,
    }


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


PERPLEXITY = {"magnitude": (25.0, 60.0, 900.0), "wanda": (20.0, 37.9, 140.0), "sparsegpt": (19.8, 33.0, 95.0)}
ACCURACY = {"magnitude": (0.37, 0.30, 0.26), "wanda": (0.39, 0.36, 0.29), "sparsegpt": (0.40, 0.37, 0.31)}
SPARSITIES = (0.3, 0.5, 0.7)


def make_sweep(root: Path) -> Path:
    points = []
    for method, perplexities in PERPLEXITY.items():
        for sparsity, perplexity, acc in zip(SPARSITIES, perplexities, ACCURACY[method], strict=True):
            relative = f"points/{method}-{sparsity}/prunekit.json"
            tilt = 0.04 if method == "sparsegpt" else 0.0
            write_json(root / relative, prune_report(method, sparsity, perplexity, tilt))
            points.append({"method": method, "sparsity": sparsity, "pattern": "unstructured",
                           "perplexity": perplexity,
                           "zeroshot": [zeroshot(acc), zeroshot(acc + 0.15, "causal_judgment", 0.5)],
                           "prune_seconds": 10.0 + sparsity, "decoder_linear_sparsity": sparsity,
                           "parameters": 200_000, "zero_parameters": int(150_000 * sparsity), "report": relative})
    points.append({"method": "sparsegpt", "sparsity": 0.9, "pattern": "unstructured",
                   "error": "out of memory <while pruning layer 3>"})
    write_json(root / "sweep.json", {
        "prunekit_sweep_version": 1, "model": "tiny-llama", "pattern": "unstructured",
        "methods": list(PERPLEXITY), "sparsities": [*SPARSITIES, 0.9],
        "perplexity_protocol": {"source": "wikipedia", "samples": 4, "seq_len": 1024},
        "zeroshot_protocol": {"tasks": ["goal_inference", "causal_judgment"], "limit": 100, "prompt": "plain",
                              "seed": 0},
        "dense": {"perplexity": 18.5, "parameters": 200_000, "zero_parameters": 0,
                  "zeroshot": [zeroshot(0.41), zeroshot(0.58, "causal_judgment", 0.5)]},
        "points": points, "seconds": {"total": 1234.0}})
    return root


def make_prune(root: Path) -> Path:
    write_json(root / "prunekit.json", prune_report("wanda", 0.5, 36.0, tilt=0.03))
    (root / "recipe.yaml").write_text("model: tiny-llama\nstages:\n- method: wanda\n  sparsity: 0.5\n")
    return root


def make_recovery(root: Path) -> Path:
    measured = {"tokens": 4096, "samples": 4, "seq_len": 1024, "source": "wikipedia"}
    return write_json(root / "prunekit.json", {
        "prunekit_version": "0.1.0", "model": "out/wanda50", "teacher": "tiny-llama",
        "recovery": {"method": "distill", "steps": 40, "seconds": 55.5, "loss_first_10": 3.2, "loss_last_10": 2.6,
                     "masked_weights": 1000, "masked_zeros_before": 500, "masked_zeros_after": 500,
                     "losses": [3.4 - 0.02 * i for i in range(40)]},
        "perplexity": {"before": {"perplexity": 36.0, **measured}, "teacher": {"perplexity": 18.5, **measured},
                       "after": {"perplexity": 29.1, **measured}},
        "parameters": 200_000, "zero_parameters": 75_000}).parent


def make_search(root: Path, target: str, kept: float, ppls: tuple[float, float], kls: tuple[float, float]) -> Path:
    """A `prunekit search` run: a prune report plus search.json (as run_search writes it)."""
    make_prune(root)
    key, _, value = target.partition("=")
    cost = {} if key == "params" else {"predicted": 1.31, "measured": 1.29, "met": True}
    write_json(root / "search.json", {
        "model": "tiny-llama", "space": "sparsity" if key == "params" else "depth",
        "target": {"key": key, "value": float(value.rstrip("x")), "text": target}, "baseline": "uniform wanda",
        "parameters": {"dense": 1000, "baseline_kept": int(kept * 1000) + 1, "searched_kept": int(kept * 1000)},
        "fitness": {"baseline_search": kls[0] * 0.9, "searched_search": kls[1] * 0.9, "baseline_pruned": kls[0],
                    "searched_pruned": kls[1]},
        "perplexity": {"dense": 17.0, "baseline": ppls[0], "searched": ppls[1]}, "cost": cost,
        "history": [{"generation": g + 1, "fitness": kls[0] * 0.9 - 0.001 * g, "evaluated": 14 * g} for g in range(8)],
        "evaluated": 113, "seconds": {"total": 321.0}})
    return root


def test_search_runs_get_their_section_and_odd_values_do_not_break_it(tmp_path):
    runs = [make_search(tmp_path / "s75", "params=0.75", 0.75, (24.0, 22.5), (0.31, 0.27)),
            make_search(tmp_path / "fast", "decode=1.3x", 0.8, (90.0, 70.0), (1.2, 0.9))]
    html = write_report(runs, tmp_path / "report.html").read_text()
    assert "<h2>Budget search</h2>" in html and 'id="search"' in html
    assert "decode=1.3x" in html and "1.290" in html and "0.2700" in html  # measured speed-up, searched KL
    write_json(runs[0] / "search.json", {"target": "<b>odd</b>", "history": [1, {"fitness": "x"}], "cost": 3})
    html = write_report(runs, tmp_path / "again.html").read_text()
    assert "<b>odd</b>" not in html and "<h2>Budget search</h2>" in html


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    return [make_sweep(tmp_path / "sweep"), make_prune(tmp_path / "wanda50"), make_recovery(tmp_path / "recovered")]


# --- pure functions ------------------------------------------------------------------------------------------------

def test_layer_sparsity_weighs_matrices_by_size():
    found = layer_sparsity([
        {"name": "layers.0.self_attn.k_proj", "numel": 100, "zeros": 10},  # 10% of a small matrix ...
        {"name": "layers.0.mlp.up_proj", "numel": 300, "zeros": 270},  # ... and 90% of a big one: 280/400, not 50%
        {"name": "layers.2.mlp.down_proj", "numel": 50, "zeros": 25},
        {"name": "lm_head", "numel": 1000, "zeros": 1000},  # outside the decoder layers: left out
        {"name": "layers.1.mlp.gate_proj", "numel": 0, "zeros": 0},  # empty: no division by zero
    ])
    assert list(found) == [0, 2]
    assert found[0] == pytest.approx(0.7)
    assert found[2] == pytest.approx(0.5)


def test_layer_index_of_matrix_names():
    assert layer_index("layers.3.mlp.up_proj") == 3
    assert layer_index("model.decoder.layers.11.fc1") == 11
    assert layer_index("lm_head") is None


def test_accuracy_interval_recorded_or_from_stderr():
    assert accuracy_interval({"acc": 0.5, "acc_ci95": [0.4, 0.6]}) == (0.4, 0.6)
    low, high = accuracy_interval({"acc": 0.98, "acc_stderr": 0.02})
    assert low == pytest.approx(0.98 - 1.959964 * 0.02) and high == 1.0


def test_sweep_points_come_with_their_reports(runs):
    sweep = load_run(runs[0])
    assert sweep.kind == "sweep" and len(sweep.points) == 10
    ok = [p for p in sweep.points if p.error is None]
    assert all(p.matrices and p.recipe_text and p.peak_rss_bytes for p in ok)
    assert [p.error for p in sweep.points if p.error] == ["out of memory <while pruning layer 3>"]
    assert load_run(runs[1] / "prunekit.json").kind == "prune"  # the file itself may be named
    assert load_run(runs[2]).kind == "recovery"


# --- errors: one line naming the problem and the fix, and no report written ------------------------------------

def _error(tmp_path: Path, dirs: list[Path]) -> str:
    out = tmp_path / "report.html"
    with pytest.raises(PrunekitError) as caught:
        write_report(dirs, out)
    assert not out.exists()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_error_missing_directory(tmp_path):
    assert "does not exist" in _error(tmp_path, [tmp_path / "nowhere"])


def test_error_not_a_run_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    message = _error(tmp_path, [tmp_path / "empty"])
    assert message == f"not a prunekit run directory: {tmp_path / 'empty'} (expected prunekit.json or sweep.json)"


def test_error_incompatible_report_version(tmp_path):
    write_json(tmp_path / "old" / "prunekit.json", {**prune_report("wanda", 0.5, 30.0), "prunekit_report_version": 2})
    assert _error(tmp_path, [tmp_path / "old"]) == (
        f"{tmp_path / 'old' / 'prunekit.json'} was written by an incompatible prunekit version (report version 2, "
        "this prunekit reads 1); re-run it with this version")


def test_error_incompatible_sweep_version(tmp_path):
    write_json(tmp_path / "s" / "sweep.json", {"prunekit_sweep_version": 7, "points": []})
    assert "(sweep version 7, this prunekit reads 1)" in _error(tmp_path, [tmp_path / "s"])


def test_error_incompatible_point_report(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    write_json(sweep / "points/wanda-0.5/prunekit.json", {"prunekit_report_version": 0})
    assert "(report version 0, this prunekit reads 1)" in _error(tmp_path, [sweep])


def test_error_no_runs_and_broken_json(tmp_path):
    assert "no run directories given" in _error(tmp_path, [])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "prunekit.json").write_text("{\"prunekit_report_version\": 1,\n")
    assert "is not valid JSON" in _error(tmp_path, [tmp_path / "broken"])
    write_json(tmp_path / "other" / "prunekit.json", {"hello": 1})
    assert "neither a prune nor a recovery report" in _error(tmp_path, [tmp_path / "other"])


# --- the page as text ------------------------------------------------------------------------------------------------

def test_page_is_self_contained_and_escaped(runs, tmp_path):
    out = write_report(runs, tmp_path / "reports" / "report.html", title="Sweep <1>")
    html = out.read_text()
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # the temporary file was renamed, not left
    assert "<title>Sweep &lt;1&gt;</title>" in html
    assert "out of memory &lt;while pruning layer 3&gt;" in html and "<while" not in html
    assert re.findall(r'<figure class="plot" id="([^"]+)"', html) == [
        "perplexity", "zeroshot", "layer-sparsity", "recovery-loss"]
    # Nothing to fetch: no scripts, sources, stylesheets or external links; SVG links are all in-page (#id) or
    # inline data (the heatmap's colour bar is a small embedded PNG).
    assert "<script" not in html and "src=" not in html and "<link" not in html and "@import" not in html
    targets = re.findall(r'href="([^"]*)"', html) + re.findall(r"url\(([^)]*)\)", html)
    assert targets and all(target.startswith(("#", "data:")) for target in targets)
    assert "<?xml" not in html and "<!DOCTYPE svg" not in html
    assert html.count("<details>") == 9 + 1 + 1  # recipes: 9 sweep points, the prune run, the recovery settings
    assert "stages:\n- method: wanda\n  sparsity: 0.5" in html  # the prune run's recipe.yaml, verbatim
    assert "36.00" in html and "29.10" in html and "&rarr;" in html  # recovery: before, after, losses


def test_page_without_zero_shot_says_so(tmp_path):
    out = write_report([make_prune(tmp_path / "run")], tmp_path / "report.html")
    html = out.read_text()
    assert "No zero-shot results in these runs." in html
    assert 'id="zeroshot"' not in html and 'id="perplexity"' in html and 'id="layer-sparsity"' in html


def test_page_from_minimal_reports(tmp_path):
    """Reports missing every optional key (older versions, streamed runs, interrupted sweeps) still render."""
    write_json(tmp_path / "bare" / "prunekit.json", {"prunekit_report_version": 1})
    write_json(tmp_path / "recovered" / "prunekit.json", {"recovery": {}})
    sweep = make_sweep(tmp_path / "sweep")
    (sweep / "points/wanda-0.7/prunekit.json").unlink()
    html = write_report([tmp_path / "bare", tmp_path / "recovered", sweep], tmp_path / "report.html").read_text()
    assert "wanda at sparsity 0.7: its report points/wanda-0.7/prunekit.json is missing" in html
    assert "<h2>Recovery</h2>" in html and 'id="perplexity"' in html


# --- the page in a browser -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).is_file()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("the selenium package (pip install -e '.[dev]')")
    if missing:
        message = f"the report's browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("PRUNEKIT_REQUIRE_BROWSER"):
            pytest.fail(f"PRUNEKIT_REQUIRE_BROWSER is set but {message}", pytrace=False)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # with both paths given, selenium-manager never tries to download a browser
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
                 "--window-size=1280,1000"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


FIGURES_JS = """
return Array.from(document.querySelectorAll('figure.plot')).map(figure => {
  const svg = figure.querySelector('svg');
  const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  return {id: figure.id, width: box.width, height: box.height,
          drawn: svg ? svg.querySelectorAll('path, line, rect, polyline, polygon, use').length : 0,
          caption: (figure.querySelector('figcaption') || {}).textContent || ''};
});
"""


def screenshot(driver: object, path: Path) -> Path:
    """The whole page as a PNG (the window is made as tall as the page first); also copied to
    $PRUNEKIT_SCREENSHOT_DIR when set, for a person to look at."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    # A viewport as tall as the page: a window that tall would lose some of its height to the (hidden) browser frame.
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 1280, "height": min(int(height), 12000), "deviceScaleFactor": 1, "mobile": False})
    path.write_bytes(driver.get_screenshot_as_png())
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    if os.environ.get("PRUNEKIT_SCREENSHOT_DIR"):
        target = Path(os.environ["PRUNEKIT_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)
    return path


def check_not_blank(path: Path) -> None:
    from PIL import Image

    assert path.stat().st_size > 20_000, f"{path} is only {path.stat().st_size} bytes"
    with Image.open(path) as image:
        assert image.width >= 1000 and image.height >= 1000
        grey = image.convert("L")
        low, high = grey.getextrema()
        assert high - low > 150, "the screenshot is nearly one flat colour"
        histogram = grey.histogram()
        assert max(histogram) < 0.97 * sum(histogram), "the screenshot is almost all one colour"
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50


def render(driver: object, report: Path) -> list[dict]:
    driver.get(report.as_uri())
    assert driver.execute_script("return document.readyState") == "complete"
    # A page that fetched anything (fonts, scripts, images) would list it among its resources.
    assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0
    return driver.execute_script(FIGURES_JS)


def check_figures(figures: list[dict], minimum: dict[str, int]) -> None:
    assert [f["id"] for f in figures] == list(minimum)
    for f in figures:
        assert f["width"] > 300 and f["height"] > 150, f"{f['id']} renders at {f['width']}x{f['height']}"
        assert f["drawn"] >= minimum[f["id"]], f"{f['id']} has only {f['drawn']} drawn elements"
        assert f["caption"].strip(), f"{f['id']} has no caption"


def test_report_renders_in_chromium(browser, runs, tmp_path):
    report = write_report(runs, tmp_path / "report.html", title="prunekit report: synthetic sweep")
    figures = render(browser, report)
    # Lower bounds well under what is drawn: axes, ticks and glyph outlines are paths too; the heatmap has a cell
    # per point and layer, the zero-shot plot error bars per point, the loss plot one line per run.
    check_figures(figures, {"perplexity": 60, "zeroshot": 120, "layer-sparsity": 10 * LAYERS, "recovery-loss": 30})
    assert browser.execute_script("return document.querySelectorAll('details pre').length") == 11
    check_not_blank(screenshot(browser, tmp_path / "report-sweep.png"))


def test_search_report_renders_in_chromium(browser, tmp_path):
    runs = [make_search(tmp_path / f"s{int(kept * 100)}", f"params={kept}", kept, (20 / kept, 19 / kept),
                        (0.3 - kept / 4, 0.25 - kept / 4)) for kept in (0.6, 0.75, 0.9)]
    runs.append(make_search(tmp_path / "fast", "decode=1.3x", 0.8, (90.0, 70.0), (1.2, 0.9)))
    figures = render(browser, write_report(runs, tmp_path / "report.html"))
    assert "search" in [f["id"] for f in figures]
    check_figures([f for f in figures if f["id"] == "search"], {"search": 80})
    check_not_blank(screenshot(browser, tmp_path / "report-search.png"))


def test_single_run_report_renders_in_chromium(browser, tmp_path):
    report = write_report([make_prune(tmp_path / "wanda50")], tmp_path / "report.html")
    figures = render(browser, report)
    check_figures(figures, {"perplexity": 30, "layer-sparsity": LAYERS + 20})
    check_not_blank(screenshot(browser, tmp_path / "report-single.png"))


# --- the paper-style table and each result's own metric ---------------------------------------------------------------

def svg_comments(html: str) -> list[str]:
    """The text of every label the plots drew (matplotlib writes it as a comment before the glyph outlines)."""
    return re.findall(r"<!-- (.*?) -->", html)


def scored(task: str, value: float, stderr: float, metric: str | None = "acc", ci: list | None = None) -> dict:
    """A ZeroShotResult.to_dict() record whose `metric` holds `value` (+- stderr); the other number is off by 0.1, so
    a table or plot that read the wrong one would show it. metric=None: an older record, which names none."""
    record = {"task": task, "examples": 100, "seconds": 1.0, "chance": 0.0 if metric == "exact_match" else 0.5,
              "metric": metric}
    if metric == "acc_norm":
        record.update(acc=value - 0.1, acc_stderr=0.03, acc_ci95=[value - 0.16, value - 0.04], acc_norm=value,
                      acc_norm_stderr=stderr, **({"acc_norm_ci95": ci} if ci else {}))
    elif metric == "exact_match":  # generation: the rate is held in acc; acc_norm is None and has no interval
        record.update(acc=value, acc_stderr=stderr, acc_norm=None, acc_norm_stderr=None,
                      **({"acc_ci95": ci} if ci else {}))
    else:
        record.update(acc=value, acc_stderr=stderr, acc_norm=value - 0.1, acc_norm_stderr=0.03,
                      **({"acc_ci95": ci} if ci else {}))
    if metric is None:
        del record["metric"]
    return record


def scored_sweep(root: Path, dense: list[dict], points: dict[str, list[dict]]) -> Path:
    write_json(root / "sweep.json", {
        "prunekit_sweep_version": 1, "model": "tiny-llama", "pattern": "unstructured", "dense": {"zeroshot": dense},
        "points": [{"method": method, "sparsity": 0.5, "pattern": "unstructured", "zeroshot": results}
                   for method, results in points.items()]})
    return root


DENSE = [scored("boolq", 0.80, 0.02, ci=[0.76, 0.84]),  # the recorded interval, not 0.80 +- 0.0392
         scored("hellaswag", 0.50, 0.025, "acc_norm", ci=[0.45, 0.55]),
         scored("piqa", 0.70, 0.02, "acc_norm"),  # no interval recorded: 0.70 +- 1.96 * 0.02
         scored("rte", 0.55, 0.03),  # only the dense model has it: left out of the mean
         scored("triviaqa", 0.20, 0.01, "exact_match", ci=[0.18, 0.22]),
         scored("nq_open", 0.10, 0.01, "exact_match")]
WANDA = [scored("nq_open", 0.05, 0.01, "exact_match"), scored("boolq", 0.70, 0.03),
         scored("hellaswag", 0.40, 0.02, "acc_norm"), scored("piqa", 0.60, 0.04, "acc_norm"),
         scored("triviaqa", 0.12, 0.02, "exact_match")]


def test_paper_table_cells_means_and_intervals(tmp_path):
    run = load_run(scored_sweep(tmp_path / "sweep", DENSE, {"wanda": WANDA}))
    found = paper_table(run.points, run.dense)
    assert found.columns == ("dense", "wanda 50%")
    assert [row.text for row in found.rows] == [
        "BoolQ (acc)", "HellaSwag (acc_norm)", "PIQA (acc_norm)", "RTE (acc)", "TriviaQA (exact_match)",
        "NQ-Open (exact_match)", "mean", "knowledge mean"]
    cells = {row.label: row.cells for row in found.rows}

    def check(cell, value, low, high):
        assert (cell.value, cell.low, cell.high) == pytest.approx((value, low, high))

    check(cells["BoolQ"][0], 0.80, 0.76, 0.84)
    check(cells["BoolQ"][1], 0.70, 0.70 - 1.959964 * 0.03, 0.70 + 1.959964 * 0.03)
    check(cells["HellaSwag"][0], 0.50, 0.45, 0.55)  # acc_norm and its interval, not acc (0.40)
    check(cells["PIQA"][0], 0.70, 0.70 - 1.959964 * 0.02, 0.70 + 1.959964 * 0.02)
    check(cells["TriviaQA"][0], 0.20, 0.18, 0.22)  # exact match, held in acc
    check(cells["NQ-Open"][1], 0.05, 0.05 - 1.959964 * 0.01, 0.05 + 1.959964 * 0.01)
    assert cells["RTE"][1] is None
    # The mean over the multiple-choice tasks both columns have; stderr sqrt(sum se^2) / k.
    mean, knowledge = found.rows[-2], found.rows[-1]
    assert mean.tasks == ("boolq", "hellaswag", "piqa") and mean.left_out == ("rte",)
    assert mean.metric == "acc/acc_norm"
    dense_se = (0.02 ** 2 + 0.025 ** 2 + 0.02 ** 2) ** 0.5 / 3
    check(mean.cells[0], 2.0 / 3, 2.0 / 3 - 1.959964 * dense_se, 2.0 / 3 + 1.959964 * dense_se)
    wanda_se = (0.03 ** 2 + 0.02 ** 2 + 0.04 ** 2) ** 0.5 / 3
    check(mean.cells[1], 1.7 / 3, 1.7 / 3 - 1.959964 * wanda_se, 1.7 / 3 + 1.959964 * wanda_se)
    assert knowledge.tasks == ("triviaqa", "nq_open") and knowledge.metric == "exact_match"
    check(knowledge.cells[1], 0.085, 0.085 - 1.959964 * 0.05 ** 0.5 / 20, 0.085 + 1.959964 * 0.05 ** 0.5 / 20)

    html = write_report([tmp_path / "sweep"], tmp_path / "report.html").read_text()
    assert ('<tr><td>HellaSwag (acc_norm)</td><td class="n">50.0<span class="ci"> [45.0, 55.0]</span></td>'
            '<td class="n">40.0<span class="ci"> [36.1, 43.9]</span></td></tr>') in html
    assert '<tr><td>RTE (acc)</td><td class="n">55.0<span class="ci"> [49.1, 60.9]</span></td><td class="n">\u2013' \
        in html
    assert '<tr class="mean"><td>mean</td><td class="n">66.7<span class="ci"> [64.2, 69.1]</span></td>' in html
    assert "Mean: over the 3 multiple-choice tasks every column has (BoolQ, HellaSwag, PIQA); left out" in html


def test_zeroshot_plot_uses_each_results_metric(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    drawn_bars, drawn_lines = [], []
    errorbar, axhline = Axes.errorbar, Axes.axhline
    monkeypatch.setattr(Axes, "errorbar", lambda self, x, y, *a, **k: drawn_bars.append(
        (self.get_title(), list(y), [list(e) for e in k["yerr"]])) or errorbar(self, x, y, *a, **k))
    monkeypatch.setattr(Axes, "axhline", lambda self, y=0, *a, **k: drawn_lines.append(
        (k.get("label"), y)) or axhline(self, y, *a, **k))
    dense = [scored("hellaswag", 0.50, 0.025, "acc_norm", ci=[0.45, 0.55]),
             scored("triviaqa", 0.20, 0.01, "exact_match", ci=[0.18, 0.22]), scored("boolq", 0.8, 0.02, None)]
    points = [scored("hellaswag", 0.40, 0.02, "acc_norm", ci=[0.30, 0.45]),
              scored("triviaqa", 0.12, 0.02, "exact_match", ci=[0.10, 0.16]), scored("boolq", 0.7, 0.02, None)]
    html = write_report([scored_sweep(tmp_path / "sweep", dense, {"wanda": points})],
                        tmp_path / "report.html").read_text()
    # Panels are titled before they are drawn: the bars carry no title yet; their order is the panels' order.
    assert [(y, e) for _, y, e in drawn_bars] == [([0.40], [[pytest.approx(0.10)], [pytest.approx(0.05)]]),
                                                   ([0.12], [[pytest.approx(0.02)], [pytest.approx(0.04)]]),
                                                   ([0.7], [[pytest.approx(1.959964 * 0.02)]] * 2)]
    assert [y for label, y in drawn_lines if label == "dense"] == [0.50, 0.20, 0.8]  # acc_norm, exact match, acc
    drawn = svg_comments(html)
    assert "hellaswag (acc_norm, 100 examples)" in drawn and "accuracy (acc_norm)" in drawn
    assert "triviaqa (exact_match, 100 examples)" in drawn and "exact match" in drawn
    assert "boolq (100 examples)" in drawn and "accuracy" in drawn  # an older record: as before


def test_paper_table_escapes_task_names(tmp_path):
    write_json(tmp_path / "run" / "prunekit.json", prune_report(
        "wanda", 0.5, 36.0, zeroshot=[scored("<script>alert(1)</script>", 0.6, 0.02, "acc_norm")]))
    html = write_report([tmp_path / "run"], tmp_path / "report.html").read_text()
    assert "<script" not in html
    assert "<td>&lt;script&gt;alert(1)&lt;/script&gt; (acc_norm)</td>" in html


def test_paper_table_from_older_records_without_metric(runs, tmp_path):
    sweep = load_run(runs[0])
    found = paper_table(sweep.points, sweep.dense)
    assert found.columns[:4] == ("dense", "magnitude 30%", "magnitude 50%", "magnitude 70%")
    assert len(found.columns) == 10  # the dense model and the nine points that did not fail
    assert [row.text for row in found.rows] == ["goal_inference (acc)", "causal_judgment (acc)", "mean"]
    assert found.rows[0].cells[0].value == pytest.approx(0.41)
    assert found.rows[2].cells[0].value == pytest.approx((0.41 + 0.58) / 2)
    assert (found.rows[0].cells[0].low, found.rows[0].cells[0].high) == pytest.approx((0.32, 0.50))
    html = write_report(runs, tmp_path / "report.html").read_text()
    assert "<h3>Zero-shot tasks</h3>" in html and "<td>goal_inference (acc)</td>" in html
    assert "goal_inference (100 examples)" in svg_comments(html)  # the plot's title as before
