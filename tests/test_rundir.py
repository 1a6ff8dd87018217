"""prunekit.rundir (the one writer of a run directory) and prunekit.report.schema (the typed reports it writes and
`prunekit report` reads): atomic writing, strict writing and tolerant reading, round trips, and the JSON layout
kept from before the schema."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from pydantic import ValidationError

from prunekit.api import PruneResult, prune_report
from prunekit.engine.layerwise import MatrixSparsity
from prunekit.errors import PrunekitError
from prunekit.eval.perplexity import PerplexityResult
from prunekit.eval.zeroshot import ZeroShotResult
from prunekit.models.loading import LoadedModel
from prunekit.recipe import EvaluationConfig, Recipe
from prunekit.recovery.finetune import RecoveryConfig
from prunekit.report.runs import load_run
from prunekit.report.schema import (
    PerplexityScore,
    PruneReport,
    RecoveryReport,
    RecoverySection,
    SparsityChange,
    SweepDense,
    SweepPoint,
    SweepReport,
    TextProtocol,
    ZeroShotScore,
)
from prunekit.rundir import REPORT_FILE, run_directory, write_run

OLD_PRUNE_KEYS = ["prunekit_report_version", "source_model", "recipe", "seed", "versions", "parameters",
                  "zero_parameters", "decoder_linear_sparsity", "matrices", "notes", "perplexity", "seconds",
                  "prune_phase_seconds", "structure", "peak_rss_bytes", "peak_gpu_bytes"]


def a_prune_report(**extra: object) -> PruneReport:
    recipe = Recipe.parse({"model": "tiny", "stages": [{"method": "wanda", "sparsity": 0.5}]})
    matrices = [MatrixSparsity("layers.0.mlp.up_proj", 8, 16, ["note"]), MatrixSparsity("layers.1.mlp.up_proj", 0, 16)]
    result = PruneResult(matrices, 1.25, {"capture": 0.123})
    pruned = PerplexityResult(float("inf"), 30, 2, 16, "text")  # a broken model's perplexity is written as it is
    return prune_report(recipe, result, 1000, 8, PerplexityResult(12.5, 30, 2, 16, "text"), pruned,
                        {"load": 0.5, "prune": 1}, **extra)


def zeroshot_dict() -> dict:
    return ZeroShotResult("task", 4, 0.5, 0.25, 0.25, 0.2, 1.0, 0.25, (1, 0, 1, 0)).to_dict()


@pytest.fixture()
def loaded(tmp_path: Path, tokenizer) -> LoadedModel:
    source = tmp_path / "source"
    source.mkdir()
    return LoadedModel(tiny_model("llama"), tokenizer, str(source), source, torch.float32)


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- the one writer -------------------------------------------------------------------------------------------------

def test_write_run_writes_model_report_and_recipe(loaded, tmp_path):
    report, recipe = a_prune_report(), Recipe.parse({"model": "tiny", "stages": [{"method": "wanda"}]})
    out = tmp_path / "runs" / "out"
    write_run(out, report, recipe, loaded)
    assert {"model.safetensors", "config.json", "tokenizer.json", REPORT_FILE, "recipe.yaml"} <= set(files(out))
    assert json.loads((out / REPORT_FILE).read_text()) == json.loads(json.dumps(report.to_json()))
    assert (out / "recipe.yaml").read_text() == recipe.to_yaml()
    assert files(out.parent) == ["out"]  # no temporary sibling left
    assert next(loaded.model.parameters()).dtype == torch.float32


def test_write_run_leaves_nothing_when_the_model_save_fails(loaded, tmp_path, monkeypatch):
    def broken(directory: Path, **_: object) -> None:
        (Path(directory) / "model.safetensors").write_text("half written")
        raise OSError("disk full")

    monkeypatch.setattr(loaded.model, "save_pretrained", broken)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        write_run(out, a_prune_report(), None, loaded)
    assert not out.exists()
    assert files(tmp_path) == ["source"]  # no final folder, no temporary one


def test_run_directory_needs_its_report(tmp_path):
    with pytest.raises(RuntimeError, match="before its report was written"), run_directory(tmp_path / "out") as run:
        (run.path / "model.safetensors").write_text("weights")
    assert files(tmp_path) == []


def test_run_directory_keeps_the_output_guard(loaded, tmp_path):
    with pytest.raises(PrunekitError, match="would overwrite the input"):
        write_run(loaded.local_path / "out", a_prune_report(), None, loaded)
    (tmp_path / "out").mkdir()
    with pytest.raises(PrunekitError, match="already exists: choose another --out or pass --overwrite"):
        write_run(tmp_path / "out", {"note": "mine"})
    write_run(tmp_path / "out", {"note": "mine"}, overwrite=True)  # a caller's own dict report, as `save` allows
    assert json.loads((tmp_path / "out" / REPORT_FILE).read_text()) == {"note": "mine"}


# --- the JSON layout ------------------------------------------------------------------------------------------------

def test_prune_report_json_keeps_its_keys_and_numbers():
    data = a_prune_report().to_json()
    assert list(data) == OLD_PRUNE_KEYS  # no `zeroshot`: only sweep points give one
    assert data["matrices"][0] == {"name": "layers.0.mlp.up_proj", "numel": 16, "zeros": 8, "sparsity": 0.5,
                                   "notes": ["note"]}
    assert data["notes"] == ["layers.0.mlp.up_proj: note"]
    assert data["seconds"] == {"load": 0.5, "prune": 1} and isinstance(data["seconds"]["prune"], int)
    assert math.isinf(data["perplexity"]["pruned"]["perplexity"])
    assert list(data["perplexity"]["dense"]) == ["perplexity", "tokens", "samples", "seq_len", "source"]
    assert data["structure"] is None and data["prune_phase_seconds"] == {"capture": 0.12}
    point = a_prune_report(zeroshot=[zeroshot_dict()]).to_json()
    assert list(point) == [*OLD_PRUNE_KEYS, "zeroshot"] and point["zeroshot"] == [zeroshot_dict()]


def test_sweep_point_leaves_out_what_was_not_given():
    row = dict(method="wanda", sparsity=0.5, pattern="unstructured", perplexity=None, zeroshot=[],
               prune_seconds=1.0, decoder_linear_sparsity=0.5, parameters=10, zero_parameters=5,
               report="points/wanda-0.5/prunekit.json")
    assert SweepPoint(**row).to_json() == row
    assert SweepPoint(**row, error="out of memory").to_json() == {**row, "error": "out of memory"}


def test_schema_follows_the_records_it_describes():
    """The schema lists every field of the dataclasses and configs it stores, in their order."""
    def names(record: type) -> list[str]:
        return list(record.model_fields)

    assert names(PerplexityScore) == [f.name for f in dataclasses.fields(PerplexityResult)]
    assert names(ZeroShotScore) == list(zeroshot_dict())
    config = [f.name for f in dataclasses.fields(RecoveryConfig)]
    assert names(RecoverySection)[: len(config)] == config
    assert names(TextProtocol) == list(EvaluationConfig.model_fields)


# --- strict writing, tolerant reading -------------------------------------------------------------------------------

def test_writing_is_strict():
    with pytest.raises(ValidationError, match="needs peak_gpu_bytes"):
        PruneReport(**{k: v for k, v in a_prune_report() if k not in ("peak_gpu_bytes", "zeroshot")})
    with pytest.raises(ValidationError, match="expected an integer"):
        SweepDense(perplexity=1.0, zeroshot=[], parameters="10", zero_parameters=0)
    with pytest.raises(ValidationError, match="Extra inputs"):
        SparsityChange(before=0.5, after=0.5, during=0.5)


def test_reports_round_trip():
    prune = a_prune_report(zeroshot=[zeroshot_dict()])
    section = RecoverySection(**dataclasses.asdict(RecoveryConfig()), tokens=10, loss_first_10=3.0,
                              loss_last_10=2.0, losses=[3.0, 2.0], masked_weights=4, masked_zeros_before=2,
                              masked_zeros_after=2, seconds=1.5)
    recovery = RecoveryReport(prunekit_version="0.1.0", versions={"prunekit": "0.1.0"}, model="m", teacher=None,
                              recovery=section, perplexity={"before": PerplexityScore(**PerplexityResult(
                                  9.0, 30, 2, 16, "text").to_dict())}, parameters=10, zero_parameters=5,
                              decoder_linear_sparsity=SparsityChange(before=0.5, after=0.5))
    point = SweepPoint(method="wanda", sparsity=0.5, pattern="unstructured", perplexity=9.0,
                       zeroshot=[ZeroShotScore(**zeroshot_dict())], prune_seconds=1.0, decoder_linear_sparsity=0.5,
                       parameters=10, zero_parameters=5, report="points/wanda-0.5/prunekit.json")
    sweep = SweepReport(versions={"prunekit": "0.1.0"}, model="m", methods=["wanda"], sparsities=[0.5],
                        patterns=["unstructured"], seed=0, calibration={"source": "text"}, perplexity_protocol=None,
                        zeroshot_protocol=None, dense=SweepDense(perplexity=8.0, zeroshot=[], parameters=10,
                                                                 zero_parameters=0),
                        points=[point], seconds={"total": 3.0}, peak_rss_bytes=100)
    for record in (prune, recovery, sweep):
        data = json.loads(json.dumps(record.to_json(), indent=2))
        assert type(record).parse(data) == record
        assert type(record).parse(data).to_json().keys() == record.to_json().keys()
    assert sweep.to_json()["prunekit_sweep_version"] == 1 and "pattern" not in sweep.to_json()
    assert RecoveryReport.read(json.loads(json.dumps(recovery.to_json()))) == recovery


def test_reading_tolerates_future_missing_and_wrong_fields():
    data = json.loads(json.dumps(a_prune_report().to_json()))
    data["a_future_field"] = {"anything": [1, 2]}
    data["matrices"].append("not a matrix")
    data["seconds"]["prune"] = "slow"
    del data["peak_gpu_bytes"], data["structure"]
    report = PruneReport.read(data)
    assert not hasattr(report, "a_future_field")
    assert len(report.matrices) == 2 and report.seconds == {"load": 0.5, "prune": None}
    assert report.peak_gpu_bytes is None and report.structure is None
    assert report.perplexity.pruned is not None and report.perplexity.pruned.perplexity is None  # not finite
    assert PruneReport.read({}).matrices == [] and RecoveryReport.read({"recovery": "x"}).recovery.steps is None


def test_report_loads_a_run_with_future_and_missing_fields(tmp_path):
    data = json.loads(json.dumps(a_prune_report().to_json()))
    data["a_future_field"] = 1
    data["matrices"][0]["a_future_key"] = "x"
    for key in ("peak_gpu_bytes", "prune_phase_seconds", "structure", "notes"):
        del data[key]
    write_run(tmp_path / "run", data)
    run = load_run(tmp_path / "run")
    assert run.kind == "prune" and run.version == data["versions"]["prunekit"]
    point = run.points[0]
    assert (point.method, point.sparsity, point.parameters, point.prune_seconds) == ("wanda", 0.5, 1000, 1.0)
    assert point.perplexity is None and run.dense[0].perplexity == 12.5  # an infinite perplexity is not plotted
    assert [m.name for m in point.matrices] == ["layers.0.mlp.up_proj", "layers.1.mlp.up_proj"]
