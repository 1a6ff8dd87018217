"""GGUF export, checked against transformers' own GGUF loader: logits of the file read back vs the source model,
the tokenizer read back vs the directory's, the metadata vs the weights' shapes; bad inputs via the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONFIGS, make_text
from gguf import GGMLQuantizationType, GGUFReader
from test_cli import run_cli
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from prunekit.models.export_gguf import export_gguf, identify_pre_tokenizer

TEXT = "The old stone bridge was built in 1234; people crossed the river<|im_end|> <think> king's ship!"
# Largest |logit difference| allowed per type; logits of these tiny random models are O(1).
TOLERANCE = {"f32": 1e-5, "f16": 1e-2, "q8_0": 5e-2}
CHAT = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def _bpe(pre: pre_tokenizers.PreTokenizer, vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer: a vocabulary and merges far smaller than any real model's, the special
    tokens at 0..2 and one user-defined (not special) added token, like a trimmed real tokenizer."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>",
                                                                          "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([make_text(3000, s) for s in range(2)], trainer)
    tok.add_tokens([AddedToken("<think>", special=False, normalized=False)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHAT
    return fast


@pytest.fixture(scope="module")
def bpe() -> PreTrainedTokenizerFast:
    return _bpe(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))


def _save(directory: Path, family: str, tokenizer: PreTrainedTokenizerFast, tied: bool = True, **shape: int
          ) -> Path:
    """A tiny random `family` model with `shape` overrides (a structurally pruned one: fewer blocks, a narrower
    MLP, fewer heads with an explicit head_dim) and its tokenizer; the embedding has a few rows more than the
    tokenizer has tokens, as real models pad theirs."""
    torch.manual_seed(0)
    base = CONFIGS[family]()
    settings = {**base.to_dict(), "vocab_size": len(tokenizer) + 3, "tie_word_embeddings": tied,
                "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, **shape}
    if settings.get("layer_types"):  # one per block, so it shrinks with them
        settings["layer_types"] = settings["layer_types"][: settings["num_hidden_layers"]]
    config = type(base)(**settings)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _read_back(path: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def _fields(path: Path) -> dict:
    reader = GGUFReader(path)
    values = {}
    for key, value in reader.fields.items():
        if not key.startswith("tokenizer.ggml.") or key.endswith(("_id", ".pre", ".model", "_token")):
            values[key] = value.contents()
    values["tensors"] = {t.name: t.tensor_type for t in reader.tensors}
    values["n_tokens"] = len(reader.fields["tokenizer.ggml.tokens"].data)
    values["n_merges"] = len(reader.fields["tokenizer.ggml.merges"].data)
    return values


# Dense and structurally pruned llama-family shapes (hidden 64, 4 heads of 16, 2 KV heads, MLP 128 dense).
SHAPES = {
    "dense": {},
    "fewer-blocks": {"num_hidden_layers": 1},
    "narrow-mlp": {"intermediate_size": 96},
    "fewer-heads": {"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16},
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_llama_family_f32_logits_match_exactly(family: str, shape: str, bpe: PreTrainedTokenizerFast,
                                               tmp_path: Path) -> None:
    source = _save(tmp_path / "model", family, bpe, tied=(shape != "narrow-mlp"), **SHAPES[shape])
    out = tmp_path / "model.gguf"
    result = export_gguf(source, out, "f32", progress=False)
    assert result.architecture == "llama" and out.exists()
    ids = torch.tensor([bpe(TEXT)["input_ids"]])
    reference = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    assert (_logits(reference, ids) - _logits(_read_back(out), ids)).abs().max() < TOLERANCE["f32"]


def test_qwen2_f32_logits_match_exactly(bpe: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    source = _save(tmp_path / "model", "qwen2", bpe, tied=False, num_hidden_layers=1, intermediate_size=96)
    out = tmp_path / "model.gguf"
    assert export_gguf(source, out, "f32", progress=False).architecture == "qwen2"
    ids = torch.tensor([bpe(TEXT)["input_ids"]])
    reference = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    assert (_logits(reference, ids) - _logits(_read_back(out), ids)).abs().max() < TOLERANCE["f32"]
    assert "output.weight" in _fields(out)["tensors"]  # untied: the head is written


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_qwen_with_an_explicit_head_size_stores_it(family: str, bpe: PreTrainedTokenizerFast, tmp_path: Path
                                                    ) -> None:
    """transformers' GGUF reader ignores key_length for qwen2/qwen3 (qwen2 derives head_dim = hidden / heads,
    qwen3 takes its default 128), so the tensors are read back into the source config here; llama.cpp reads
    key_length, which the file must carry."""
    source = _save(tmp_path / "model", family, bpe, num_hidden_layers=1, num_attention_heads=2,
                   num_key_value_heads=1, head_dim=16)
    out = tmp_path / "model.gguf"
    assert export_gguf(source, out, "f32", progress=False).architecture == family
    fields = _fields(out)
    assert fields[f"{family}.attention.key_length"] == fields[f"{family}.attention.value_length"] == 16
    assert fields[f"{family}.attention.head_count"] == 2 and fields[f"{family}.attention.head_count_kv"] == 1
    reference = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, config=reference.config,
                                                dtype=torch.float32).eval()
    ids = torch.tensor([bpe(TEXT)["input_ids"]])
    assert (_logits(reference, ids) - _logits(back, ids)).abs().max() < TOLERANCE["f32"]


def test_llama_biases_are_written_and_q_k_biases_permuted(bpe: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    """FLAP's bias compensation gives a llama MLP biases (mlp_bias), some llamas have attention biases: llama.cpp
    loads both; transformers' GGUF reader does not set the two flags, so this reads back into the source config."""
    source = _save(tmp_path / "model", "llama", bpe, num_hidden_layers=1, intermediate_size=96, mlp_bias=True,
                   attention_bias=True)
    reference = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    with torch.no_grad():  # random init leaves biases at zero: make them count
        for name, parameter in reference.named_parameters():
            if name.endswith(".bias"):
                parameter.normal_()
    reference.save_pretrained(source)
    out = tmp_path / "model.gguf"
    export_gguf(source, out, "f32", progress=False)
    assert {"blk.0.ffn_down.bias", "blk.0.attn_q.bias", "blk.0.attn_k.bias"} <= set(_fields(out)["tensors"])
    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, config=reference.config,
                                                dtype=torch.float32).eval()
    ids = torch.tensor([bpe(TEXT)["input_ids"]])
    assert (_logits(reference, ids) - _logits(back, ids)).abs().max() < TOLERANCE["f32"]


@pytest.mark.parametrize("kind", ["f16", "q8_0"])
def test_f16_and_q8_0_stay_within_tolerance_and_keep_norms_f32(kind: str, bpe: PreTrainedTokenizerFast,
                                                              tmp_path: Path) -> None:
    source = _save(tmp_path / "model", "llama", bpe, intermediate_size=96)
    out = tmp_path / f"model.{kind}.gguf"
    export_gguf(source, out, kind, progress=False)
    types = _fields(out)["tensors"]
    matrix = GGMLQuantizationType.F16 if kind == "f16" else GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == GGMLQuantizationType.F32
    assert types["blk.0.ffn_down.weight"] == types["blk.0.attn_q.weight"] == types["token_embd.weight"] == matrix
    ids = torch.tensor([bpe(TEXT)["input_ids"]])
    reference = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    difference = (_logits(reference, ids) - _logits(_read_back(out), ids)).abs().max().item()
    assert 0 < difference < TOLERANCE[kind]


def test_metadata_follows_the_weights_and_the_tokenizer(bpe: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    source = _save(tmp_path / "model", "llama", bpe, num_hidden_layers=1, intermediate_size=96,
                   num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    out = tmp_path / "model.gguf"
    export_gguf(source, out, "f32", progress=False)
    f = _fields(out)
    assert (f["llama.block_count"], f["llama.embedding_length"], f["llama.feed_forward_length"]) == (1, 64, 96)
    assert (f["llama.attention.head_count"], f["llama.attention.head_count_kv"]) == (2, 1)
    assert f["llama.attention.key_length"] == f["llama.rope.dimension_count"] == 16
    assert f["llama.context_length"] == 256 and f["llama.vocab_size"] == len(bpe) + 3
    assert "output.weight" not in f["tensors"]  # tied: llama.cpp reuses token_embd
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "gpt-2"
    merges = json.loads(bpe.backend_tokenizer.to_str())["model"]["merges"]
    assert f["n_tokens"] == len(bpe) + 3 and f["n_merges"] == len(merges) > 0
    assert (f["tokenizer.ggml.bos_token_id"], f["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert f["tokenizer.ggml.padding_token_id"] == 0 and f["tokenizer.ggml.add_bos_token"] is False
    assert f["tokenizer.chat_template"] == CHAT
    types = GGUFReader(out).fields["tokenizer.ggml.token_type"].contents()
    think = bpe.convert_tokens_to_ids("<think>")
    assert types[:3] == [3, 3, 3] and types[think] == 4 and types[5] == 1 and types[-1] == 5  # control, user, pad


def test_tokenizer_read_back_encodes_the_same_ids(bpe: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    source = _save(tmp_path / "model", "llama", bpe, num_hidden_layers=1)
    out = tmp_path / "model.gguf"
    export_gguf(source, out, "f16", progress=False)
    back = AutoTokenizer.from_pretrained(tmp_path, gguf_file=out.name)
    assert back(TEXT)["input_ids"] == bpe(TEXT)["input_ids"]
    assert (back.bos_token, back.eos_token) == ("<|im_start|>", "<|im_end|>")


def test_pre_tokenizer_is_recognised_by_behaviour(tmp_path: Path) -> None:
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    cases = {
        "qwen2": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
                                          byte_level]),
        "smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                           pre_tokenizers.ByteLevel(add_prefix_space=False)]),
        "gpt-2": pre_tokenizers.ByteLevel(add_prefix_space=False),
    }
    for name, pre in cases.items():
        path = tmp_path / f"{name}.json"
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre
        tok.save(str(path))
        assert identify_pre_tokenizer(path) == name
    odd = Tokenizer(models.BPE())
    odd.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), byte_level])
    odd.save(str(tmp_path / "odd.json"))
    with pytest.warns(UserWarning, match="default"):
        assert identify_pre_tokenizer(tmp_path / "odd.json") == "default"


# ---------------------------------------------------------------------------------------------- command line


def _one_line_error(code: int, err: str, words: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], err


def test_cli_exports_and_refuses_to_overwrite(bpe: PreTrainedTokenizerFast, tmp_path: Path,
                                              capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    source = _save(tmp_path / "model", "llama", bpe, num_hidden_layers=1)
    out = tmp_path / "m.gguf"
    code, stdout, err = run_cli(["export", str(source), "--to", "gguf", "--type", "q8_0", "--out", str(out)],
                             capsys, monkeypatch)
    assert code == 0 and "wrote" in stdout and out.exists(), err
    before = out.read_bytes()
    code, _, err = run_cli(["export", str(source), "--out", str(out)], capsys, monkeypatch)
    _one_line_error(code, err, "already exists")
    assert out.read_bytes() == before
    code, _, err = run_cli(["export", str(source), "--type", "f32", "--out", str(out), "--overwrite"], capsys,
                        monkeypatch)
    assert code == 0 and out.read_bytes() != before, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "model"]  # no temporary left behind


def test_cli_bad_inputs_are_one_line_errors_and_write_nothing(bpe: PreTrainedTokenizerFast, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    source = _save(tmp_path / "model", "llama", bpe, num_hidden_layers=1)
    gpt2 = tmp_path / "gpt2"
    AutoModelForCausalLM.from_config(CONFIGS["gpt2"]()).save_pretrained(gpt2)
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out.gguf"
    cases = [
        (["export", str(tmp_path / "missing"), "--out", str(out)], "does not exist"),
        (["export", str(tmp_path / "empty"), "--out", str(out)], "not a model directory"),
        (["export", str(gpt2), "--out", str(out)], "gpt2 family"),
        (["export", str(source), "--type", "q4_k", "--out", str(out)], "unknown --type"),
        (["export", str(source), "--to", "onnx", "--out", str(out)], "unknown export format"),
        (["export", str(source), "--out", str(source / "model.safetensors"), "--overwrite"], "input"),
    ]
    for args, words in cases:
        code, _, err = run_cli(args, capsys, monkeypatch)
        _one_line_error(code, err, words)
    assert not out.exists() and (source / "model.safetensors").stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "gpt2", "model"]


# ---------------------------------------------------------------------------------------------- real weights


@pytest.mark.real
def test_real_smollm2_round_trips_through_transformers(tmp_path: Path) -> None:
    from prunekit.models.loading import local_checkpoint

    source = local_checkpoint("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(source)
    reference = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer("The capital of France is Paris, and the river that runs through it is")
                        ["input_ids"]])
    expected = _logits(reference, ids)
    differences = {}
    for kind in ("f32", "q8_0"):
        out = tmp_path / f"smol.{kind}.gguf"
        result = export_gguf(source, out, kind, progress=False)
        differences[kind] = (expected - _logits(_read_back(out), ids)).abs().max().item()
    assert differences["f32"] < 1e-4 and differences["q8_0"] < 2.0, differences
    # The offline asset's tokenizer.json splits like GPT-2 (it was rebuilt from a GGUF by transformers).
    assert result.pre_tokenizer == "gpt-2" and result.vocab_size == 49152
    back = AutoTokenizer.from_pretrained(tmp_path, gguf_file="smol.f32.gguf")
    text = "Hello world! The year 1998 was<|im_end|> warm."
    assert back(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert np.isfinite(differences["q8_0"])
