"""Recovery: LoRA and distillation merged back with the sparsity mask intact, resuming, bad input."""

import json

import pytest
import torch
from conftest import tiny_model
from test_cli import assert_one_line_error, run_cli
from transformers import AutoModelForCausalLM

from prunekit.api import recover_model
from prunekit.errors import PrunekitError
from prunekit.recovery import finetune
from prunekit.recovery.finetune import RecoveryConfig, recover
from prunekit.recovery.losses import distillation_loss
from prunekit.recovery.masks import sparsity_masks


@pytest.fixture()
def sparse_model_dir(tmp_path, tokenizer):
    model = tiny_model("llama", seed=1)
    with torch.no_grad():
        for module in model.model.layers.modules():
            if isinstance(module, torch.nn.Linear):
                weight = module.weight
                weight[weight.abs() < weight.abs().median()] = 0  # 50% magnitude, as a pruned model has
    path = tmp_path / "sparse"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def small(method="lora", **overrides):
    settings = {"method": method, "steps": 4, "batch_size": 2, "seq_len": 16, "lr": 1e-2, "warmup": 1,
                "lora_rank": 4, "lora_alpha": 8, **overrides}
    return RecoveryConfig(**settings)


@pytest.mark.parametrize("method", ["lora", "distill"])
def test_recovery_trains_and_keeps_exactly_the_zeros(sparse_model_dir, tiny_model_dir, text_file, tmp_path, method):
    before = AutoModelForCausalLM.from_pretrained(sparse_model_dir)
    masks = sparsity_masks(before)
    assert len(masks) == 7 * len(before.model.layers)
    out = tmp_path / "recovered"
    report = recover_model(str(sparse_model_dir), out, small(method, source=str(text_file)),
                           teacher=str(tiny_model_dir) if method == "distill" else None, say=lambda _: None)
    after = AutoModelForCausalLM.from_pretrained(out)  # stock transformers, no peft
    modules = dict(after.named_modules())
    changed = 0
    for name, mask in masks.items():
        weight = modules[name].weight
        assert torch.equal(weight != 0, mask), name  # same zeros, no more, no fewer
        changed += int((weight != dict(before.named_modules())[name].weight).sum())
    assert changed > 0  # the adapters were trained and merged
    assert not any("lora" in key for key in after.state_dict())
    section = report["recovery"]
    assert section["masked_zeros_after"] == section["masked_zeros_before"] > 0.49 * section["masked_weights"]
    assert report["decoder_linear_sparsity"]["after"] == report["decoder_linear_sparsity"]["before"] > 0.49
    assert len(section["losses"]) == 4
    assert json.loads((out / "prunekit.json").read_text())["recovery"]["method"] == method
    assert not (tmp_path / "recovered.work").exists()


def test_interrupted_recovery_resumes_from_its_checkpoint(sparse_model_dir, text_file, tmp_path, monkeypatch):
    config = small(source=str(text_file), steps=4, checkpoint_every=2)
    tokenizer = __import__("transformers").AutoTokenizer.from_pretrained(sparse_model_dir)
    reference = recover(AutoModelForCausalLM.from_pretrained(sparse_model_dir), tokenizer, config,
                        tmp_path / "reference", say=lambda _: None)[1]["losses"]
    calls = {"n": 0}
    original = finetune._loss

    def failing(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(finetune, "_loss", failing)
    with pytest.raises(KeyboardInterrupt):
        recover(AutoModelForCausalLM.from_pretrained(sparse_model_dir), tokenizer, config, tmp_path / "work",
                say=lambda _: None)
    monkeypatch.setattr(finetune, "_loss", original)
    messages = []
    _, section = recover(AutoModelForCausalLM.from_pretrained(sparse_model_dir), tokenizer, config,
                         tmp_path / "work", say=messages.append)
    assert messages == [f"resuming from step 2 ({tmp_path / 'work' / 'checkpoint'})"]
    assert section["losses"] == pytest.approx(reference, rel=1e-4)


def test_distillation_loss_by_hand():
    student = torch.log(torch.tensor([[[0.5, 0.5]]]))
    teacher = torch.log(torch.tensor([[[0.9, 0.1]]]))
    expected = 0.9 * torch.log(torch.tensor(0.9 / 0.5)) + 0.1 * torch.log(torch.tensor(0.1 / 0.5))
    assert distillation_loss(student, teacher).item() == pytest.approx(expected.item(), rel=1e-5)
    assert distillation_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-6)


def test_bad_recovery_input(sparse_model_dir, tmp_path, capsys, monkeypatch, tokenizer):
    with pytest.raises(PrunekitError, match="LoRA rank 0 must be a positive integer"):
        RecoveryConfig(lora_rank=0)
    with pytest.raises(PrunekitError, match="unknown recovery method"):
        RecoveryConfig(method="qlora")
    other = tmp_path / "other-vocab"
    model = tiny_model("llama")
    model.resize_token_embeddings(model.config.vocab_size + 8)
    model.save_pretrained(other)
    tokenizer.save_pretrained(other)
    code, _, err = run_cli(["recover", str(sparse_model_dir), "--method", "distill", "--teacher", str(other),
                            "--no-ppl", "--out", str(tmp_path / "x")], capsys, monkeypatch)
    assert code == 2 and "different vocabulary" in err
    assert_one_line_error(err)
    code, _, err = run_cli(["recover", str(sparse_model_dir), "--method", "distill", "--no-ppl", "--out",
                            str(tmp_path / "y")], capsys, monkeypatch)
    assert code == 2 and "needs a teacher" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
