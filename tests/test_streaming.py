"""Streamed pruning (one layer read, pruned and written at a time) gives the in-memory result bit for bit."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import CONFIGS, tiny_model
from safetensors import safe_open
from test_cli import run_cli

from prunekit.api import run
from prunekit.errors import PrunekitError
from prunekit.models.adapters import adapter_for
from prunekit.models.shards import INDEX_NAME, Checkpoint, ShardWriter
from prunekit.recipe import Recipe


def all_tensors(directory):
    tensors = {}
    for file in directory.glob("*.safetensors"):
        with safe_open(file, framework="pt") as f:
            tensors.update({name: f.get_tensor(name) for name in f.keys()})  # noqa: SIM118 - safe_open has no iter
    return tensors


def recipe(model_dir, text_file, stream, stages):
    return Recipe.parse(dict(
        model=str(model_dir), stream=stream, device="cpu", stages=stages,
        calibration=dict(source=str(text_file), samples=6, seq_len=32, batch_size=4),
        evaluation=dict(ppl=False),
    ))


@pytest.fixture()
def model_dir_of(tmp_path, tokenizer):
    def make(family, dtype=torch.float32):
        path = tmp_path / f"tiny-{family}"
        model = tiny_model(family, dtype=dtype)
        with torch.no_grad():  # exact zeros in the embedding table must be counted too
            model.get_input_embeddings().weight[3, :5] = 0
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        return path
    return make


@pytest.mark.parametrize("family", list(CONFIGS))
def test_streamed_output_equals_in_memory_output(family, model_dir_of, text_file, tmp_path):
    source = model_dir_of(family)
    adapter = adapter_for(tiny_model(family))
    mlp = list(adapter.mlp.paths) if adapter.mlp else []
    attention = [n for n in adapter.linear_names if n not in mlp]
    experts = [f"{adapter.experts.experts}.*"] if adapter.experts else []  # MoE: inside every routed expert
    stages = [dict(method="sparsegpt", sparsity=0.5, targets=attention),
              dict(method="wanda", pattern="2:4", targets=mlp + experts)]
    in_memory = run(recipe(source, text_file, False, stages), tmp_path / "memory")
    streamed = run(recipe(source, text_file, True, stages), tmp_path / "streamed")
    expected, got = all_tensors(tmp_path / "memory"), all_tensors(tmp_path / "streamed")
    assert sorted(expected) == sorted(got)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name
    assert streamed["matrices"] == in_memory["matrices"]
    assert streamed["parameters"] == in_memory["parameters"]
    assert streamed["zero_parameters"] == in_memory["zero_parameters"]
    assert (tmp_path / "streamed" / INDEX_NAME).exists() and (tmp_path / "streamed" / "recipe.yaml").exists()
    assert not list(tmp_path.glob(".streamed.partial-*"))


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "gpt_oss"])
@pytest.mark.parametrize("stage", [dict(method="reap", size=4), dict(method="expert-merge", size=3),
                                   dict(method="expert-random", sparsity=0.5)], ids=lambda s: s["method"])
def test_streamed_expert_pruning_equals_in_memory(family, stage, model_dir_of, text_file, tmp_path):
    """Each layer's experts are read in the checkpoint's own layout (per-expert matrices for Mixtral and Qwen2-MoE),
    chosen, and written back in it, as transformers saves them."""
    source = model_dir_of(family)
    in_memory = run(recipe(source, text_file, False, [stage]), tmp_path / "memory")
    streamed = run(recipe(source, text_file, True, [stage]), tmp_path / "streamed")
    expected, got = all_tensors(tmp_path / "memory"), all_tensors(tmp_path / "streamed")
    assert sorted(expected) == sorted(got)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    assert streamed["parameters"] == in_memory["parameters"] < in_memory["structure"]["dense_parameters"]
    assert streamed["structure"]["stages"][0]["removed"]["kept_per_layer"] == \
        in_memory["structure"]["stages"][0]["removed"]["kept_per_layer"]
    config = json.loads((tmp_path / "streamed" / "config.json").read_text())
    assert (config.get("num_local_experts") or config.get("num_experts")) == {"reap": 4, "expert-merge": 3,
                                                                             "expert-random": 3}[stage["method"]]


@pytest.mark.parametrize("stages", [
    [dict(method="wanda", sparsity=0.6, allocation="owl", owl_lambda=0.1)],
    [dict(method="magnitude", sparsity=0.3)],
])
def test_streamed_owl_and_magnitude_in_bfloat16_checkpoint(stages, model_dir_of, text_file, tmp_path):
    source = model_dir_of("qwen2", dtype=torch.bfloat16)
    run(recipe(source, text_file, False, stages), tmp_path / "memory")
    run(recipe(source, text_file, True, stages), tmp_path / "streamed")
    expected, got = all_tensors(tmp_path / "memory"), all_tensors(tmp_path / "streamed")
    assert all(t.dtype == torch.bfloat16 for t in got.values())
    assert all(torch.equal(got[n], t) for n, t in expected.items()) and sorted(expected) == sorted(got)


def test_streamed_output_loads_in_stock_transformers(model_dir_of, text_file, tmp_path):
    out = tmp_path / "streamed"
    run(recipe(model_dir_of("gemma3_text"), text_file, True, [dict(method="wanda")]), out)
    report = json.loads((out / "prunekit.json").read_text())
    check = textwrap.dedent(f"""
        import sys
        from transformers import AutoModelForCausalLM, AutoTokenizer
        m = AutoModelForCausalLM.from_pretrained({str(out)!r}); AutoTokenizer.from_pretrained({str(out)!r})
        assert (m.model.layers[1].mlp.up_proj.weight == 0).float().mean().item() == 0.5
        assert sum(p.numel() for p in m.parameters()) == {report["parameters"]}
        m.generate(m.get_input_embeddings().weight.new_ones(1, 3).long(), max_new_tokens=2)
        assert "prunekit" not in sys.modules
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr


@pytest.mark.parametrize(("stage", "message"), [
    (dict(method="gblm"), "back-propagates"),
    (dict(method="magnitude", allocation="global"), "global allocation ranks every weight"),
    (dict(method="block-influence", size=1), "changes the model's shape"),
])
def test_streaming_refuses_what_needs_the_whole_model(stage, message, tiny_model_dir, text_file):
    with pytest.raises(PrunekitError, match=message):
        recipe(tiny_model_dir, text_file, True, [stage])


def test_shard_writer_copies_bytes_and_rows_read_lazily(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    writer = ShardWriter(source)
    big = torch.arange(30000, dtype=torch.float32).reshape(10000, 3)
    writer.write({"a": big, "b": torch.ones(3, dtype=torch.bfloat16)})
    writer.finish()
    checkpoint = Checkpoint(source)
    ids = torch.tensor([0, 4, 9000, 9999])
    assert torch.equal(checkpoint.rows("a", ids, torch.float64, chunk=4096), big[ids].double())
    assert checkpoint.count_zeros("a", chunk=4096) == 1
    copy = tmp_path / "copy"
    copy.mkdir()
    writer = ShardWriter(copy)
    writer.copy(checkpoint, ["b", "a"])
    writer.finish()
    got = all_tensors(copy)
    assert torch.equal(got["a"], big) and got["b"].dtype == torch.bfloat16
    assert json.loads((copy / INDEX_NAME).read_text())["metadata"]["total_size"] == big.numel() * 4 + 6


def test_stream_flag_on_the_command_line(tiny_model_dir, text_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "streamed"
    code, stdout, err = run_cli(["prune", str(tiny_model_dir), "--stream", "--method", "sparsegpt", "--pattern", "2:4",
                                 "--calib", str(text_file), "--calib-samples", "4", "--calib-seq-len", "32",
                                 "--out", str(out)], capsys, monkeypatch)
    assert code == 0, err
    assert "50.00%" in stdout
    report = json.loads((out / "prunekit.json").read_text())
    assert report["recipe"]["stream"] is True and report["perplexity"]["pruned"] is None
    assert report["recipe"]["calibration"]["batch_size"] == 1  # streaming's own default
    assert any("perplexity skipped" in note for note in report["notes"])
    phases = report["prune_phase_seconds"]
    assert {"capture", "statistics", "masks_and_updates", "recompute_outputs", "layer_io"} <= set(phases)
    assert sum(phases.values()) <= report["seconds"]["prune"] + 0.05
    code, _, err = run_cli(["prune", str(tiny_model_dir), "--stream", "--method", "gblm", "--out", str(tmp_path / "x")],
                           capsys, monkeypatch)
    assert code == 2 and err.strip().startswith("error: gblm back-propagates") and not (tmp_path / "x").exists()
