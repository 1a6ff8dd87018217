"""Vocabulary pruning: the choice of tokens, tokenizer surgery, the model's rows, and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_text
from test_structured import run_cli
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from tokenizers import decoders as tokenizer_decoders
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast

from prunekit.api import prune
from prunekit.errors import PrunekitError
from prunekit.methods.vocabulary import choose_tokens, coverage_count, with_parts
from prunekit.models.tokenizer_surgery import (
    merge_parts,
    required_tokens,
    shrink_tokenizer,
    tokenizer_json,
    trimmed_json,
)
from prunekit.recipe import Recipe

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
UNSEEN = "Zebra quizzically juxtaposed 42 ünïcödé ☃ glyphs: x**2 != y"  # words the training text never has


@pytest.fixture(scope="module")
def bpe() -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2 / Llama 3 / Qwen style) trained on the test text: 256 bytes, merges, 3 specials."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizer_decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([make_text(3000, s) for s in range(3)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIALS[1], eos_token=SPECIALS[2],
                                   pad_token=SPECIALS[0])


def bpe_model(tokens: int) -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tokens, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True)
    return AutoModelForCausalLM.from_config(config).eval()


# ---------------------------------------------------------------- the choice (pure)


def test_coverage_count_is_the_fewest_most_frequent_tokens_that_reach_it():
    counts = torch.tensor([0, 50, 30, 15, 5])
    assert coverage_count(counts, 0.5) == 1
    assert coverage_count(counts, 0.8) == 2
    assert coverage_count(counts, 0.81) == 3
    assert coverage_count(counts, 1.0) == 4


def test_with_parts_adds_every_merge_part_recursively():
    parts = {5: [(3, 4)], 4: [(1, 2)]}
    assert sorted(with_parts([5], parts, set())) == [1, 2, 3, 4, 5]
    assert sorted(with_parts([5], parts, {4})) == [3, 5]  # what is kept already is neither re-added nor expanded


def test_choose_tokens_keeps_required_frequent_and_their_parts():
    counts = torch.tensor([0, 0, 1, 0, 0, 100, 7, 3])
    parts = {5: [(3, 4)]}  # token 5 is made of 3 and 4, which the text never shows
    assert choose_tokens(counts, {0}, parts, coverage=0.9) == [0, 3, 4, 5]
    assert choose_tokens(counts, {0}, parts, coverage=0.99) == [0, 3, 4, 5, 6, 7]
    # a size: frequency order (5 with its parts, 6, 7, 2), then unused tokens by id
    assert choose_tokens(counts, {0}, parts, size=5) == [0, 3, 4, 5, 6]
    assert choose_tokens(counts, {0}, parts, size=8) == list(range(8))
    with pytest.raises(PrunekitError, match="keep at least 3"):
        choose_tokens(counts, {5}, parts, size=2)


# ---------------------------------------------------------------- tokenizer surgery


def test_required_tokens_are_specials_and_the_byte_alphabet(bpe):
    data = tokenizer_json(bpe)
    required = required_tokens(data)
    vocab = data["model"]["vocab"]
    assert required == {vocab[t] for t in [*SPECIALS, *pre_tokenizers.ByteLevel.alphabet()]}


def test_required_tokens_of_byte_fallback_bpe_are_the_byte_tokens():
    vocab = {"<unk>": 0, **{f"<0x{b:02X}>": 1 + b for b in range(256)}, "▁a": 257, "b": 258, "▁ab": 259}
    data = {"model": {"type": "BPE", "vocab": vocab, "merges": [["▁a", "b"]], "byte_fallback": True,
                      "unk_token": "<unk>"}, "added_tokens": [{"id": 0, "content": "<unk>"}], "pre_tokenizer": None}
    assert required_tokens(data) == set(range(257))
    assert merge_parts(data) == {259: [(257, 258)]}


def test_required_tokens_refuses_bpe_that_cannot_spell_every_text():
    data = {"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "added_tokens": [], "pre_tokenizer": None}
    with pytest.raises(PrunekitError, match="neither byte-level nor byte-fallback"):
        required_tokens(data)


def test_trimmed_json_drops_merges_whose_parts_or_result_are_removed(bpe):
    data = tokenizer_json(bpe)
    vocab = data["model"]["vocab"]
    parts = merge_parts(data)
    made = max(parts)  # the last merge's result
    keep = sorted(set(range(len(vocab))) - {made})
    trimmed = trimmed_json(data, keep)
    assert len(trimmed["model"]["merges"]) == len(data["model"]["merges"]) - 1 - sum(
        made in pair for pairs in parts.values() for pair in pairs)
    assert sorted(trimmed["model"]["vocab"].values()) == list(range(len(keep)))


def test_shrunk_tokenizer_spells_kept_text_the_same_and_any_text_still_round_trips(bpe):
    data = tokenizer_json(bpe)
    text = make_text(200, seed=5)
    used = set(bpe(text, add_special_tokens=False)["input_ids"])
    keep = choose_tokens(torch.zeros(len(bpe)), required_tokens(data), merge_parts(data), size=len(bpe))
    assert keep == list(range(len(bpe)))  # nothing to remove at full size
    counts = torch.bincount(torch.tensor(bpe(text, add_special_tokens=False)["input_ids"]), minlength=len(bpe))
    keep = choose_tokens(counts, required_tokens(data), merge_parts(data), coverage=1.0)
    assert used <= set(keep) and len(keep) < len(bpe)
    trimmed = shrink_tokenizer(bpe, keep)
    new_id = {old: new for new, old in enumerate(keep)}
    # text that uses only kept tokens tokenizes to the same tokens, renumbered
    assert trimmed(text, add_special_tokens=False)["input_ids"] == [
        new_id[i] for i in bpe(text, add_special_tokens=False)["input_ids"]]
    # any text still tokenizes, into more tokens, and decodes back to itself
    for sample in (UNSEEN, make_text(300, seed=9), "\n\t  mixed   whitespace\r\n"):
        ids = trimmed(sample, add_special_tokens=False)["input_ids"]
        assert trimmed.decode(ids) == sample
        assert len(ids) >= len(bpe(sample, add_special_tokens=False)["input_ids"])
    # special tokens are renumbered and still recognised as one token each
    assert trimmed.convert_tokens_to_ids(SPECIALS) == [new_id[i] for i in bpe.convert_tokens_to_ids(SPECIALS)]
    assert trimmed(SPECIALS[2], add_special_tokens=False)["input_ids"] == [trimmed.eos_token_id]


def test_non_bpe_tokenizer_is_refused(tokenizer):
    with pytest.raises(PrunekitError, match="WordLevel model: vocabulary pruning supports BPE"):
        tokenizer_json(tokenizer)


# ---------------------------------------------------------------- the model


def test_pruned_model_gives_the_kept_rows_logits_on_kept_text(bpe):
    text = make_text(400, seed=3)
    model = bpe_model(len(bpe))
    ids = bpe(make_text(60, seed=4), return_tensors="pt").input_ids
    with torch.no_grad():
        before = model(ids).logits
    result = prune(model, bpe, stages=[{"method": "vocab", "coverage": 1.0}],
                   calibration=torch.tensor([bpe(text)["input_ids"]]), progress=False)
    trimmed = result.tokenizer
    record = result.structured[0].removed
    kept = [i for i in range(len(bpe)) if bpe.convert_ids_to_tokens(i) in trimmed.get_vocab()]
    assert record["tokens_before"] == len(bpe) and record["tokens_after"] == len(kept) == len(trimmed)
    assert record["text_coverage"] == 1.0
    assert record["tokens_per_char_after"] == record["tokens_per_char_before"]  # all the text's tokens stay
    assert model.config.vocab_size == len(kept)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    new_ids = trimmed(make_text(60, seed=4), return_tensors="pt").input_ids
    with torch.no_grad():
        after = model(new_ids).logits
    torch.testing.assert_close(after, before[..., kept], rtol=0, atol=1e-5)


def test_vocabulary_stage_must_come_last():
    with pytest.raises(PrunekitError, match="put the vocabulary stage last"):
        Recipe.parse({"stages": [{"method": "vocab", "coverage": 0.99}, {"method": "block-last", "size": 1}]})
    with pytest.raises(PrunekitError, match="coverage is for the vocab method"):
        Recipe.parse({"stages": [{"method": "block-last", "size": 1, "coverage": 0.9}]})
    with pytest.raises(PrunekitError, match="exactly one of .*coverage"):
        Recipe.parse({"stages": [{"method": "vocab"}]})
    with pytest.raises(PrunekitError, match="removes vocab, not mlp"):
        Recipe.parse({"stages": [{"method": "vocab", "part": "mlp", "size": 4}]})


@pytest.fixture()
def bpe_model_dir(tmp_path: Path, bpe: PreTrainedTokenizerFast) -> Path:
    path = tmp_path / "tiny-bpe"
    bpe_model(len(bpe)).save_pretrained(path)
    bpe.save_pretrained(path)
    return path


def vocab_cli(model_dir: Path, text_file: Path, out: Path, *amount: str) -> list[str]:
    return ["prune", str(model_dir), "--method", "vocab", *amount, "--calib", str(text_file), "--eval-text",
            str(text_file), "--ppl-samples", "2", "--ppl-seq-len", "64", "--out", str(out)]


def test_cli_vocab_prune_reloads_in_stock_transformers(bpe_model_dir, text_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "trimmed"
    code, stdout, err = run_cli(vocab_cli(bpe_model_dir, text_file, out, "--keep-tokens", "300"), capsys,
                                monkeypatch)
    assert code == 0, err
    assert "tokens/char" in stdout and "perplexity per character" in stdout
    report = json.loads((out / "prunekit.json").read_text())
    stage = report["structure"]["stages"][0]["removed"]
    assert stage["tokens_after"] == 300
    assert report["perplexity"]["pruned"]["char_perplexity"] > 1
    tokenizer, model = AutoTokenizer.from_pretrained(out), AutoModelForCausalLM.from_pretrained(out)
    assert len(tokenizer) == model.config.vocab_size == model.get_input_embeddings().weight.shape[0] == 300
    assert tokenizer.decode(tokenizer(UNSEEN)["input_ids"]) == UNSEEN
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id


@pytest.mark.parametrize(("amount", "message"), [
    (("--keep-tokens", "100"), "would remove special or byte tokens"),
    (("--coverage", "1.5"), "coverage"),
    (("--keep-tokens", "5", "--size", "5"), "give one of them"),
])
def test_cli_vocab_bad_targets(bpe_model_dir, text_file, tmp_path, capsys, monkeypatch, amount, message):
    out = tmp_path / "never"
    code, _, err = run_cli(vocab_cli(bpe_model_dir, text_file, out, *amount), capsys, monkeypatch)
    assert code == 2 and message in err.strip().splitlines()[-1]  # (above it: the weights' loading bar)
    assert not out.exists()
