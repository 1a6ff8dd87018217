"""Zero-shot multiple-choice accuracy, scored the way lm-evaluation-harness scores `multiple_choice` tasks.

Protocol (lm-evaluation-harness 0.4.13: `ConfigurableTask.construct_requests` / `process_results` in
lm_eval/api/task.py, `TemplateLM._encode_pair` in lm_eval/api/model.py, `HFLM._loglikelihood_tokens` in
lm_eval/models/huggingface.py, `mean_stderr` in lm_eval/api/metrics.py):

- each choice is the continuation `" " + choice` of the example's context; trailing whitespace of the context moves
  to the front of the continuation; the continuation's tokens are those of tokenize(context + continuation) after
  the first len(tokenize(context)) tokens (the tokenizer's own special tokens included); an empty context is
  replaced by the BOS (else EOS) token; sequences longer than the model's context are cut on the left;
- log-likelihood of a choice: the sum of the log-probabilities of its continuation tokens;
- acc: the choice with the highest log-likelihood is a correct one; acc_norm: the same with the log-likelihood
  divided by the choice's length in characters (without the leading space); ties go to the first choice;
- stderr: sample standard deviation of the per-example 0/1 scores / sqrt(n); the 95% interval is
  mean +- 1.96 stderr (normal approximation), clipped to [0, 1].

Tasks: BIG-bench JSON tasks from the bigbench sdist: context = (task_prefix + example_input_prefix + input +
example_output_prefix).strip() with the task's own prefixes (prompt "plain", the default), or BIG-bench's JsonTask
format as in the harness's copy of BIG-bench, hails/bigbench (prompt "bigbench": default prefixes "Q: " / "A: " and
the choices listed in the input in BIG-bench's seeded order); choices = the stripped keys of target_scores, correct =
the keys with the highest score (BIG-bench's multiple_choice_grade; the harness takes the first of them, which is
the same on every task with a single best key); duplicate examples dropped. Or a JSONL file of {"context" | "query",
"choices", "gold"} rows, gold an index, a list of indices or the text of a choice.
"""

from __future__ import annotations

import difflib
import inspect
import json
import math
import random
import re
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from prunekit.assets.cache import cache_dir
from prunekit.assets.fetch import extract_member, fetch_package
from prunekit.assets.registry import BIGBENCH
from prunekit.errors import PrunekitError
from prunekit.files import json_lines
from prunekit.progress import progress_bar

TARGET_DELIMITER = " "  # the harness's default target_delimiter
Z95 = 1.959963984540054
BIGBENCH_PREFIX = "bigbench:"
_BIGBENCH_ROOT = "bigbench-1.0.0/bigbench/benchmark_tasks/"
_BIGBENCH_MEMBER = re.compile(re.escape(_BIGBENCH_ROOT) + r"(.+)/task\.json$")
_BIGBENCH_SEED = 42  # JsonTask's random_seed: fixes the order in which choices are appended to the input
PROMPTS = ("plain", "bigbench")

# Short names for BIG-bench multiple-choice tasks; any other one is reachable as bigbench:TASK[/SUBTASK].
TASKS: dict[str, str] = {
    "social_iqa": "social_iqa",
    "goal_inference": "goal_step_wikihow/goal_inference",
    "step_inference": "goal_step_wikihow/step_inference",
    "date_understanding": "date_understanding",
    "physics": "physics",
    "causal_judgment": "causal_judgment",
}


@dataclass(frozen=True)
class Example:
    context: str
    choices: tuple[str, ...]
    gold: tuple[int, ...]  # indices of the correct choices


@dataclass(frozen=True)
class Task:
    name: str
    examples: tuple[Example, ...]


@dataclass
class ZeroShotResult:
    task: str
    examples: int
    acc: float
    acc_stderr: float
    acc_norm: float
    acc_norm_stderr: float
    seconds: float
    chance: float = 0.0  # expected acc of a uniform random guess
    hits: tuple[int, ...] = field(default=(), repr=False)  # acc per example (1 or 0), in example order

    def interval(self, metric: str = "acc") -> tuple[float, float]:
        """95% normal-approximation interval of `acc` or `acc_norm`, clipped to [0, 1]."""
        mean, stderr = getattr(self, metric), getattr(self, f"{metric}_stderr")
        return max(0.0, mean - Z95 * stderr), min(1.0, mean + Z95 * stderr)

    def to_dict(self) -> dict:
        fields = {k: v for k, v in asdict(self).items() if k != "hits"}
        return {**fields, "acc_ci95": list(self.interval("acc")), "acc_norm_ci95": list(self.interval("acc_norm"))}


# --- scoring: pure functions of tensors and numbers ---------------------------------------------------------------


def continuation_loglikelihoods(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over masked positions of log softmax(logits)[target]: logits [B, K, V], targets and mask [B, K] -> [B]."""
    logprobs = logits.float().log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, logprobs, torch.zeros_like(logprobs)).sum(-1)


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
              seconds: float) -> ZeroShotResult:
    acc, acc_norm = [], []
    for example, lls in zip(examples, loglikelihoods, strict=True):
        pred, pred_norm = predictions(lls, example.choices)
        acc.append(float(pred in example.gold))
        acc_norm.append(float(pred_norm in example.gold))
    chance = sum(len(e.gold) / len(e.choices) for e in examples) / max(1, len(examples))
    return ZeroShotResult(task, len(examples), *mean_stderr(acc), *mean_stderr(acc_norm), seconds, chance,
                          tuple(int(a) for a in acc))


# --- tokenization, the harness's way ------------------------------------------------------------------------------


def encode_pair(tokenizer: PreTrainedTokenizerBase, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation): context + continuation is tokenized whole and split after as many
    tokens as the context alone has, so merges across the boundary follow the whole text (as in the harness)."""
    if not context.strip():  # nothing to condition on: BOS (else EOS) stands in, as in the harness
        return _empty_context_pair(tokenizer, context + continuation)
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation)["input_ids"]
    context_ids = tokenizer(context)["input_ids"]
    return context_ids, whole[len(context_ids):]


def _empty_context_pair(tokenizer: PreTrainedTokenizerBase, continuation: str) -> tuple[list[int], list[int]]:
    ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if prefix is None:
        raise PrunekitError("an example has an empty context and the tokenizer has neither a BOS nor an EOS token")
    return (ids[:1], ids[1:]) if ids and ids[0] == prefix else ([prefix], ids)


def model_max_length(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> int:
    """The harness's max_length: the config's context size, else the tokenizer's, else 2048."""
    config = getattr(model, "config", None)
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        if config is not None and getattr(config, attr, None):
            return int(getattr(config, attr))
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if limit and limit < 1e30 else 2048


# --- batching: the choices of an example share a batch ------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    example: int
    tokens: list[int]  # context + continuation, cut on the left to max_length + 1
    n_target: int  # continuation tokens, the last n_target of `tokens`


def _example_rows(tokenizer: PreTrainedTokenizerBase, example: Example, index: int, max_length: int) -> list[_Row]:
    rows = []
    for choice in example.choices:
        context_ids, target_ids = encode_pair(tokenizer, example.context, TARGET_DELIMITER + choice)
        if not context_ids or not target_ids:  # the harness asserts both
            raise PrunekitError(f"choice {choice!r} of context {example.context[-40:]!r} has no tokens of its own"
                                if context_ids else f"context {example.context[:40]!r} has no tokens")
        if len(target_ids) > max_length:
            raise PrunekitError(f"a choice of {len(target_ids)} tokens exceeds the model's context of {max_length}")
        rows.append(_Row(index, (context_ids + target_ids)[-(max_length + 1):], len(target_ids)))
    return rows


def _batches(rows: list[list[_Row]], batch_size: int) -> Iterator[list[_Row]]:
    """Whole examples, longest first (so memory peaks at once), packed up to `batch_size` sequences per batch."""
    order = sorted(range(len(rows)), key=lambda i: -max(len(r.tokens) for r in rows[i]))
    batch: list[_Row] = []
    for i in order:
        if batch and len(batch) + len(rows[i]) > batch_size:
            yield batch
            batch = []
        batch.extend(rows[i])
    if batch:
        yield batch


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@torch.no_grad()
def _score_batch(model: nn.Module, rows: list[_Row], pad_id: int, keep_logits: bool) -> list[float]:
    """One forward pass over right-padded rows (a causal model never attends to the padding on the right); only the
    positions from the earliest continuation on go through the LM head."""
    device = next(model.parameters()).device
    lengths = [len(r.tokens) - 1 for r in rows]  # the last token is predicted, never fed
    width = max(lengths)
    first = min(n - r.n_target for n, r in zip(lengths, rows, strict=True))
    keep = width - first
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.zeros(len(rows), keep, dtype=torch.long)
    mask = torch.zeros(len(rows), keep, dtype=torch.bool)
    for i, (n, r) in enumerate(zip(lengths, rows, strict=True)):
        ids[i, :n] = torch.tensor(r.tokens[:-1])
        start = n - r.n_target - first  # the logits at position p predict token p + 1
        targets[i, start: start + r.n_target] = torch.tensor(r.tokens[-r.n_target:])
        mask[i, start: start + r.n_target] = True
    kwargs = {"logits_to_keep": keep} if keep_logits else {}
    logits = model(input_ids=ids.to(device), use_cache=False, **kwargs).logits[:, -keep:]
    return continuation_loglikelihoods(logits, targets.to(device), mask.to(device)).tolist()


def score_examples(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    batch_size: int = 16,
    on_examples: Callable[[int], None] | None = None,
) -> list[list[float]]:
    """Log-likelihood of every choice of every example, in order; `on_examples(k)` after each batch of k examples."""
    if batch_size < 1:
        raise PrunekitError(f"batch size must be at least 1, got {batch_size}")
    max_length = model_max_length(model, tokenizer)
    rows = [_example_rows(tokenizer, e, i, max_length) for i, e in enumerate(examples)]
    pad_id = next(t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if t is not None)
    keep_logits = _accepts_logits_to_keep(model)
    scores: list[list[float]] = [[] for _ in examples]
    for batch in _batches(rows, batch_size):
        lls = _score_batch(model, batch, pad_id, keep_logits)
        for row, ll in zip(batch, lls, strict=True):
            scores[row.example].append(ll)  # rows of an example stay in choice order
        if on_examples:
            on_examples(len({r.example for r in batch}))
    return scores


# --- tasks --------------------------------------------------------------------------------------------------------


def subsample(examples: Sequence[Example], limit: int | None, seed: int) -> list[Example]:
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
        partial = index.with_name(".tasks.json.partial")
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


def load_task(spec: str, prompt: str = "plain") -> Task:
    """A task by name: a short name (see TASKS), bigbench:TASK[/SUBTASK], or a .jsonl file. `prompt` says how
    BIG-bench examples become contexts (see bigbench_examples); JSONL contexts are used as they are."""
    if spec in TASKS:
        return Task(spec, tuple(_bigbench_task(TASKS[spec], False, prompt)))
    if spec.startswith(BIGBENCH_PREFIX):
        name = spec[len(BIGBENCH_PREFIX):].strip("/")
        return Task(spec, tuple(_bigbench_task(name, True, prompt)))
    path = Path(spec).expanduser()
    if path.suffix == ".jsonl" and path.is_file():
        return Task(spec, tuple(jsonl_examples(path)))
    hint = " (no such file)" if path.suffix == ".jsonl" else ""
    raise PrunekitError(f"unknown task {spec!r}{hint}: use {', '.join(TASKS)}, bigbench:TASK[/SUBTASK] for any "
                        "BIG-bench multiple-choice task, or a .jsonl file of {context, choices, gold} rows")


def evaluate_task(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    on_examples: Callable[[int], None] | None = None,
) -> ZeroShotResult:
    examples = subsample(task.examples, limit, seed)
    start = time.perf_counter()
    scores = score_examples(model, tokenizer, examples, batch_size, on_examples)
    return summarize(task.name, examples, scores, time.perf_counter() - start)


def evaluate_tasks(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[str],
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
    prompt: str = "plain",
) -> list[ZeroShotResult]:
    """Zero-shot accuracy on each named task (see load_task); `limit` examples per task, drawn by a shuffle seeded
    with `seed`; `batch_size` sequences (one per choice, an example's choices together) per forward pass."""
    if limit is not None and limit < 1:
        raise PrunekitError(f"limit must be at least 1, got {limit}")
    loaded = [load_task(t, prompt) for t in tasks]  # every name is checked before any scoring
    results = []
    with progress_bar() as bar:
        for task in loaded:
            total = len(task.examples) if limit is None else min(limit, len(task.examples))
            bar_task = bar.add_task(task.name, total=total, visible=progress)
            results.append(evaluate_task(model, tokenizer, task, limit, seed, batch_size,
                                         lambda k, t=bar_task: bar.update(t, advance=k)))
    return results
