"""Zero-shot accuracy on multiple-choice and closed-book generation tasks, scored as lm-evaluation-harness scores them.

Protocol (lm-evaluation-harness 0.4: `ConfigurableTask.construct_requests` / `process_results` in
lm_eval/api/task.py, `mean_stderr` in lm_eval/api/metrics.py); how choices are tokenized and scored is in
prunekit.eval.loglikelihood, how answers are generated and matched in prunekit.eval.generation:

- acc: the choice with the highest log-likelihood is a correct one; acc_norm: the same with the log-likelihood
  divided by the choice's length in characters (without the leading space); ties go to the first choice; for a
  generation task, acc is the exact-match rate;
- stderr: sample standard deviation of the per-example 0/1 scores / sqrt(n); the 95% interval is
  mean +- 1.96 stderr (normal approximation), clipped to [0, 1].

Tasks: the pruning papers' tasks with the harness's prompts (prunekit.eval.harness: arc_easy, arc_challenge,
hellaswag, piqa, winogrande, boolq, openbookqa, rte, social_iqa, mmlu, mmlu_SUBJECT, triviaqa, nq_open; the groups
"paper" and "knowledge"). BIG-bench JSON tasks from the bigbench sdist: context = (task_prefix +
example_input_prefix + input + example_output_prefix).strip() with the task's own prefixes (prompt "plain", the
default), or BIG-bench's JsonTask format as in the harness's copy of BIG-bench, hails/bigbench (prompt "bigbench":
default prefixes "Q: " / "A: " and the choices listed in the input in BIG-bench's seeded order); choices = the
stripped keys of target_scores, correct = the keys with the highest score (BIG-bench's multiple_choice_grade; the
harness takes the first of them, which is the same on every task with a single best key); duplicate examples
dropped. Or a JSONL file of {"context" | "query", "choices", "gold"} rows, gold an index, a list of indices or the
text of a choice.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import random
import re
import tarfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from torch import nn
from transformers import PreTrainedTokenizerBase

from prunekit.assets.cache import cache_dir
from prunekit.assets.fetch import extract_member, fetch_package
from prunekit.assets.registry import BIGBENCH
from prunekit.errors import PrunekitError
from prunekit.eval.generation import ExactMatch, Question, generate_answers
from prunekit.eval.harness import HARNESS_TASKS, TASK_GROUPS
from prunekit.eval.loglikelihood import Example, model_max_length, score_examples
from prunekit.eval.sources import SOURCES
from prunekit.files import json_lines, temporary_sibling
from prunekit.progress import progress_bar

Z95 = 1.959963984540054
BIGBENCH_PREFIX = "bigbench:"
_BIGBENCH_ROOT = "bigbench-1.0.0/bigbench/benchmark_tasks/"
_BIGBENCH_MEMBER = re.compile(re.escape(_BIGBENCH_ROOT) + r"(.+)/task\.json$")
_BIGBENCH_SEED = 42  # JsonTask's random_seed: fixes the order in which choices are appended to the input
PROMPTS = ("plain", "bigbench")

# Short names for BIG-bench multiple-choice tasks; any other one is reachable as bigbench:TASK[/SUBTASK] (BIG-bench's
# own social_iqa as bigbench:social_iqa: `social_iqa` is the harness's SocialIQA).
TASKS: dict[str, str] = {
    "goal_inference": "goal_step_wikihow/goal_inference",
    "step_inference": "goal_step_wikihow/step_inference",
    "date_understanding": "date_understanding",
    "physics": "physics",
    "causal_judgment": "causal_judgment",
}


@dataclass(frozen=True)
class Task:
    name: str
    examples: tuple[Example | Question, ...]
    metric: str = "acc"  # what a paper's table reports for it: acc, acc_norm or exact_match
    exact_match: ExactMatch | None = None  # a generation task's answer comparison

    @property
    def generation(self) -> bool:
        return self.exact_match is not None


@dataclass
class ZeroShotResult:
    task: str
    examples: int
    acc: float
    acc_stderr: float
    acc_norm: float | None  # None for generation tasks
    acc_norm_stderr: float | None
    seconds: float
    chance: float = 0.0  # expected acc of a uniform random guess
    hits: tuple[int, ...] = field(default=(), repr=False)  # acc per example (1 or 0), in example order
    metric: str = "acc"  # the one a paper's table reports: acc, acc_norm, or exact_match (held in acc)

    def interval(self, metric: str = "acc") -> tuple[float, float]:
        """95% normal-approximation interval of `acc` or `acc_norm`, clipped to [0, 1]."""
        mean, stderr = getattr(self, metric), getattr(self, f"{metric}_stderr")
        return max(0.0, mean - Z95 * stderr), min(1.0, mean + Z95 * stderr)

    @property
    def score(self) -> float:
        """The value of `metric`."""
        return self.acc_norm if self.metric == "acc_norm" and self.acc_norm is not None else self.acc

    def to_dict(self) -> dict:
        fields = {k: v for k, v in asdict(self).items() if k != "hits"}
        norm = list(self.interval("acc_norm")) if self.acc_norm is not None else None
        return {**fields, "acc_ci95": list(self.interval("acc")), "acc_norm_ci95": norm}


# --- scoring: pure functions of tensors and numbers ---------------------------------------------------------------


def predictions(loglikelihoods: Sequence[float], choices: Sequence[str]) -> tuple[int, int]:
    """(argmax of the log-likelihoods, argmax of log-likelihood / characters of the choice); first index on ties."""
    def first_max(values: Sequence[float]) -> int:
        return max(range(len(values)), key=lambda i: (values[i], -i))

    per_char = [ll / max(1, len(c)) for ll, c in zip(loglikelihoods, choices, strict=True)]
    return first_max(loglikelihoods), first_max(per_char)


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (sample standard deviation / sqrt(n)), as the harness reports; 0 below 2 values."""
    n = len(values)
    if n == 0:
        return 0.0, 0.0
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def mcnemar(hits_a: Sequence[int], hits_b: Sequence[int]) -> tuple[int, int, float]:
    """Paired comparison of two models on the same examples: (examples only A got right, only B got right, exact
    two-sided McNemar p-value, i.e. a binomial test of the discordant pairs at 1/2)."""
    if len(hits_a) != len(hits_b):
        raise PrunekitError(f"paired comparison needs the same examples: {len(hits_a)} vs {len(hits_b)} results")
    only_a = sum(1 for a, b in zip(hits_a, hits_b, strict=True) if a and not b)
    only_b = sum(1 for a, b in zip(hits_a, hits_b, strict=True) if b and not a)
    n = only_a + only_b
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2 ** n if n else 1.0
    return only_a, only_b, min(1.0, 2 * tail)


def summarize(task: str, examples: Sequence[Example], loglikelihoods: Sequence[Sequence[float]],
              seconds: float, metric: str = "acc") -> ZeroShotResult:
    acc, acc_norm = [], []
    for example, lls in zip(examples, loglikelihoods, strict=True):
        pred, pred_norm = predictions(lls, example.choices)
        acc.append(float(pred in example.gold))
        acc_norm.append(float(pred_norm in example.gold))
    chance = sum(len(e.gold) / len(e.choices) for e in examples) / max(1, len(examples))
    return ZeroShotResult(task, len(examples), *mean_stderr(acc), *mean_stderr(acc_norm), seconds, chance,
                          tuple(int(a) for a in acc), metric)


def summarize_generation(task: str, hits: Sequence[bool], seconds: float) -> ZeroShotResult:
    """Exact-match rate (held in acc) of a generation task; there is no acc_norm and no chance level."""
    mean, stderr = mean_stderr([float(h) for h in hits])
    return ZeroShotResult(task, len(hits), mean, stderr, None, None, seconds, 0.0, tuple(int(h) for h in hits),
                          "exact_match")


# --- tasks --------------------------------------------------------------------------------------------------------


def subsample(examples: Sequence[Example | Question], limit: int | None, seed: int) -> list:
    """The first `limit` examples of a seeded shuffle (so a smaller limit picks a subset of a larger one)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [examples[i] for i in order[: len(order) if limit is None else limit]]


def bigbench_examples(data: dict, prompt: str = "plain") -> list[Example]:
    """The multiple-choice examples of a BIG-bench task.json (zero-shot), duplicates dropped as BIG-bench does.

    prompt "plain": the task's own prefixes (if it has any) around the input. prompt "bigbench": BIG-bench's JsonTask
    format, which lm-evaluation-harness's bigbench tasks use: its default "Q: " / "A: " prefixes, and the choices
    listed in the input unless the task says otherwise."""
    if prompt not in PROMPTS:
        raise PrunekitError(f"unknown prompt {prompt!r}: use {' or '.join(PROMPTS)}")
    seen: set[str] = set()
    examples = []
    for raw in data.get("examples", []):
        key = json.dumps(raw)
        if key in seen or not isinstance(raw, dict) or not raw.get("target_scores") or "input" not in raw:
            continue
        seen.add(key)
        example = _bigbench_example(data, raw, prompt == "bigbench")
        if example is not None:
            examples.append(example)
    return examples


def _bigbench_example(data: dict, raw: dict, bigbench_prompt: bool) -> Example | None:
    scores: dict = raw["target_scores"]
    best = max(scores.values())
    if len(scores) > 1 and best <= min(scores.values()):
        return None  # no correct choice: BIG-bench rejects such examples
    text = raw["input"]
    if bigbench_prompt and data.get("append_choices_to_input", True):
        # BIG-bench draws a fresh RandomState(42) per example: a fixed permutation of the sorted choices.
        choice_prefix = data.get("choice_prefix", "\n  choice: ")
        order = np.random.RandomState(seed=_BIGBENCH_SEED).permutation(sorted(scores))
        text += choice_prefix + choice_prefix.join(order)
    defaults = ("\nQ: ", "\nA: ") if bigbench_prompt else ("", "")
    # stripped as the harness's copy of BIG-bench is; a trailing space would otherwise double the choice's own
    context = (str(data.get("task_prefix", "")) + data.get("example_input_prefix", defaults[0]) + text
               + data.get("example_output_prefix", defaults[1])).strip()
    choices = tuple(str(c).strip() for c in scores)
    return Example(context, choices, tuple(i for i, s in enumerate(scores.values()) if s == best))


def jsonl_examples(path: Path) -> list[Example]:
    """Rows of {"context" (or "query"), "choices", "gold"}: gold an index, a list of indices or a choice's text."""
    examples = [_jsonl_example(row, f"{path}:{number}") for number, row in json_lines(path, "task file")]
    if not examples:
        raise PrunekitError(f"{path} holds no examples")
    return examples


def _jsonl_example(row: object, where: str) -> Example:
    if not isinstance(row, dict):
        raise PrunekitError(f"{where}: expected a JSON object with context, choices and gold")
    context = row.get("context", row.get("query"))
    choices = row.get("choices")
    if not isinstance(context, str) or not isinstance(choices, list) or len(choices) < 2 or "gold" not in row:
        raise PrunekitError(f"{where}: expected \"context\" (or \"query\"): str, \"choices\": a list of 2 or more "
                            "strings, \"gold\": an index, a list of indices or the text of a choice")
    choices = [str(c) for c in choices]
    gold = row["gold"]
    indices = [choices.index(gold)] if isinstance(gold, str) and gold in choices else (
        gold if isinstance(gold, list) else [gold])
    if not indices or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(choices)
                              for i in indices):
        raise PrunekitError(f"{where}: gold {gold!r} names no choice (0..{len(choices) - 1} or a choice's text)")
    return Example(context, tuple(choices), tuple(sorted(set(indices))))


def _bigbench_dir() -> Path:
    return cache_dir() / "zeroshot" / "bigbench"


def bigbench_tasks() -> list[str]:
    """Every BIG-bench task (TASK or TASK/SUBTASK) with multiple-choice examples; the archive is read once and the
    list cached."""
    index = _bigbench_dir() / "tasks.json"
    if not index.exists():
        names = []
        with tarfile.open(fetch_package(BIGBENCH), "r|gz") as archive:  # one sequential pass
            for member in archive:
                match = _BIGBENCH_MEMBER.match(member.name)
                source = archive.extractfile(member) if match and member.isfile() else None
                if match and source is not None and b'"target_scores"' in source.read():
                    names.append(match.group(1))
        index.parent.mkdir(parents=True, exist_ok=True)
        partial = temporary_sibling(index)
        partial.write_text(json.dumps(sorted(names)))
        partial.replace(index)
    return json.loads(index.read_text())


def _bigbench_task(name: str, check: bool, prompt: str) -> list[Example]:
    path = _bigbench_dir() / name / "task.json"
    if not path.exists():
        if check and name not in bigbench_tasks():
            raise PrunekitError(_unknown_bigbench(name))
        extract_member(fetch_package(BIGBENCH), f"{_BIGBENCH_ROOT}{name}/task.json", path)
    examples = bigbench_examples(json.loads(path.read_text(encoding="utf-8")), prompt)
    if not examples:
        raise PrunekitError(f"BIG-bench task {name!r} has no multiple-choice examples")
    return examples


def _unknown_bigbench(name: str) -> str:
    available = bigbench_tasks()
    close = difflib.get_close_matches(name, available, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return (f"unknown BIG-bench task {name!r}{hint}: the multiple-choice tasks are {', '.join(available)}")


def expand_tasks(specs: Sequence[str]) -> list[str]:
    """Task names with the groups (see TASK_GROUPS) replaced by their tasks, each task once, in order."""
    out: list[str] = []
    for spec in specs:
        for name in TASK_GROUPS.get(spec, (spec,)):
            if name not in out:
                out.append(name)
    return out


@functools.lru_cache(maxsize=64)
def _harness_task(name: str, source: str) -> Task:
    spec = HARNESS_TASKS[name]
    return Task(name, tuple(spec.examples(source)), spec.metric, spec.exact_match)


def load_task(spec: str, prompt: str = "plain", source: str = "offline") -> Task:
    """A task by name: a harness task (see prunekit.eval.harness; its data from `source`, offline or hub), a
    BIG-bench short name (see TASKS), bigbench:TASK[/SUBTASK], or a .jsonl file. `prompt` says how BIG-bench
    examples become contexts (see bigbench_examples); JSONL contexts are used as they are."""
    if spec in HARNESS_TASKS:
        if source not in SOURCES:
            raise PrunekitError(f"unknown task data source {source!r}: use {' or '.join(SOURCES)}")
        return _harness_task(spec, source)
    if spec in TASKS:
        return Task(spec, tuple(_bigbench_task(TASKS[spec], False, prompt)))
    if spec.startswith(BIGBENCH_PREFIX):
        name = spec[len(BIGBENCH_PREFIX):].strip("/")
        return Task(spec, tuple(_bigbench_task(name, True, prompt)))
    path = Path(spec).expanduser()
    if path.suffix == ".jsonl" and path.is_file():
        return Task(spec, tuple(jsonl_examples(path)))
    hint = " (no such file)" if path.suffix == ".jsonl" else ""
    close = difflib.get_close_matches(spec, [*TASK_GROUPS, *HARNESS_TASKS, *TASKS], n=3)
    hint = hint or (f" (did you mean {', '.join(close)}?)" if close else "")
    harness = ", ".join(k for k in HARNESS_TASKS if not k.startswith("mmlu_"))
    raise PrunekitError(f"unknown task {spec!r}{hint}: use {harness}, mmlu_SUBJECT, the groups "
                        f"{', '.join(TASK_GROUPS)}, the BIG-bench tasks {', '.join(TASKS)}, bigbench:TASK[/SUBTASK] "
                        "for any BIG-bench multiple-choice task, or a .jsonl file of {context, choices, gold} rows")


def evaluate_task(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    on_examples: Callable[[int], None] | None = None,
) -> ZeroShotResult:
    """One task on `limit` examples of a shuffle seeded with `seed` (all of them without a limit)."""
    examples = subsample(task.examples, limit, seed)
    start = time.perf_counter()
    if task.exact_match is not None:
        answers = generate_answers(model, tokenizer, [q.context for q in examples], batch_size=batch_size,
                                   max_length=model_max_length(model, tokenizer), on_done=on_examples)
        hits = [task.exact_match.hit(a, q.answers) for a, q in zip(answers, examples, strict=True)]
        return summarize_generation(task.name, hits, time.perf_counter() - start)
    scores = score_examples(model, tokenizer, examples, batch_size, on_examples)
    return summarize(task.name, examples, scores, time.perf_counter() - start, task.metric)


def evaluate_tasks(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[str],
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
    prompt: str = "plain",
    source: str = "offline",
) -> list[ZeroShotResult]:
    """Zero-shot accuracy on each named task or group (see load_task, expand_tasks); `limit` examples per task,
    drawn by a shuffle seeded with `seed`; `batch_size` sequences (one per choice, an example's choices together)
    per forward pass, or questions per generation batch."""
    if limit is not None and limit < 1:
        raise PrunekitError(f"limit must be at least 1, got {limit}")
    loaded = [load_task(t, prompt, source) for t in expand_tasks(tasks)]  # every name checked before any scoring
    results = []
    with progress_bar() as bar:
        for task in loaded:
            total = len(task.examples) if limit is None else min(limit, len(task.examples))
            bar_task = bar.add_task(task.name, total=total, visible=progress)
            results.append(evaluate_task(model, tokenizer, task, limit, seed, batch_size,
                                         lambda k, t=bar_task: bar.update(t, advance=k)))
    return results
