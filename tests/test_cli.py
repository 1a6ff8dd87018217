import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import tiny_model

from prunekit.cli import main


def run_cli(args, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["prunekit", *args])
    capsys.readouterr()  # drop what fixtures printed
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(err):
    """The error is one line (progress bars of transformers may precede it) and there is no traceback."""
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and sum(line.startswith("error: ") for line in lines) == 1
    assert "Traceback" not in err


def small_run(model_dir, text_file, out):
    return [
        "prune", str(model_dir), "--out", str(out), "--calib", str(text_file), "--calib-samples", "4",
        "--calib-seq-len", "32", "--eval-text", str(text_file), "--ppl-samples", "2", "--ppl-seq-len", "64",
    ]


def test_prune_writes_a_model_stock_transformers_loads(tiny_model_dir, text_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "pruned"
    code, stdout, err = run_cli([*small_run(tiny_model_dir, text_file, out), "--method", "wanda",
                                 "--sparsity", "0.5"], capsys, monkeypatch)
    assert code == 0, err
    assert "perplexity" in stdout and "50.00%" in stdout
    report = json.loads((out / "prunekit.json").read_text())
    assert report["recipe"]["stages"][0]["method"] == "wanda"
    assert report["decoder_linear_sparsity"] == 0.5
    assert report["perplexity"]["dense"]["perplexity"] > 1 and report["perplexity"]["pruned"]["perplexity"] > 1
    assert {"prunekit", "torch", "transformers"} <= set(report["versions"])
    assert report["peak_rss_bytes"] > 0 and report["seconds"]["prune"] >= 0
    assert (out / "recipe.yaml").exists() and any(out.glob("*.safetensors"))
    check = textwrap.dedent(f"""
        import sys
        from transformers import AutoModelForCausalLM, AutoTokenizer
        m = AutoModelForCausalLM.from_pretrained({str(out)!r}); AutoTokenizer.from_pretrained({str(out)!r})
        w = m.model.layers[0].mlp.up_proj.weight
        assert (w == 0).float().mean().item() == 0.5
        assert "prunekit" not in sys.modules
        print("ok")
    """)
    assert subprocess.run([sys.executable, "-c", check], capture_output=True, text=True).stdout.strip() == "ok"


def test_recipe_file_with_two_stages(tiny_model_dir, text_file, tmp_path, capsys, monkeypatch):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(textwrap.dedent(f"""
        model: {tiny_model_dir}
        seed: 3
        calibration: {{source: {text_file}, samples: 4, seq_len: 32}}
        evaluation: {{ppl: false}}
        stages:
          - {{method: wanda, sparsity: 0.25}}
          - {{method: magnitude, pattern: "2:4", targets: ["mlp.*"]}}
    """))
    out = tmp_path / "out"
    code, _, err = run_cli(["prune", "--recipe", str(recipe), "--out", str(out)], capsys, monkeypatch)
    assert code == 0, err
    report = json.loads((out / "prunekit.json").read_text())
    assert report["seed"] == 3 and len(report["recipe"]["stages"]) == 2
    by_name = {m["name"]: m["sparsity"] for m in report["matrices"]}
    # 2:4 on top of 25% unstructured: at least half of every MLP matrix, the attention left at 25%
    assert by_name["layers.0.mlp.gate_proj"] >= 0.5 and abs(by_name["layers.0.self_attn.q_proj"] - 0.25) < 0.01


def test_eval_command_json(tiny_model_dir, text_file, capsys, monkeypatch):
    code, stdout, err = run_cli(["eval", str(tiny_model_dir), "--text", str(text_file), "--ppl-samples", "2",
                                 "--ppl-seq-len", "32", "--json"], capsys, monkeypatch)
    assert code == 0, err
    result = json.loads(stdout)
    assert result["perplexity"]["samples"] == 2 and result["perplexity"]["perplexity"] > 1


def test_models_lists_the_offline_models(capsys, monkeypatch):
    code, stdout, _ = run_cli(["models"], capsys, monkeypatch)
    assert code == 0 and "smollm2-135m" in stdout and "Apache-2.0" in stdout


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--sparsity", "1.0"], "outside [0, 1)"),
        (["--sparsity", "-0.1"], "outside [0, 1)"),
        (["--pattern", "4:4"], "1 <= N < M"),
        (["--pattern", "2-4"], "malformed pattern"),
        (["--pattern", "2:4", "--sparsity", "0.6"], "removes 0.5 of the weights"),
        (["--method", "obs"], "unknown method"),
        (["--calib-samples", "5000"], "fewer than the 5000 x 32"),
        (["--calib-seq-len", "100000"], "exceeds the model's context"),
        (["--allocation", "global", "--method", "wanda"], "global allocation"),
        (["--allocation", "owl", "--owl-lambda", "0.6"], "OWL lambda 0.6 out of range"),
        (["--method", "sparsegpt", "--damping", "0"], "dampening 0 must be > 0"),
        (["--method", "sparsegpt", "--pattern", "2:4", "--block-size", "6"], "multiple of M=4"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    extra, message, tiny_model_dir, text_file, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "never"
    default_sparsity = [] if "--sparsity" in extra or "--pattern" in extra else ["--sparsity", "0.5"]
    code, _, err = run_cli([*small_run(tiny_model_dir, text_file, out), *default_sparsity, *extra], capsys, monkeypatch)
    assert code == 2
    assert message in err
    assert_one_line_error(err)
    assert not out.exists() and not list(tmp_path.glob(".never*"))


def test_bad_model_paths(tmp_path, capsys, monkeypatch, text_file, tokenizer):
    (tmp_path / "empty").mkdir()
    no_tokenizer = tmp_path / "no-tokenizer"
    tiny_model("llama").save_pretrained(no_tokenizer)
    corrupt = tmp_path / "corrupt"
    tiny_model("llama").save_pretrained(corrupt)
    tokenizer.save_pretrained(corrupt)
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")
    bloom = tmp_path / "bloom"
    bloom.mkdir()
    (bloom / "config.json").write_text(json.dumps({"model_type": "bloom"}))
    (bloom / "model.safetensors").write_bytes(b"")
    cases = [
        (tmp_path / "missing", "not found"),
        (tmp_path / "empty", "no config.json"),
        (no_tokenizer, "could not load the tokenizer"),
        (corrupt, "could not load model"),
        (bloom, "unsupported architecture 'bloom'"),
    ]
    for path, message in cases:
        code, _, err = run_cli(["prune", str(path), "--out", str(tmp_path / "o"), "--no-eval", "--method",
                                "magnitude", "--sparsity", "0.5"], capsys, monkeypatch)
        assert code == 2 and message in err, (path, err)
        assert_one_line_error(err)
    assert not (tmp_path / "o").exists()


def test_existing_output_and_input_as_output(tiny_model_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "exists"
    out.mkdir()
    args = ["--method", "magnitude", "--sparsity", "0.5", "--no-eval"]
    code, _, err = run_cli(["prune", str(tiny_model_dir), "--out", str(out), *args], capsys, monkeypatch)
    assert code == 2 and "already exists" in err
    code, _, err = run_cli(["prune", str(tiny_model_dir), "--out", str(tiny_model_dir), "--overwrite", *args],
                           capsys, monkeypatch)
    assert code == 2 and "overwrite the input" in err
    assert (tiny_model_dir / "config.json").exists()


def test_pickled_weights_need_opt_in(tmp_path, capsys, monkeypatch):
    path = tmp_path / "pickled"
    path.mkdir()
    torch.save({}, path / "pytorch_model.bin")
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    code, _, err = run_cli(["prune", str(path), "--out", str(tmp_path / "o"), "--no-eval"], capsys, monkeypatch)
    assert code == 2 and "--allow-pickle" in err


def test_user_error_in_a_real_process_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "prunekit", "prune", str(tmp_path / "nope"), "--out",
                             str(tmp_path / "o"), "--sparsity", "0.5"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "not found" in result.stderr
