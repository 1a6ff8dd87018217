"""Log-likelihoods of the choices of multiple-choice examples, computed the way lm-evaluation-harness computes them.

Protocol (lm-evaluation-harness 0.4: `TemplateLM._encode_pair` in lm_eval/api/model.py, `HFLM._loglikelihood_tokens`
in lm_eval/models/huggingface.py):

- each choice is the continuation `" " + choice` of the example's context (or, with partial scoring, the choice
  extends the context and the example's continuation is scored); trailing whitespace of the context moves to the
  front of the continuation; the continuation's tokens are those of tokenize(context + continuation) after the first
  len(tokenize(context)) tokens (the tokenizer's own special tokens included); an empty context is replaced by the
  BOS (else EOS) token; sequences longer than the model's context are cut on the left;
- the log-likelihood of a choice is the sum of the log-probabilities of its continuation tokens.

Speed: the choices of an example are scored together, and examples are batched longest first. With a model that
takes a KV cache, the tokens the choices of an example share (the context, at least) go through the model once:
a first pass over those prefixes fills the cache, which is then repeated for each choice, and a second pass runs only
each choice's own tokens. The result equals one forward per choice up to float rounding. Tokenization is kept
between calls for the same tokenizer (a sweep scores the same examples on many models).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from prunekit.errors import PrunekitError

TARGET_DELIMITER = " "  # the harness's default target_delimiter


@dataclass(frozen=True)
class Example:
    context: str
    choices: tuple[str, ...]
    gold: tuple[int, ...]  # indices of the correct choices
    continuation: str | None = None  # partial scoring: each choice extends the context, this is what is scored

    def requests(self) -> list[tuple[str, str]]:
        """(context, continuation) per choice, as the harness builds them."""
        if self.continuation is None:
            return [(self.context, TARGET_DELIMITER + c) for c in self.choices]
        return [(self.context + c, TARGET_DELIMITER + self.continuation) for c in self.choices]


# --- scoring: pure functions of tensors ---------------------------------------------------------------------------


def continuation_loglikelihoods(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over masked positions of log softmax(logits)[target]: logits [B, K, V], targets and mask [B, K] -> [B]."""
    logprobs = logits.float().log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, logprobs, torch.zeros_like(logprobs)).sum(-1)


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


@dataclass(frozen=True, eq=False)  # rows hold arrays: compared by identity
class _Row:
    example: int
    tokens: np.ndarray  # int32 ids of context + continuation, cut on the left to max_length + 1
    n_target: int  # continuation tokens, the last n_target of `tokens`

    @property
    def inputs(self) -> int:
        return len(self.tokens) - 1  # the last token is predicted, never fed

    @property
    def first_scored(self) -> int:
        return self.inputs - self.n_target  # the input position whose logits predict the first continuation token


def _example_rows(tokenizer: PreTrainedTokenizerBase, example: Example, index: int, max_length: int) -> list[_Row]:
    rows = []
    for context, continuation in example.requests():
        context_ids, target_ids = encode_pair(tokenizer, context, continuation)
        if not context_ids or not target_ids:  # the harness asserts both
            raise PrunekitError(f"continuation {continuation!r} of context {context[-40:]!r} has no tokens of its "
                                "own" if context_ids else f"context {context[:40]!r} has no tokens")
        if len(target_ids) > max_length:
            raise PrunekitError(f"a choice of {len(target_ids)} tokens exceeds the model's context of {max_length}")
        tokens = np.asarray((context_ids + target_ids)[-(max_length + 1):], dtype=np.int32)  # compact: rows are kept
        rows.append(_Row(index, tokens, len(target_ids)))
    return rows


class _TokenizedRows:
    """Rows of examples already tokenized, kept for the last tokenizer seen (identified by its content)."""

    def __init__(self) -> None:
        self.tokenizer_key: str | None = None
        self.rows: dict[tuple[Example, int], list[_Row]] = {}

    def get(self, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], max_length: int) -> list[list[_Row]]:
        key = _tokenizer_key(tokenizer)
        if key != self.tokenizer_key:
            self.tokenizer_key, self.rows = key, {}
        out = []
        for i, example in enumerate(examples):
            cached = self.rows.get((example, max_length))
            if cached is None:
                cached = self.rows[(example, max_length)] = _example_rows(tokenizer, example, 0, max_length)
            out.append([_Row(i, r.tokens, r.n_target) for r in cached])
        return out


def _tokenizer_key(tokenizer: PreTrainedTokenizerBase) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extras = json.dumps([type(tokenizer).__name__, tokenizer.bos_token_id, tokenizer.eos_token_id,
                         getattr(tokenizer, "add_bos_token", None)])
    return hashlib.sha256((text + extras).encode()).hexdigest()


_TOKENIZED = _TokenizedRows()


def forget_tokenization() -> None:
    """Drop the kept tokenization (the next call tokenizes afresh)."""
    _TOKENIZED.__init__()


# --- batching: the choices of an example share a batch ------------------------------------------------------------


def _batches(rows: list[list[_Row]], batch_size: int) -> Iterator[list[list[_Row]]]:
    """Whole examples, longest first (so memory peaks at once), packed up to `batch_size` sequences per batch."""
    order = sorted(range(len(rows)), key=lambda i: -max(len(r.tokens) for r in rows[i]))
    batch: list[list[_Row]] = []
    size = 0
    for i in order:
        if batch and size + len(rows[i]) > batch_size:
            yield batch
            batch, size = [], 0
        batch.append(rows[i])
        size += len(rows[i])
    if batch:
        yield batch


def _accepts(model: nn.Module, argument: str) -> bool:
    try:
        return argument in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _cache_argument(model: nn.Module) -> str | None:
    """The name under which the model's forward takes and returns a KV cache (transformers 5 renamed it)."""
    return next((name for name in ("cache", "past_key_values") if _accepts(model, name)), None)


def _targets(rows: Sequence[_Row], starts: Sequence[int], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets and mask [rows, width]: row r's continuation tokens from column starts[r] on."""
    targets = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, (r, start) in enumerate(zip(rows, starts, strict=True)):
        targets[i, start: start + r.n_target] = torch.tensor(r.tokens[-r.n_target:])
        mask[i, start: start + r.n_target] = True
    return targets, mask


@torch.no_grad()
def _score_whole(model: nn.Module, rows: list[_Row], pad_id: int, keep_logits: bool) -> list[float]:
    """One forward pass over right-padded rows (a causal model never attends to the padding on the right); only the
    positions from the earliest continuation on go through the LM head."""
    device = next(model.parameters()).device
    width = max(r.inputs for r in rows)
    first = min(r.first_scored for r in rows)
    keep = width - first
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : r.inputs] = torch.tensor(r.tokens[:-1])
    targets, mask = _targets(rows, [r.first_scored - first for r in rows], keep)
    kwargs = {"logits_to_keep": keep} if keep_logits else {}
    logits = model(input_ids=ids.to(device), use_cache=False, **kwargs).logits[:, -keep:]
    return continuation_loglikelihoods(logits, targets.to(device), mask.to(device)).tolist()


def _sliding_window(model: nn.Module) -> int | None:
    """The attention window of a sliding-window model (it counts the prefix's padding too), else None."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "use_sliding_window", True) is False:
        return None
    window = getattr(config, "sliding_window", None)
    return int(window) if window else None


def _fits_window(examples: Sequence[Sequence[_Row]], window: int | None) -> bool:
    """Whether the padded prefix plus the longest remainder stays inside the window, so padding changes nothing."""
    if window is None or not examples:
        return True
    prefixes = [shared_prefix(rows) for rows in examples]
    rest = max(r.inputs - n for rows, n in zip(examples, prefixes, strict=True) for r in rows)
    return max(prefixes) + rest <= window


def shared_prefix(rows: Sequence[_Row]) -> int:
    """Input tokens the rows of one example have in common, stopping where the first continuation is scored (so
    every scored logit comes from the second pass)."""
    n = min(r.first_scored for r in rows)
    first = rows[0].tokens
    for r in rows[1:]:
        differ = np.flatnonzero(r.tokens[:n] != first[:n])
        n = int(differ[0]) if differ.size else n
    return n


@torch.no_grad()
def _score_shared(model: nn.Module, examples: list[list[_Row]], pad_id: int, keep_logits: bool,
                  cache_argument: str) -> list[float]:
    """The rows of several examples in two passes: each example's shared prefix once, filling the KV cache (right
    padded), then each row's remaining tokens on top of its example's cache, positioned after its own prefix."""
    device = next(model.parameters()).device
    prefixes = [shared_prefix(rows) for rows in examples]
    width = max(prefixes)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    prefix_mask = torch.zeros(len(examples), width, dtype=torch.long)
    for e, (rows, n) in enumerate(zip(examples, prefixes, strict=True)):
        ids[e, :n] = torch.tensor(rows[0].tokens[:n])
        prefix_mask[e, :n] = 1
    kwargs = {"logits_to_keep": 1} if keep_logits else {}
    out = model(input_ids=ids.to(device), attention_mask=prefix_mask.to(device), use_cache=True, **kwargs)
    cache = getattr(out, cache_argument)

    rows = [r for rs in examples for r in rs]
    owner = torch.tensor([e for e, rs in enumerate(examples) for _ in rs])
    starts = [prefixes[e] for e, rs in enumerate(examples) for _ in rs]
    cache.batch_select_indices(owner.to(device))  # each example's prefix, once per row
    rest = max(r.inputs - s for r, s in zip(rows, starts, strict=True))
    ids = torch.full((len(rows), rest), pad_id, dtype=torch.long)
    own_mask = torch.zeros(len(rows), rest, dtype=torch.long)
    for i, (r, s) in enumerate(zip(rows, starts, strict=True)):
        ids[i, : r.inputs - s] = torch.tensor(r.tokens[s: r.inputs])
        own_mask[i, : r.inputs - s] = 1
    positions = torch.tensor(starts).unsqueeze(1) + torch.arange(rest)
    mask = torch.cat([prefix_mask[owner], own_mask], dim=1)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                   use_cache=True, **{cache_argument: cache}).logits
    targets, keep = _targets(rows, [r.first_scored - s for r, s in zip(rows, starts, strict=True)], rest)
    return continuation_loglikelihoods(logits, targets.to(device), keep.to(device)).tolist()


def score_examples(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    batch_size: int = 16,
    on_examples: Callable[[int], None] | None = None,
    share_prefix: bool = True,
) -> list[list[float]]:
    """Log-likelihood of every choice of every example, in order; `on_examples(k)` after each batch of k examples.
    `share_prefix`: run the tokens the choices of an example share once (with a model that takes a KV cache)."""
    if batch_size < 1:
        raise PrunekitError(f"batch size must be at least 1, got {batch_size}")
    rows = _TOKENIZED.get(tokenizer, examples, model_max_length(model, tokenizer))
    pad_id = next(t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if t is not None)
    keep_logits = _accepts(model, "logits_to_keep")
    cache_argument = _cache_argument(model) if share_prefix and _accepts(model, "position_ids") else None
    shared = cache_argument is not None
    window = _sliding_window(model)
    scores: list[list[float]] = [[] for _ in examples]
    for batch in _batches(rows, batch_size):
        shares = [shared and shared_prefix(rs) > 0 for rs in batch]
        sharing = [rs for rs, share in zip(batch, shares, strict=True) if share]
        if not _fits_window(sharing, window):
            sharing, shares = [], [False] * len(batch)
        alone = [r for rs, share in zip(batch, shares, strict=True) if not share for r in rs]
        flat = [r for rs in sharing for r in rs] + alone
        lls = (_score_shared(model, sharing, pad_id, keep_logits, cache_argument) if sharing else []) + (
            _score_whole(model, alone, pad_id, keep_logits) if alone else [])
        for row, ll in zip(flat, lls, strict=True):
            scores[row.example].append(ll)  # rows of an example stay in choice order
        if on_examples:
            on_examples(len(batch))
    return scores
