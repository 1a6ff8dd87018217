"""Closed-book question answering by greedy generation, scored by exact match as lm-evaluation-harness scores it.

Protocol (lm-evaluation-harness 0.4, `generate_until` tasks; HFLM.generate_until, filters remove_whitespace and
take_first, metric exact_match):

- the prompt is tokenized as the tokenizer does by default (its own special tokens, if any) and cut on the left to
  leave room for `max_new_tokens`; prompts of a batch are padded on the left and decoded greedily with the KV cache;
- the generated tokens are decoded (special tokens skipped) and cut at the first of the stop sequences (the task's
  `until`, and the tokenizer's EOS text), then whitespace is stripped from both ends;
- exact match: the task's regexes are removed from prediction and answers, then (as configured) both are
  lower-cased and stripped of ASCII punctuation; a question is answered when the prediction equals any answer.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from prunekit.errors import PrunekitError

STOP_SEQUENCES = ("\n", ".", ",")  # the harness's `until` for triviaqa and nq_open
MAX_NEW_TOKENS = 256  # the harness's max_gen_toks default
_PUNCTUATION = str.maketrans("", "", string.punctuation)


@dataclass(frozen=True)
class Question:
    context: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class ExactMatch:
    ignore_case: bool = False
    ignore_punctuation: bool = False
    regexes_to_ignore: tuple[str, ...] = ()

    def normalize(self, text: str) -> str:
        for pattern in self.regexes_to_ignore:
            text = re.sub(pattern, "", text)
        if self.ignore_case:
            text = text.lower()
        if self.ignore_punctuation:
            text = text.translate(_PUNCTUATION)
        return text

    def hit(self, prediction: str, answers: Sequence[str]) -> bool:
        predicted = self.normalize(prediction)
        return any(predicted == self.normalize(a) for a in answers)


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """`text` up to the first occurrence of each stop sequence in turn, as the harness cuts generations."""
    for stop in stops:
        if stop:
            text = text.split(stop)[0]
    return text


def _batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices, longest prompt first, `batch_size` at a time (the harness's order)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start: start + batch_size]


class _AllStopped:
    """Stops generation once every sequence of the batch has produced one of the stop sequences."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_width: int, stops: Sequence[str]) -> None:
        self.tokenizer, self.prompt_width, self.stops = tokenizer, prompt_width, [s for s in stops if s]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: object) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width:], skip_special_tokens=False)
        done = all(any(s in t for s in self.stops) for t in texts)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def generate_answers(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    contexts: Sequence[str],
    stops: Sequence[str] = STOP_SEQUENCES,
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = 16,
    max_length: int = 2048,
    on_done: Callable[[int], None] | None = None,
) -> list[str]:
    """The greedy continuation of each context, cut at the stop sequences and stripped."""
    from transformers import StoppingCriteriaList

    if batch_size < 1:
        raise PrunekitError(f"batch size must be at least 1, got {batch_size}")
    eos_text = tokenizer.decode([tokenizer.eos_token_id]) if tokenizer.eos_token_id is not None else ""
    until = [*stops, eos_text]
    budget = max_length - max_new_tokens  # with no room left the prompt stays whole, as in the harness
    prompts = [tokenizer(c)["input_ids"] for c in contexts]
    prompts = [p[-budget:] if budget > 0 else p for p in prompts]
    pad_id = next(t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if t is not None)
    device = next(model.parameters()).device
    answers = [""] * len(contexts)
    for batch in _batches([len(p) for p in prompts], batch_size):
        width = max(len(prompts[i]) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, i in enumerate(batch):  # padded on the left, so every prompt ends where generation starts
            ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]):] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad_id, num_beams=1,
                             stopping_criteria=StoppingCriteriaList([_AllStopped(tokenizer, width, until)]))
        for row, i in enumerate(batch):
            text = tokenizer.decode(out[row, width:].tolist(), skip_special_tokens=True)
            answers[i] = cut_at_stops(text, until).strip()
        if on_done:
            on_done(len(batch))
    return answers
