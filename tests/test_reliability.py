"""Regression tests of the reliability issue: each is named after the defect it covers (defectN). Corpus and report
defects have their own files (test_reliability_corpus.py, test_reliability_report.py)."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_cli import assert_one_line_error, run_cli

from prunekit.api import recover_model
from prunekit.errors import PrunekitError
from prunekit.recipe import Recipe
from prunekit.recovery.finetune import RecoveryConfig


def tree_digest(path: Path) -> str:
    """One hash of every file name and byte below `path` (or of the file itself)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path.parent)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def small_recovery(text_file: Path, **overrides) -> RecoveryConfig:
    settings = {"steps": 4, "batch_size": 2, "seq_len": 16, "lr": 1e-2, "warmup": 1, "lora_rank": 4,
                "lora_alpha": 8, "checkpoint_every": 2, "source": str(text_file), **overrides}
    return RecoveryConfig(**settings)


def prune_args(model_dir: Path, text_file: Path, out: Path, *extra: str) -> list[str]:
    """A small Wanda prune (it reads the calibration text) of `model_dir`."""
    return ["prune", str(model_dir), "--out", str(out), "--calib", str(text_file), "--calib-samples", "2",
            "--calib-seq-len", "16", "--no-eval", "--method", "wanda", *extra]


# 1. recover deleted its work dir whatever it was: the input model, a user's folder.
@pytest.mark.parametrize("where", ["input", "foreign", "out-inside"])
def test_defect1_recover_never_deletes_a_work_dir_it_did_not_make(tiny_model_dir, text_file, tmp_path, where):
    foreign = tmp_path / "my-notes"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    out = tmp_path / "out"
    work = {"input": tiny_model_dir, "foreign": foreign, "out-inside": out / "work"}[where]
    before = {p: tree_digest(p) for p in (tiny_model_dir, foreign)}
    with pytest.raises(PrunekitError, match="work-dir"):
        recover_model(str(tiny_model_dir), out, small_recovery(text_file), work_dir=work)
    assert {p: tree_digest(p) for p in (tiny_model_dir, foreign)} == before
    assert not out.exists()


def test_defect1_recover_removes_only_its_own_work_dir(tiny_model_dir, text_file, tmp_path):
    empty = tmp_path / "empty-work"
    empty.mkdir()
    recover_model(str(tiny_model_dir), tmp_path / "out", small_recovery(text_file), work_dir=empty)
    assert not empty.exists()  # it became prunekit's (marker written), so it is cleaned up at the end
    assert (tmp_path / "out" / "prunekit.json").exists()


# 3. an interrupted run of model A was resumed by model B.
def test_defect3_checkpoint_of_another_model_is_not_resumed(tiny_model_dir, text_file, tmp_path, tokenizer):
    from conftest import tiny_model

    from prunekit.recovery import finetune

    other = tmp_path / "other"
    tiny_model("llama", seed=5).save_pretrained(other)
    tokenizer.save_pretrained(other)
    config = small_recovery(text_file)
    work = tmp_path / "work"
    real_save = finetune._save_checkpoint

    def stop_after_first(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    from transformers import AutoModelForCausalLM

    finetune._save_checkpoint = stop_after_first
    try:
        with pytest.raises(KeyboardInterrupt):
            finetune.recover(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer, config, work)
    finally:
        finetune._save_checkpoint = real_save
    said = []
    finetune.recover(AutoModelForCausalLM.from_pretrained(other), tokenizer, config, work, say=said.append)
    assert not any("resuming" in s for s in said)
    said.clear()
    finetune.recover(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer,
                     small_recovery(text_file, lr=2e-2), work, say=said.append)
    assert not any("resuming" in s for s in said)  # another setting: not resumed either


def test_defect3_fingerprint_covers_model_teacher_data_and_settings(tiny_model_dir, text_file, tmp_path):
    from conftest import tiny_model

    from prunekit.recovery.finetune import run_fingerprint

    a, b = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    windows = torch.arange(32).view(2, 16)
    config = small_recovery(text_file)
    base = run_fingerprint(config, a, None, windows)
    assert base == run_fingerprint(config, tiny_model("llama", seed=0), None, windows)
    assert base != run_fingerprint(config, b, None, windows)
    assert base != run_fingerprint(config, a, b, windows)
    assert base != run_fingerprint(config, a, None, windows + 1)
    assert base != run_fingerprint(small_recovery(text_file, seed=1), a, None, windows)
    assert base == run_fingerprint(small_recovery(text_file, checkpoint_every=3), a, None, windows)


# 4. the cached dense model could be the output of a prune.
def test_defect4_cache_is_never_an_output(tiny_model_dir, text_file, tmp_path, capsys, monkeypatch):
    cache = Path(os.environ["PRUNEKIT_CACHE"])
    target = cache / "models" / "smollm2-135m"
    for out in (target, cache, cache.parent):
        code, _, err = run_cli([*prune_args(tiny_model_dir, text_file, out), "--overwrite"], capsys, monkeypatch)
        assert code == 2 and "cache" in err, err
        assert_one_line_error(err)
    assert not target.exists()


def test_defect4_cached_conversions_are_verified_when_read(tmp_path, capsys):
    from prunekit.models import gguf

    folder = tmp_path / "converted"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    gguf.write_manifest(folder)
    assert gguf.intact(folder) and gguf._reusable(folder)
    (folder / "model.safetensors").write_bytes(b"pruned!")  # same size, other bytes
    assert not gguf.intact(folder)
    assert not gguf._reusable(folder)  # so it is converted again
    assert "does not match its conversion manifest" in capsys.readouterr().err
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "extra.safetensors").write_bytes(b"")
    assert not gguf.intact(folder)
    (folder / "extra.safetensors").unlink()
    (folder / gguf.MANIFEST).unlink()  # made by an older prunekit: cannot be verified
    assert not gguf.intact(folder)


def test_defect4_manifest_written_while_converting_matches_the_renamed_folder(tmp_path, monkeypatch):
    from prunekit.models import gguf
    from prunekit.outputs import atomic_directory

    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))
    out = tmp_path / "models" / "m"
    with atomic_directory(out, overwrite=True, cache=True) as tmp:  # as convert_gguf writes
        (tmp / "config.json").write_text("{}")
        gguf.write_manifest(tmp)
    assert gguf.intact(out)


# 5. a stage that selects nothing exited 0 with 0.00% sparsity.
@pytest.mark.parametrize("extra, message", [
    (["--targets", "nonexistent.*"], "match no linear"),
])
def test_defect5_targets_that_match_nothing(tiny_model_dir, text_file, tmp_path, capsys, monkeypatch, extra, message):
    out = tmp_path / "out"
    code, _, err = run_cli(prune_args(tiny_model_dir, text_file, out, *extra), capsys, monkeypatch)
    assert code == 2 and message in err
    assert_one_line_error(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "tiny-llama"]


@pytest.mark.parametrize("layers, message", [([99, -1], "greater than or equal to 0"), ([1, 99], "out of range"),
                                              ([], "at least 1 item")])
def test_defect5_layers_out_of_range(tiny_model_dir, text_file, tmp_path, capsys, monkeypatch, layers, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({"model": str(tiny_model_dir), "calibration": {"source": str(text_file)},
                                  "evaluation": {"ppl": False}, "stages": [{"method": "magnitude", "layers": layers}]}))
    out = tmp_path / "out"
    code, _, err = run_cli(["prune", "--recipe", str(recipe), "--out", str(out)], capsys, monkeypatch)
    assert code == 2 and message in err, err
    assert_one_line_error(err)
    assert not out.exists()


# 6. a sweep that failed on bad input left OUT.partial, and the corrected command was refused.
def test_defect6_failed_sweep_leaves_nothing_and_the_fix_runs(tiny_model_dir, text_file, tmp_path, capsys,
                                                             monkeypatch):
    out = tmp_path / "sweep"
    before = sorted(p.name for p in tmp_path.iterdir())
    common = ["sweep", str(tiny_model_dir), "--out", str(out), "--methods", "magnitude", "--sparsity", "0.5",
              "--calib", str(text_file), "--calib-samples", "2", "--calib-seq-len", "16", "--ppl-samples", "1"]
    for bad in (["--eval-text", str(tmp_path / "missing.txt"), "--ppl-seq-len", "16"],
                ["--eval-text", str(text_file), "--ppl-seq-len", "100000"],
                ["--eval-text", str(text_file), "--ppl-seq-len", "0"]):
        code, _, err = run_cli([*common, *bad], capsys, monkeypatch)
        assert code == 2, err
        assert_one_line_error(err)
        assert sorted(p.name for p in tmp_path.iterdir()) == before
    code, _, err = run_cli([*common, "--eval-text", str(text_file), "--ppl-seq-len", "16"], capsys, monkeypatch)
    assert code == 0, err
    assert (out / "sweep.json").exists() and not (out / ".prunekit-work").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "sweep"])


# 7. kill -9 during save leaked hidden .OUT.partial-* directories that reruns never removed.
def test_defect7_stale_temporaries_of_dead_processes_are_removed(tmp_path, capsys):
    from prunekit.outputs import INCOMPLETE, atomic_directory

    out = tmp_path / "model"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".model.partial-{dead_pid}-0123abcd"
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    alive = tmp_path / f".model.partial-{os.getppid()}-0123abcd"  # a live process's: left alone
    alive.mkdir()
    other = tmp_path / f".other.partial-{dead_pid}-0123abcd"  # another output's: left alone
    other.mkdir()
    with atomic_directory(out) as tmp:
        assert (tmp / INCOMPLETE).exists()  # a half-written output says so, inside
        (tmp / "config.json").write_text("{}")
    assert not stale.exists() and alive.exists() and other.exists()
    assert "left by an interrupted run" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]


def test_defect7_unfinished_output_is_not_loaded(tiny_model_dir, tmp_path):
    from prunekit.models.loading import load_model
    from prunekit.outputs import INCOMPLETE

    (tiny_model_dir / INCOMPLETE).write_text("")
    with pytest.raises(PrunekitError, match="unfinished"):
        load_model(str(tiny_model_dir))


# 8. a corrupt recover checkpoint gave a traceback on every rerun.
@pytest.mark.parametrize("damaged", ["adapter.safetensors", "optimizer.pt", "state.json"])
def test_defect8_corrupt_checkpoint_falls_back(tiny_model_dir, text_file, tmp_path, tokenizer, damaged):
    from transformers import AutoModelForCausalLM

    from prunekit.recovery import finetune

    config = small_recovery(text_file, steps=6)
    work = tmp_path / "work"
    real_save = finetune._save_checkpoint
    saves = []

    def stop_after_second(*args, **kwargs):
        real_save(*args, **kwargs)
        saves.append(args[2])
        if len(saves) == 2:
            raise KeyboardInterrupt

    finetune._save_checkpoint = stop_after_second
    try:
        with pytest.raises(KeyboardInterrupt):
            finetune.recover(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer, config, work)
    finally:
        finetune._save_checkpoint = real_save
    path = work / "checkpoint" / damaged
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    said = []
    _, resumed = finetune.recover(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer, config, work,
                                  say=said.append)
    if damaged == "state.json":  # unreadable state: the checkpoint is not this run's, the one before it is used
        assert said == [f"resuming from step 2 ({work / 'previous'})"]
    else:
        assert said[0].startswith(f"checkpoint {work / 'checkpoint'} is unusable") and damaged in said[0]
        assert said[1] == f"resuming from step 2 ({work / 'previous'})"
    _, fresh = finetune.recover(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer, config,
                                tmp_path / "fresh")
    assert resumed["losses"] == pytest.approx(fresh["losses"])


# 9. bad inputs that crashed with a traceback.
def write_bad_utf8(path: Path) -> Path:
    path.write_bytes(b"good text \xff\xfe broken \x80 bytes\n")
    return path


def test_defect9_non_utf8_files(tiny_model_dir, text_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    recipe = write_bad_utf8(tmp_path / "recipe.yaml")
    calib = tmp_path / "calib.jsonl"
    calib.write_bytes(b'{"text": "fine"}\n{"text": "\xff"}\n')
    task = tmp_path / "task.jsonl"
    task.write_bytes(b'{"context": "a", "choices": ["b", "c"], "gold": 0}\n\xff\n')
    text = write_bad_utf8(tmp_path / "train.txt")
    cases = [
        (["prune", "--recipe", str(recipe), "--out", str(out)], "recipe file"),
        (prune_args(tiny_model_dir, calib, out), f"{calib}:2 is not UTF-8"),
        (["eval", str(tiny_model_dir), "--no-ppl", "--tasks", str(task)], f"{task}:2 is not UTF-8"),
        (["recover", str(tiny_model_dir), "--text", str(text), "--steps", "1", "--no-ppl", "--out", str(out)],
         "not UTF-8"),
    ]
    for args, message in cases:
        code, _, err = run_cli(args, capsys, monkeypatch)
        assert code == 2 and message in err, (args, err)
        assert_one_line_error(err)
        assert not out.exists() and not (tmp_path / "out.work").exists()


@pytest.mark.parametrize("args, message", [
    (["prune", "--recipe", "{tmp}", "--out", "{tmp}/o"], "is a directory"),
    (["prune", "{model}", "--seed", str(10**23), "--out", "{tmp}/o"], "--seed"),
    (["eval", "{model}", "--ppl-samples", "0"], "samples"),
    (["eval", "{model}", "--ppl-seq-len", "0"], "seq_len"),
    (["sweep", "{model}", "--calib-samples", "0", "--out", "{tmp}/o"], "samples"),
    (["sweep", "{model}", "--ppl-samples", "0", "--out", "{tmp}/o"], "samples"),
    (["recover", "{model}", "--ppl-samples", "0", "--out", "{tmp}/o"], "samples"),
    (["recover", "{model}", "--ppl-seq-len", "0", "--out", "{tmp}/o"], "seq_len"),
    (["recover", "{model}", "--seed", str(10**23), "--out", "{tmp}/o"], "--seed"),
    (["prune", "{model}", "--method", "magnitude", "--damping", "nan", "--out", "{tmp}/o"], "damping"),
    (["prune", "{model}", "--sparsity", "abc", "--out", "{tmp}/o"], "--sparsity"),
    (["prune", "{model}", "--no-such-flag", "--out", "{tmp}/o"], "No such option"),
])
def test_defect9_bad_numbers_are_one_line_errors(tiny_model_dir, tmp_path, capsys, monkeypatch, args, message):
    work = tmp_path / "w"
    work.mkdir()
    args = [a.format(tmp=work, model=tiny_model_dir) for a in args]
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 2 and message in err, err
    assert_one_line_error(err)
    assert list(work.iterdir()) == []


# 13. a shared recipe could switch on trust_remote_code or allow_pickle.
@pytest.mark.parametrize("key", ["trust_remote_code", "allow_pickle"])
def test_defect13_code_running_switches_only_from_the_command_line(tmp_path, key):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"{key}: true\nstages: [{{method: magnitude}}]\n")
    with pytest.raises(PrunekitError, match=f"only the command line.*--{key.replace('_', '-')}"):
        Recipe.from_yaml(recipe)
    assert getattr(Recipe.from_yaml(recipe, **{key: True}), key) is True
    recipe.write_text(f"{key}: false\nstages: [{{method: magnitude}}]\n")
    assert getattr(Recipe.from_yaml(recipe), key) is False
    recipe.write_text("stages: [{method: magnitude}]\n")
    assert getattr(Recipe.from_yaml(recipe, **{key: True}), key) is True


# 15. messages.
def test_defect15_jsonl_error_names_its_line(tiny_model_dir, tmp_path, capsys, monkeypatch):
    calib = tmp_path / "calib.jsonl"
    calib.write_text("".join('{"text": "fine words here"}\n' for _ in range(5)) + '{"text": broken\n')
    code, _, err = run_cli(prune_args(tiny_model_dir, calib, tmp_path / "out"), capsys, monkeypatch)
    assert code == 2 and f"{calib}:6 is not valid JSON" in err, err


def test_defect15_one_block_model_says_what_works(tmp_path, tokenizer, text_file, capsys, monkeypatch):
    from conftest import CONFIGS
    from transformers import AutoModelForCausalLM

    config = CONFIGS["llama"]()
    config.num_hidden_layers = 1
    path = tmp_path / "one-block"
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    code, _, err = run_cli(["prune", str(path), "--method", "block-last", "--size", "1", "--no-eval",
                            "--out", str(tmp_path / "out")], capsys, monkeypatch)
    assert code == 2 and "has 1 blocks" in err and "from 1 to 0" not in err, err


def test_defect15_fetch_names_are_case_insensitive(capsys, monkeypatch):
    import prunekit.text.sources as sources

    monkeypatch.setattr(sources, "wikipedia_articles", lambda split: ["an article"])
    code, out, err = run_cli(["fetch", "Wikipedia"], capsys, monkeypatch)
    assert code == 0 and "1 calibration and 1 evaluation articles" in out, err


def test_defect15_workers_zero_is_refused(tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(["data", "experiment", "digits", "--workers", "0", "--out", str(tmp_path / "o")],
                           capsys, monkeypatch)
    assert code == 2 and "--workers" in err
    assert_one_line_error(err)


def test_defect15_eval_checks_limit_and_tasks_before_loading(tmp_path, capsys, monkeypatch):
    import prunekit.models.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    for args, message in ((["--limit", "0"], "--limit"), (["--tasks", "no_such_task"], "unknown task")):
        code, _, err = run_cli(["eval", str(tmp_path / "missing-model"), *args], capsys, monkeypatch)
        assert code == 2 and message in err, err


# found by the fuzz test (tests/test_fuzz.py) after the probe's 15 defects were fixed
def test_defect9_damaged_npz_is_one_line_error(tmp_path, capsys, monkeypatch):
    import numpy as np

    good = tmp_path / "good.npz"
    np.savez(good, x=np.zeros((8, 4), dtype=np.float32), y=np.arange(8) % 2)
    data = good.read_bytes()
    for name, content in (("empty.npz", b""), ("truncated.npz", data[:93]),
                          ("flipped.npz", data[:60] + bytes([data[60] ^ 0xFF]) + data[61:])):
        path = tmp_path / name
        path.write_bytes(content)
        code, _, err = run_cli(["data", "prune", str(path), "--score", "random", "--out", str(tmp_path / "o")],
                               capsys, monkeypatch)
        assert code == 2 and "cannot read" in err, (name, err)
        assert_one_line_error(err)
        assert not (tmp_path / "o").exists()


def test_defect9_damaged_parquet_text_is_one_line_error(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "calib.parquet"
    from conftest import make_text

    pq.write_table(pa.table({"text": [make_text(200, seed) for seed in range(20)]}), path, compression="snappy",
                   use_dictionary=False)
    data = bytearray(path.read_bytes())
    middle = len(data) // 3
    data[middle:middle + 64] = b"\xff" * 64  # a damaged data page, the footer intact
    path.write_bytes(bytes(data))
    code, _, err = run_cli(prune_args(tiny_model_dir, path, tmp_path / "out"), capsys, monkeypatch)
    assert code == 2, err
    assert_one_line_error(err)


def test_defect9_perplexity_needs_two_tokens_and_overflows_to_inf(tiny_model_dir, text_file, capsys, monkeypatch):
    from prunekit.eval.perplexity import perplexity

    code, _, err = run_cli(["eval", str(tiny_model_dir), "--text", str(text_file), "--ppl-seq-len", "1"],
                           capsys, monkeypatch)
    assert code == 2 and "seq_len" in err, err

    class Exploding(torch.nn.Module):
        def forward(self, input_ids, use_cache=False):
            logits = torch.zeros(*input_ids.shape, 4)
            logits[..., 0] = 1e6  # every target (token 1) is a million nats away
            return type("Out", (), {"logits": logits})()

        def parameters(self):
            yield torch.zeros(1)

    result = perplexity(Exploding(), torch.ones(1, 8, dtype=torch.long), "x")
    assert result.perplexity == float("inf")


def test_progress_writes_lines_when_the_output_is_not_a_terminal(monkeypatch):
    """rich shows a bar's final state only when stderr is a log: prunekit's bars also write a plain line every
    LOG_EVERY seconds there, and none on a terminal."""
    import io

    from rich.console import Console

    from prunekit import progress

    monkeypatch.setattr(progress, "LOG_EVERY", 0.0)
    for terminal in (False, True):
        out = io.StringIO()
        monkeypatch.setattr(progress, "console", Console(file=out, force_terminal=terminal, width=100))
        with progress.progress_bar() as bar:
            task = bar.add_task("scoring layers", total=3)
            for _ in range(3):
                bar.advance(task)
        lines = [line for line in out.getvalue().splitlines() if line.startswith("scoring layers: ")]
        assert lines == ([] if terminal else ["scoring layers: 1/3 (0 s)", "scoring layers: 2/3 (0 s)",
                                               "scoring layers: 3/3 (0 s)"])
