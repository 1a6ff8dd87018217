"""The papers' tasks on the real offline data and SmolLM2's real weights, against lm-evaluation-harness's own results.

tests/data/lm_eval_smollm2.json holds what lm_eval 0.4.13 computed (bench/lm_eval_reference.py) on the first
documents of each task: a hash of every request's strings, the log-likelihoods, acc / acc_norm and the generations.
"""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import prunekit
from prunekit.eval.generation import generate_answers
from prunekit.eval.harness import HARNESS_TASKS
from prunekit.eval.loglikelihood import model_max_length, score_examples
from prunekit.eval.zeroshot import predictions

pytestmark = pytest.mark.real
REFERENCE = json.loads((Path(__file__).parent / "data" / "lm_eval_smollm2.json").read_text())


@pytest.fixture(scope="module")
def smollm2():
    return prunekit.load_model("smollm2-135m", dtype="float32")


def test_offline_sets_have_the_published_sizes():
    sizes = {"arc_easy": 570, "arc_challenge": 299, "hellaswag": 10042, "piqa": 1838, "winogrande": 1267,
             "boolq": 3270, "openbookqa": 500, "rte": 277, "social_iqa": 1954, "mmlu": 14042, "triviaqa": 7993,
             "nq_open": 3610}
    assert {name: len(HARNESS_TASKS[name].examples()) for name in sizes} == sizes


def _documents(task: str, doc_ids: list[int]) -> list:
    examples = HARNESS_TASKS[task].examples()
    return [examples[i] for i in doc_ids]


@pytest.mark.parametrize("task", [t for t, s in REFERENCE["tasks"].items() if "loglikelihoods" in s[0]])
def test_multiple_choice_equals_lm_eval(smollm2, task):
    samples = REFERENCE["tasks"][task]
    examples = _documents(task, [s["doc_id"] for s in samples])
    for example, sample in zip(examples, samples, strict=True):
        requests = [list(r) for r in example.requests()]
        assert hashlib.sha256(json.dumps(requests).encode()).hexdigest() == sample["arguments_sha256"]
    scores = score_examples(smollm2.model, smollm2.tokenizer, examples)
    for example, lls, sample in zip(examples, scores, samples, strict=True):
        assert lls == pytest.approx(sample["loglikelihoods"], abs=1e-4)
        pred, pred_norm = predictions(lls, example.choices)
        assert float(pred in example.gold) == float(sample["acc"])
        if "acc_norm" in sample:
            assert float(pred_norm in example.gold) == float(sample["acc_norm"])


@pytest.mark.parametrize("task", ["triviaqa", "nq_open"])
def test_generation_equals_lm_eval(smollm2, task):
    samples = REFERENCE["tasks"][task]
    questions = _documents(task, [s["doc_id"] for s in samples])
    assert [q.context for q in questions] == [s["context"] for s in samples]
    answers = generate_answers(smollm2.model, smollm2.tokenizer, [q.context for q in questions],
                               max_length=model_max_length(smollm2.model, smollm2.tokenizer))
    assert answers == [s["generation"] for s in samples]
    rule = HARNESS_TASKS[task].exact_match
    assert [float(rule.hit(a, q.answers)) for a, q in zip(answers, questions, strict=True)] == [
        float(s["exact_match"]) for s in samples]


def test_cli_eval_runs_a_group_and_a_generation_task(tmp_path):
    command = [sys.executable, "-m", "prunekit", "eval", "smollm2-135m", "--no-ppl", "--tasks", "rte,nq_open",
               "--limit", "4", "--json"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    scores = {r["task"]: r for r in json.loads(result.stdout)["zeroshot"]}
    assert scores["rte"]["metric"] == "acc" and scores["rte"]["examples"] == 4
    assert scores["nq_open"]["metric"] == "exact_match" and scores["nq_open"]["acc_norm"] is None
