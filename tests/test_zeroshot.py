"""Zero-shot multiple-choice scoring: harness conventions on hand-computed cases, batching, tasks and their errors."""

import dataclasses
import io
import json
import math
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import WORDS, make_text, tiny_model
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from torch import nn
from transformers import PreTrainedTokenizerFast

from prunekit.assets.fetch import sha256_of
from prunekit.assets.registry import BIGBENCH
from prunekit.errors import PrunekitError
from prunekit.eval import zeroshot
from prunekit.eval.loglikelihood import Example, continuation_loglikelihoods, encode_pair, score_examples
from prunekit.eval.zeroshot import (
    Task,
    ZeroShotResult,
    bigbench_examples,
    evaluate_task,
    evaluate_tasks,
    load_task,
    mean_stderr,
    predictions,
    subsample,
    summarize,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> None:
    """The models here are tiny: a second thread only adds synchronisation (20x slower on a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Bigram(nn.Module):
    """A causal LM whose next-token log-probabilities are a fixed table indexed by the current token."""

    def __init__(self, logprobs: torch.Tensor, with_logits_to_keep: bool = True) -> None:
        super().__init__()
        self.table = nn.Parameter(logprobs, requires_grad=False)
        self.config = SimpleNamespace(max_position_embeddings=64)
        self.with_logits_to_keep = with_logits_to_keep

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False, logits_to_keep: int = 0) -> SimpleNamespace:
        logits = self.table[input_ids]
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


class BigramNoKeep(Bigram):
    def forward(self, input_ids: torch.Tensor, use_cache: bool = False) -> SimpleNamespace:  # no logits_to_keep
        return SimpleNamespace(logits=self.table[input_ids])


def bigram_table(vocab: int, transitions: dict[tuple[int, int], float]) -> torch.Tensor:
    """Log-probabilities: the given transitions, the rest of each row's mass spread evenly."""
    probs = torch.full((vocab, vocab), 1.0 / vocab, dtype=torch.float64)
    for a in {a for a, _ in transitions}:
        given = {b: p for (x, b), p in transitions.items() if x == a}
        probs[a] = (1.0 - sum(given.values())) / (vocab - len(given))
        for b, p in given.items():
            probs[a, b] = p
    return probs.log().float()


def ids(tokenizer, *words: str) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(w) for w in words]


def test_continuation_loglikelihood_is_the_masked_sum_of_log_softmax():
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, math.log(2.0)]]])
    targets = torch.tensor([[2, 0]])
    expected = (3 - math.log(math.e + math.e**2 + math.e**3)) + math.log(1 / 4)
    both = continuation_loglikelihoods(logits, targets, torch.tensor([[True, True]]))
    first = continuation_loglikelihoods(logits, targets, torch.tensor([[True, False]]))
    assert both.item() == pytest.approx(expected, abs=1e-6)
    assert first.item() == pytest.approx(3 - math.log(math.e + math.e**2 + math.e**3), abs=1e-6)


def test_acc_takes_the_highest_loglikelihood_acc_norm_the_highest_per_character():
    # "city": -2.0 in total but -0.5 per character; "north old stone bridge": -4.8 in total, -0.22 per character
    assert predictions([-2.0, -4.8], ["city", "north old stone bridge"]) == (0, 1)
    assert predictions([-1.0, -1.0, -3.0], ["ab", "cd", "efghij"]) == (0, 0)  # all tie per character: the first
    result = summarize("t", [Example("c", ("city", "north old stone bridge"), (1,))], [[-2.0, -4.8]], 0.0)
    assert (result.acc, result.acc_norm) == (0.0, 1.0)


def test_hand_computed_example_end_to_end(tokenizer):
    """A bigram model whose probabilities we set: acc and acc_norm disagree, as the harness would decide."""
    the, river, city, north, old, stone, bridge = ids(tokenizer, "the", "river", "city", "north", "old", "stone",
                                                      "bridge")
    p_city, p_step = math.exp(-2.0), 0.3
    table = bigram_table(len(tokenizer), {(river, city): p_city, (river, north): p_step, (north, old): p_step,
                                          (old, stone): p_step, (stone, bridge): p_step})
    example = Example("the river", ("city", "north old stone bridge"), (1,))
    (lls,) = score_examples(Bigram(table), tokenizer, [example])
    assert lls == pytest.approx([-2.0, 4 * math.log(p_step)], abs=1e-5)  # -2.0 and -4.82
    result = evaluate_task(Bigram(table), tokenizer, Task("hand", (example,)))
    assert (result.acc, result.acc_norm, result.examples) == (0.0, 1.0, 1)
    assert result.hits == (0,)  # per example, what acc averages
    assert result.chance == 0.5


def _direct_loglikelihoods(model: nn.Module, tokenizer, example: Example) -> list[float]:
    """One unpadded forward per choice over context + continuation, summing the continuation's log-probabilities."""
    out = []
    for choice in example.choices:
        context_ids, target_ids = encode_pair(tokenizer, example.context, " " + choice)
        sequence = torch.tensor([context_ids + target_ids])
        with torch.no_grad():
            logprobs = model(input_ids=sequence).logits.float().log_softmax(-1)[0]
        out.append(sum(logprobs[len(context_ids) + j - 1, t].item() for j, t in enumerate(target_ids)))
    return out


def _examples(n: int, seed: int = 0) -> list[Example]:
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(n):
        context = make_text(int(rng.integers(3, 25)), seed=seed * 1000 + i)
        n_choices = int(rng.integers(2, 5))
        choices = tuple(" ".join(rng.choice(WORDS, size=int(rng.integers(1, 6)))) for _ in range(n_choices))
        examples.append(Example(context, choices, (int(rng.integers(0, len(choices))),)))
    return examples


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_batched_scores_equal_one_forward_per_choice(tokenizer, batch_size):
    model = tiny_model("llama")
    examples = _examples(7)
    scores = score_examples(model, tokenizer, examples, batch_size=batch_size)
    for example, lls in zip(examples, scores, strict=True):
        assert lls == pytest.approx(_direct_loglikelihoods(model, tokenizer, example), abs=1e-4)


def test_models_without_logits_to_keep_get_the_same_scores(tokenizer):
    table = torch.randn(len(tokenizer), len(tokenizer)).log_softmax(-1)
    examples = _examples(5, seed=1)
    without = score_examples(BigramNoKeep(table), tokenizer, examples, 4)
    with_keep = score_examples(Bigram(table), tokenizer, examples, 4)
    assert [ll for lls in without for ll in lls] == pytest.approx([ll for lls in with_keep for ll in lls], abs=1e-6)


def test_long_sequences_are_cut_on_the_left_like_the_harness(tokenizer):
    table = torch.randn(len(tokenizer), len(tokenizer)).log_softmax(-1)
    model = Bigram(table)
    model.config.max_position_embeddings = 4  # inputs keep the last 4 + 1 tokens, the last one only predicted
    example = Example("the river city north old stone", ("bridge was",), (0,))
    ((ll,),) = score_examples(model, tokenizer, [example])
    stone, bridge, was = ids(tokenizer, "stone", "bridge", "was")
    assert ll == pytest.approx((table[stone, bridge] + table[bridge, was]).item(), abs=1e-6)


# --- tokenization -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bpe() -> PreTrainedTokenizerFast:
    """A small byte-level BPE: spaces belong to the following word, and words split into pieces."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([make_text(3000, s) for s in range(2)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def test_the_leading_space_goes_with_the_continuation(bpe):
    context_ids, target_ids = encode_pair(bpe, "The old river", " bridge")
    assert context_ids == bpe("The old river")["input_ids"]
    assert bpe.convert_ids_to_tokens(target_ids) == bpe.convert_ids_to_tokens(bpe(" bridge")["input_ids"])
    assert bpe.convert_ids_to_tokens(target_ids)[0].startswith("Ġ")  # the space is inside the first token
    # a context's trailing space moves to the continuation, so both spellings score the same tokens
    assert encode_pair(bpe, "The old river ", "bridge") == (context_ids, target_ids)


def test_a_word_straddling_the_boundary_is_split_at_the_context_length(bpe):
    context, continuation = "The old ri", "ver bridge"
    whole = bpe(context + continuation)["input_ids"]
    context_ids, target_ids = encode_pair(bpe, context, continuation)
    assert bpe.convert_ids_to_tokens(context_ids)[-1] == "Ġri"
    assert bpe.convert_ids_to_tokens(whole)[len(context_ids) - 1] == "Ġriver"  # the merged token counts as context
    assert target_ids == whole[len(context_ids):] == bpe(" bridge")["input_ids"]
    assert target_ids != bpe(continuation)["input_ids"]  # not the continuation tokenized on its own


def test_a_choice_without_tokens_of_its_own_is_an_error(tokenizer):
    model = Bigram(torch.zeros(len(tokenizer), len(tokenizer)))
    with pytest.raises(PrunekitError, match="no tokens of its own"):  # the harness asserts it
        score_examples(model, tokenizer, [Example("the river", ("city", ""), (0,))])


def test_an_empty_context_is_the_eos_token(bpe):
    context_ids, target_ids = encode_pair(bpe, "", " river")
    assert context_ids == [bpe.eos_token_id]
    assert target_ids == bpe(" river", add_special_tokens=False)["input_ids"]


# --- statistics ---------------------------------------------------------------------------------------------------


def test_stderr_is_the_sample_standard_error_and_the_interval_is_normal():
    mean, stderr = mean_stderr([1.0, 0.0, 1.0, 1.0])
    assert mean == 0.75
    assert stderr == pytest.approx(np.std([1, 0, 1, 1], ddof=1) / 2)
    result = ZeroShotResult("t", 4, mean, stderr, 0.5, 0.25, 1.0)
    low, high = result.interval("acc")
    assert (low, high) == pytest.approx((0.75 - 1.959964 * stderr, 1.0))  # clipped at 1
    data = result.to_dict()
    assert data["acc_ci95"] == [low, high] and data["acc_norm"] == 0.5
    assert json.loads(json.dumps(data)) == data


def test_mcnemar_counts_discordant_pairs_and_gives_the_exact_binomial_p_value():
    a = [1, 1, 1, 1, 1, 0, 0, 1, 0, 1]
    b = [1, 0, 0, 0, 1, 0, 1, 1, 0, 0]
    only_a, only_b, p = zeroshot.mcnemar(a, b)
    assert (only_a, only_b) == (4, 1)
    # By hand: 5 discordant pairs, P(X <= 1 | n=5, 1/2) = (1 + 5) / 32, two-sided: 12 / 32.
    assert p == pytest.approx(12 / 32)
    assert zeroshot.mcnemar(a, a) == (0, 0, 1.0)
    assert zeroshot.mcnemar([1] * 20, [0] * 20)[2] == pytest.approx(2 / 2 ** 20)
    with pytest.raises(PrunekitError, match="same examples"):
        zeroshot.mcnemar(a, b[:-1])


# --- tasks --------------------------------------------------------------------------------------------------------


def test_unknown_task_is_one_line_listing_the_tasks():
    with pytest.raises(PrunekitError) as error:
        load_task("nonexistent_task")
    message = str(error.value)
    assert "\n" not in message
    assert all(name in message for name in ("social_iqa", "goal_inference", "bigbench:TASK", ".jsonl"))


def test_jsonl_tasks(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [{"context": "Q: 2 + 2?\nA:", "choices": ["4", "5"], "gold": 0},
            {"query": "The sky is", "choices": ["blue", "green", "azure"], "gold": [0, 2]},
            {"context": "Water is", "choices": ["dry", "wet"], "gold": "wet"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    task = load_task(str(path))
    assert task.name == str(path)
    assert task.examples == (Example("Q: 2 + 2?\nA:", ("4", "5"), (0,)),
                             Example("The sky is", ("blue", "green", "azure"), (0, 2)),
                             Example("Water is", ("dry", "wet"), (1,)))


@pytest.mark.parametrize("line, fragment", [
    ("{not json", ":1 is not valid JSON"),
    ('{"context": "x", "choices": ["a"], "gold": 0}', "2 or more"),
    ('{"context": "x", "choices": ["a", "b"], "gold": 2}', "names no choice"),
    ('{"context": "x", "choices": ["a", "b"], "gold": "c"}', "names no choice"),
    ('{"choices": ["a", "b"], "gold": 0}', '"context"'),
])
def test_bad_jsonl_rows_are_one_line_errors(tmp_path, line, fragment):
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(PrunekitError, match=fragment) as error:
        load_task(str(path))
    assert "\n" not in str(error.value)


def test_subsample_is_a_seeded_shuffle():
    examples = _examples(30)
    assert subsample(examples, 10, seed=3) == subsample(examples, 10, seed=3)
    assert subsample(examples, 10, seed=3) != subsample(examples, 10, seed=4)
    assert subsample(examples, 10, seed=3) == subsample(examples, 20, seed=3)[:10]  # limits nest
    assert sorted(map(id, subsample(examples, None, 0))) == sorted(map(id, examples))
    assert len(subsample(examples, 100, 0)) == 30


def test_evaluate_tasks_is_deterministic_and_batch_size_independent(tmp_path, tokenizer):
    path = tmp_path / "task.jsonl"
    path.write_text("\n".join(json.dumps({"context": e.context, "choices": list(e.choices), "gold": e.gold[0]})
                              for e in _examples(40, seed=2)))
    model = tiny_model("llama")
    first = evaluate_tasks(model, tokenizer, [str(path)], limit=12, seed=5, batch_size=8, progress=False)
    again = evaluate_tasks(model, tokenizer, [str(path)], limit=12, seed=5, batch_size=3, progress=False)
    keys = ("task", "examples", "acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "chance")
    assert [[r.to_dict()[k] for k in keys] for r in first] == [[r.to_dict()[k] for k in keys] for r in again]
    assert first[0].examples == 12
    with pytest.raises(PrunekitError, match="limit"):
        evaluate_tasks(model, tokenizer, [str(path)], limit=0)


# --- BIG-bench tasks, from a small archive laid out like the bigbench sdist -----------------------------------------

SOCIAL = {"name": "social_iqa", "append_choices_to_input": True, "examples": [
    {"input": "Tracy went home. What does Tracy need to do? ", "target_scores": {"Sleep": 0, "Eat": 0, "Rest": 1}},
    {"input": "Tracy went home. What does Tracy need to do? ", "target_scores": {"Sleep": 0, "Eat": 0, "Rest": 1}},
    {"input": "Riley sang. How does Riley feel?", "target_scores": {"happy ": 1, "sad": 0, "tired": 0}},
]}
GOAL = {"name": "goal_inference", "examples": [
    {"input": "The most reasonable goal of 'Boil water' is ", "target_scores": {"Make tea": 1, "Fly": 0}},
]}
PREFIXED = {"name": "physics", "task_prefix": "Identify the formula.\n\n", "example_input_prefix": "\nProblem: ",
            "example_output_prefix": "\nFormula: ", "append_choices_to_input": False, "examples": [
                {"input": "A drop in a field.", "target_scores": {"F = q * E": 1, "a = v / t": 0, "p = m v": 1}},
                {"input": "All equal.", "target_scores": {"x": 0, "y": 0}}]}
GENERATIVE = {"name": "poems", "examples": [{"input": "Write a poem", "target": "roses"}]}


@pytest.fixture()
def bigbench_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("PRUNEKIT_CACHE", str(cache))
    folder = cache / "packages" / "bigbench-1.0.0"
    folder.mkdir(parents=True)
    files = {"social_iqa": SOCIAL, "goal_step_wikihow/goal_inference": GOAL, "goal_step_wikihow": {"name": "g"},
             "physics": PREFIXED, "poems": GENERATIVE}
    with tarfile.open(folder / "bigbench-1.0.0.tar.gz", "w:gz") as archive:
        for name, data in files.items():
            payload = json.dumps(data).encode()
            info = tarfile.TarInfo(f"bigbench-1.0.0/bigbench/benchmark_tasks/{name}/task.json")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    (folder / "VERIFIED").write_text("bigbench-1.0.0.tar.gz")
    # the cache is verified against the pinned digest at every read: pin this stand-in's
    fake = dataclasses.replace(BIGBENCH, sha256=sha256_of(folder / "bigbench-1.0.0.tar.gz"))
    monkeypatch.setattr(zeroshot, "BIGBENCH", fake)
    return cache


def test_bigbench_prompt_is_bigbench_own_format(bigbench_cache):
    task = load_task("bigbench:social_iqa", prompt="bigbench")
    assert len(task.examples) == 2  # the duplicate is dropped, as BIG-bench does
    order = np.random.RandomState(42).permutation(["Eat", "Rest", "Sleep"])  # BIG-bench's fixed order
    assert task.examples[0] == Example(
        "Q: Tracy went home. What does Tracy need to do? " + "".join(f"\n  choice: {c}" for c in order) + "\nA:",
        ("Sleep", "Eat", "Rest"), (2,))
    assert task.examples[1].choices == ("happy", "sad", "tired")  # choices are stripped
    goal = load_task("goal_inference", prompt="bigbench")
    assert goal.examples[0].context.startswith("Q: The most reasonable goal of 'Boil water' is \n  choice: ")
    physics = load_task("bigbench:physics", prompt="bigbench")
    # the task's prefixes replace the defaults; it asks for no listed choices
    assert physics.examples[0].context == "Identify the formula.\n\n\nProblem: A drop in a field.\nFormula:"


def test_plain_prompt_is_the_input_with_the_task_own_prefixes(bigbench_cache):
    social = load_task("bigbench:social_iqa")
    assert [e.context for e in social.examples] == ["Tracy went home. What does Tracy need to do?",
                                                    "Riley sang. How does Riley feel?"]
    assert load_task("goal_inference").examples[0].context == "The most reasonable goal of 'Boil water' is"
    physics = load_task("bigbench:physics")
    # prefixes are used; all keys with the top score are correct; an example with no correct choice is dropped
    assert physics.examples == (Example("Identify the formula.\n\n\nProblem: A drop in a field.\nFormula:",
                                        ("F = q * E", "a = v / t", "p = m v"), (0, 2)),)
    with pytest.raises(PrunekitError, match="unknown prompt 'fancy': use plain or bigbench"):
        load_task("bigbench:social_iqa", prompt="fancy")


def test_bigbench_index_lists_multiple_choice_tasks_only(bigbench_cache):
    assert zeroshot.bigbench_tasks() == ["goal_step_wikihow/goal_inference", "physics", "social_iqa"]
    assert load_task("bigbench:goal_step_wikihow/goal_inference").examples == load_task("goal_inference").examples


def test_unknown_bigbench_task_lists_the_available_ones(bigbench_cache):
    with pytest.raises(PrunekitError) as error:
        load_task("bigbench:social_iq")
    message = str(error.value)
    assert "\n" not in message and "did you mean social_iqa" in message
    assert "goal_step_wikihow/goal_inference, physics, social_iqa" in message
    with pytest.raises(PrunekitError, match="unknown BIG-bench task 'poems'"):
        load_task("bigbench:poems")


def test_bigbench_examples_without_appended_choices():
    data = {"append_choices_to_input": False,
            "examples": [{"input": "Is it so?", "target_scores": {"yes": 1, "no": 0}}]}
    assert bigbench_examples(data, "bigbench") == [Example("Q: Is it so?\nA:", ("yes", "no"), (0,))]
    assert bigbench_examples(data) == [Example("Is it so?", ("yes", "no"), (0,))]


@pytest.mark.real
def test_real_bigbench_tasks():
    social, goal = load_task("bigbench:social_iqa"), load_task("goal_inference")
    assert len(social.examples) == 1935 and len(goal.examples) == 1703  # social_iqa has 19 duplicates
    # a few examples have a choice fewer or more than the task's 3 or 4 (as in the source data); one correct each
    social_sizes, goal_sizes = [len(e.choices) for e in social.examples], [len(e.choices) for e in goal.examples]
    assert social_sizes.count(3) == 1931 and set(social_sizes) == {2, 3}
    assert goal_sizes.count(4) == 1701 and set(goal_sizes) == {4, 5}
    assert all(len(e.gold) == 1 for e in social.examples + goal.examples)
    assert social.examples[0].context.endswith("What does Tracy need to do before this?")
    listed = load_task("bigbench:social_iqa", prompt="bigbench").examples[0].context
    assert listed.startswith("Q: Tracy") and "\n  choice: Find somewhere to go" in listed and listed.endswith("\nA:")
