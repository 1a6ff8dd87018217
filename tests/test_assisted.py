"""`prunekit bench TARGET --draft DRAFT` (speculative decoding) and `prunekit bench MODEL --sparse-kernels`.

The drafts are tiny random llamas around a tiny byte-level BPE tokenizer: the target itself, a vocabulary-trimmed
copy of it (a subset of the tokens, same strings, renumbered, and the target's rows of the embedding and head:
what vocabulary trimming makes) and a draft with a tokenizer trained on other text (a partial overlap).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import make_text
from test_cli import run_cli
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

from prunekit.errors import PrunekitError
from prunekit.eval import assisted, sparse_kernels
from prunekit.eval.assisted import Acceptance, AssistedConfig, compare_drafts, match_vocab, read_prompts
from prunekit.eval.sparse_kernels import _decode_seconds, is_2to4, magnitude_2to4, require_cuda, select_linears

SPECIALS = ["<pad>", "<unk>", "</s>"]
NEW_TOKENS = 12
# no EOS stop and full rounds (a random draft is never confident), so every draft runs several full rounds
FAST = AssistedConfig(new_tokens=NEW_TOKENS, warmup=0, draft_tokens=4, confidence=0.0, ignore_eos=True,
                      device="cpu")
PROMPTS = [make_text(10, seed) for seed in range(2)]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matrices: a second thread only waits on the first (and on the machine's other work)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- tiny tokenizers and models ----


def bpe(vocab_size: int = 400, seed: int = 0) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([make_text(3000, s) for s in range(seed, seed + 3)], trainer)
    return tok


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")


def trimmed(tok: Tokenizer, keep: set[str]) -> Tokenizer:
    """The tokens of `keep` and all they are built from, renumbered (specials first, the rest in reverse order, so
    that no id keeps its number by chance). Merges are dropped from the last one back: a merge is dropped when
    its token is not kept and no kept merge uses it; text whose tokens are all kept then tokenizes as before."""
    data = json.loads(tok.to_str())
    merges = data["model"]["merges"]
    kept_merges: list = []
    needed = set(keep)
    for merge in reversed(merges):
        left, right = merge if isinstance(merge, list) else merge.split(" ")
        if left + right in needed:
            kept_merges.append(merge)
            needed |= {left, right}
    dropped = {"".join(m if isinstance(m, list) else m.split(" ")) for m in merges} - needed
    data["model"]["merges"] = list(reversed(kept_merges))
    ordered = [t for t, _ in sorted(data["model"]["vocab"].items(), key=lambda kv: kv[1]) if t not in dropped]
    renumbered = [t for t in ordered if t in SPECIALS] + [t for t in reversed(ordered) if t not in SPECIALS]
    data["model"]["vocab"] = {t: i for i, t in enumerate(renumbered)}
    for added in data["added_tokens"]:
        added["id"] = data["model"]["vocab"][added["content"]]
    return Tokenizer.from_str(json.dumps(data))


def llama(vocab: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=None, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    return AutoModelForCausalLM.from_config(config).eval()


def sliced(model: nn.Module, full: PreTrainedTokenizerFast, sub: PreTrainedTokenizerFast) -> nn.Module:
    """`model` keeping the rows of `sub`'s tokens, in `sub`'s numbering."""
    full_vocab = full.get_vocab()
    rows = torch.tensor([full_vocab[t] for t, _ in sorted(sub.get_vocab().items(), key=lambda kv: kv[1])])
    small = llama(len(rows))
    state = model.state_dict()
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        state[name] = state[name][rows]
    small.load_state_dict(state)
    return small


def save(model: nn.Module, tokenizer: PreTrainedTokenizerFast, path: Path) -> str:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("assisted")
    full = wrap(bpe())
    target = llama(len(full))
    # what the target writes on the prompts, so that the trimmed copy keeps every token they need (see `trimmed`)
    used = set()
    for prompt in PROMPTS:
        ids = full(prompt, return_tensors="pt")["input_ids"]
        out, _, _ = assisted.generate(target, full, ids, assisted.generation_config(target, NEW_TOKENS, True))
        used |= set(full.convert_ids_to_tokens(ids[0].tolist() + out))
    sub = wrap(trimmed(bpe(), used))
    assert len(sub) < len(full) - 20
    other = wrap(bpe(400, seed=7))
    return {"target": save(target, full, root / "target"), "trimmed": save(sliced(target, full, sub), sub,
                                                                           root / "trimmed"),
            "other": save(llama(len(other), seed=1), other, root / "other")}


@pytest.fixture(scope="module")
def result(dirs) -> dict:
    lines: list[str] = []
    result = compare_drafts(dirs["target"], [dirs["target"], dirs["trimmed"], dirs["other"]], PROMPTS, FAST,
                            on_progress=lines.append)
    assert any("prompt 2/2" in line for line in lines)
    return result


# ---- speculative decoding ----


def test_every_draft_writes_what_the_target_writes_alone(result):
    assert result["target"]["tokens"] == len(PROMPTS) * NEW_TOKENS
    for draft in result["drafts"]:
        assert draft["identical"] == len(PROMPTS), draft["model"]
        assert all(p["identical"] and p["first_difference"] is None for p in draft["per_prompt"])
        assert draft["tokens"] == result["target"]["tokens"]
        assert draft["tokens_per_s"] > 0 and draft["speedup"] > 0


def test_the_target_as_its_own_draft_has_every_token_accepted(result):
    same = result["drafts"][0]
    assert same["vocab"]["mode"] == "same"
    assert same["proposed"] > 0 and same["accepted"] == same["proposed"] and same["acceptance"] == 1.0
    # per prompt, rounds of 4 drafted + 1 verified token, then 2 at the length limit: 12 tokens in 3 target passes
    assert same["rounds"] == 3 * len(PROMPTS) and same["tokens_per_round"] == pytest.approx(NEW_TOKENS / 3)


def test_a_vocabulary_trimmed_draft_is_mapped_by_token_string(result):
    mapped = result["drafts"][1]
    assert mapped["vocab"]["mode"] == "mapped" and mapped["vocab"]["overlap"] == 1.0
    assert mapped["vocab"]["draft_tokens"] < mapped["vocab"]["target_tokens"]
    # it computes the target's logits on the tokens it kept, and the outputs need no other: a wrong id map
    # would reject nearly everything
    assert mapped["acceptance"] == 1.0


def test_a_draft_with_a_partly_shared_vocabulary_goes_through_text(result):
    text = result["drafts"][2]
    assert text["vocab"]["mode"] == "text" and 0.5 <= text["vocab"]["overlap"] < 1
    assert text["proposed"] > 0


def test_result_is_json_and_renders(result):
    json.dumps(result)
    table = assisted.render_table(result)
    assert table.row_count == 1 + len(result["drafts"])


def test_too_small_a_vocabulary_overlap_is_refused(tokenizer):
    with pytest.raises(PrunekitError, match=r"shares only \d+% of its .* tokens .*--method vocab"):
        match_vocab(wrap(bpe()), tokenizer, names=("t", "d"))


def test_acceptance_counts_the_kept_prefix_of_each_proposal():
    class Proposals:
        def get_candidates(self, input_ids, **kwargs):
            return torch.tensor([[1, 2, 5, 6, 7]]), None

        def update_candidate_strategy(self, input_ids, scores, num_matches):
            self.seen = num_matches

    acceptance = Acceptance()
    generator = acceptance.watch(Proposals())
    generator.get_candidates(torch.tensor([[1, 2]]))
    generator.update_candidate_strategy(torch.tensor([[1, 2, 5, 6, 9]]), None, 2)  # 5, 6 kept; 9 replaced 7
    assert (acceptance.proposed, acceptance.accepted, acceptance.rounds, generator.seen) == (3, 2, 1, 2)
    generator.get_candidates(torch.tensor([[1, 2]]))
    generator.update_candidate_strategy(torch.tensor([[1, 2, 5, 6, 7]]), None, 2)  # all kept, the last as EOS
    assert acceptance.rate == pytest.approx(5 / 6)


def test_prompts_from_lines_and_from_jsonl(tmp_path):
    (tmp_path / "p.txt").write_text("def f():\n\n  x = 1\n")
    assert read_prompts(tmp_path / "p.txt") == ["def f():", "  x = 1"]
    (tmp_path / "p.jsonl").write_text('"a\\nb"\n{"prompt": "def g():\\n"}\n{"text": "c"}\n')
    assert read_prompts(tmp_path / "p.jsonl") == ["a\nb", "def g():\n", "c"]
    (tmp_path / "bad.jsonl").write_text('{"prompt": 3}\n')
    with pytest.raises(PrunekitError, match="line 1 has no prompt"):
        read_prompts(tmp_path / "bad.jsonl")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(PrunekitError, match="holds no prompts"):
        read_prompts(tmp_path / "empty.txt")


def test_a_renumbered_draft_stops_at_the_targets_eos_in_its_own_numbering():
    translator = SimpleNamespace(target_to_assistant_input_ids={151645: 40002, 151643: 40000})
    assert assisted._draft_ids(151645, translator) == [40002]
    assert assisted._draft_ids([151645, 151643, 7], translator) == [40002, 40000]
    assert assisted._draft_ids(None, translator) is None and assisted._draft_ids([9], translator) is None


# ---- the command line ----


def assert_one_line_error(code, err, *fragments):
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


def test_cli_compares_a_draft_and_writes_json(dirs, tmp_path, capsys, monkeypatch):
    (tmp_path / "p.txt").write_text(PROMPTS[0] + "\n")
    out = tmp_path / "draft.json"
    code, stdout, err = run_cli(["bench", dirs["target"], "--draft", dirs["trimmed"], "--prompts",
                                 str(tmp_path / "p.txt"), "--new-tokens", "4", "--warmup", "0", "--device", "cpu",
                                 "--out", str(out)], capsys, monkeypatch)
    assert code == 0, err
    assert "speculative decoding" in stdout and "mapped" in stdout
    saved = json.loads(out.read_text())
    assert saved["drafts"][0]["identical"] == 1 and saved["config"]["repeats"] == 1


@pytest.mark.parametrize(("args", "fragments"), [
    (["--draft", "{target}", "{target}"], ["--draft takes one model, not 2"]),
    (["--prompts", "p.txt"], ["--prompts only apply with --draft"]),
    (["--draft", "{target}", "--sparse-kernels"], ["one at a time"]),
    (["--draft", "{wordlevel}"], ["shares only", "--method vocab"]),
    (["--draft", "{target}", "--prompts", "{missing}"], ["prompts file", "not found"]),
    (["--draft", "{target}", "--draft-tokens", "0"], ["draft-tokens must be at least 1"]),
    (["--draft", "{target}", "--new-tokens", "300"], ["exceeds its context of 256"]),
    (["--draft", "{target}", "--device", "meta"], ["runs on cpu or cuda"]),
])
def test_cli_bad_inputs_are_one_line_errors(dirs, tiny_model_dir, tmp_path, capsys, monkeypatch, args, fragments):
    names = {"target": dirs["target"], "wordlevel": str(tiny_model_dir), "missing": str(tmp_path / "none.txt")}
    args = [a.format(**names) for a in args]
    device = [] if "--device" in args else ["--device", "cpu"]
    code, _, err = run_cli(["bench", dirs["target"], *args, *device], capsys, monkeypatch)
    assert_one_line_error(code, err, *fragments)


# ---- 2:4 sparse kernels (what runs without a GPU) ----


def test_sparse_kernels_need_a_cuda_gpu(dirs, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PrunekitError, match="needs a CUDA GPU"):
        require_cuda("auto")
    code, _, err = run_cli(["bench", dirs["target"], "--sparse-kernels"], capsys, monkeypatch)
    assert_one_line_error(code, err, "needs a CUDA GPU")


def test_2to4_check():
    dense = torch.randn(8, 16)
    assert not is_2to4(dense)
    sparse = magnitude_2to4(dense)
    assert is_2to4(sparse)
    assert (sparse.reshape(8, 4, 4) != 0).sum(-1).eq(2).all()  # the 2 largest of every 4 kept
    groups, pruned = dense.abs().reshape(8, 4, 4), sparse.reshape(8, 4, 4)
    assert torch.equal(pruned.abs().amax(-1), groups.amax(-1))
    one_zero_more = sparse.clone()
    one_zero_more[0, 0:4] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert is_2to4(one_zero_more)  # fewer than 2 of 4 is still 2:4
    assert not is_2to4(torch.ones(4, 6))  # a row length that is no multiple of 4


def test_linears_selected_are_the_2to4_ones_the_kernels_take():
    model = llama(256).half()
    layer = model.model.layers[0]
    for linear in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.self_attn.k_proj):
        linear.weight.data = magnitude_2to4(linear.weight.data)
    selected, skipped = select_linears(model, torch.float16, tile=(16, 16))
    assert selected == ["model.layers.0.self_attn.k_proj", "model.layers.0.mlp.gate_proj",
                        "model.layers.0.mlp.up_proj"]
    assert skipped["model.layers.1.mlp.down_proj"] == "not 2:4"
    # the kernels take no dimension below (and no multiple of) their tile: k_proj is 32 x 64
    selected, skipped = select_linears(model, torch.float16, tile=(64, 64))
    assert "model.layers.0.self_attn.k_proj" not in selected
    assert skipped["model.layers.0.self_attn.k_proj"].startswith("shape 32 x 64")


def test_the_timed_decode_loop_runs_with_the_kv_cache():
    model = llama(64)
    assert _decode_seconds(model, torch.randint(0, 64, (2, 5)), 3) > 0


def test_the_sparse_kernel_benchmark_runs_end_to_end_with_a_stand_in_for_the_kernels(dirs, monkeypatch):
    """All but the packing itself (CUDA only): selection, swapping, timing, the logits' difference, the table."""

    class Unpacked:  # "packs" a weight by copying it: the model's outputs must not change at all
        BACKEND = "stand-in"
        _DTYPE_SHAPE_CONSTRAINTS = {torch.bfloat16: SimpleNamespace(sparse_min_rows=16, sparse_min_cols=16)}

        @staticmethod
        def from_dense(weight):
            return weight.clone()

    monkeypatch.setattr(sparse_kernels, "require_cuda", lambda device: torch.device("cpu"))
    monkeypatch.setattr(sparse_kernels, "sparse_class", lambda: Unpacked)
    config = sparse_kernels.SparseKernelConfig(prompt_len=8, new_tokens=2, batch_sizes=(1, 2), repeats=2, warmup=0)
    with pytest.raises(PrunekitError, match="no 2:4-sparse linear weight .* prune it first"):
        sparse_kernels.benchmark_sparse_kernels(dirs["target"], config, on_progress=lambda _: None)
    result = sparse_kernels.benchmark_sparse_kernels(dirs["target"], config, make_2to4=True,
                                                     on_progress=lambda _: None)
    assert result["dtype"] == "bfloat16" and len(result["linears"]["sparse"]) == 2 * 7
    assert result["linears"]["dense"] == {"lm_head": "not 2:4"}
    assert result["logits"]["max_abs_diff"] == 0 and result["logits"]["argmax_agreement"] == 1
    assert len(result["sparse"]["decode_tokens_per_s"]["2"]["runs"]) == 2 and result["speedup"]["prefill"] > 0
    json.dumps(result)
    assert sparse_kernels.render_table(result).row_count == 2

