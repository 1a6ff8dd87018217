"""Perplexity on held-out text.

Protocol: the evaluation documents are tokenized and joined into one stream (EOS between documents); `samples`
non-overlapping windows of `seq_len` tokens are taken evenly spread over it; each window is scored on its own (no
carried context), predicting tokens 2..L; perplexity = exp(total negative log-likelihood / predicted tokens).

Per character: exp(the same total / the characters the predicted tokens spell). Models with different tokenizers
(a trimmed vocabulary) compare fairly on it, since their windows hold the same text at different token counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from prunekit.models.loss import next_token_loss


@dataclass
class PerplexityResult:
    perplexity: float
    tokens: int  # predicted tokens
    samples: int
    seq_len: int
    source: str
    characters: int | None = None  # characters the predicted tokens spell, when a tokenizer was given
    char_perplexity: float | None = None  # exp(total NLL / characters)

    def to_dict(self) -> dict:
        """The fields; the per-character ones only when they were measured (reports without them stay as before)."""
        return {k: v for k, v in asdict(self).items() if v is not None or k not in ("characters", "char_perplexity")}


@torch.no_grad()
def perplexity(
    model: nn.Module,
    windows: torch.Tensor,
    source: str = "",
    batch_size: int = 1,
    on_batch: Callable[[int, int], None] | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> PerplexityResult:
    """Perplexity of `windows` [samples, seq_len]; with `tokenizer`, per character as well."""
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    batches = windows.split(batch_size)
    for i, ids in enumerate(batches):
        ids = ids.to(device)
        logits = model(input_ids=ids, use_cache=False).logits.float()
        nll += next_token_loss(logits, ids, "sum").item()
        count += ids[:, 1:].numel()
        if on_batch:
            on_batch(i + 1, len(batches))
    characters = predicted_characters(tokenizer, windows) if tokenizer is not None else None
    per_character = _exp(nll / characters) if characters else None
    return PerplexityResult(_exp(nll / count), count, windows.shape[0], windows.shape[1], source, characters,
                            per_character)


def _exp(mean: float) -> float:
    return math.exp(mean) if mean < 700 else math.inf  # a broken model's loss overflows exp: say inf


def predicted_characters(tokenizer: PreTrainedTokenizerBase, windows: torch.Tensor) -> int:
    """Characters spelled by tokens 2..L of each window (the ones perplexity predicts)."""
    return sum(len(tokenizer.decode(row[1:], clean_up_tokenization_spaces=False)) for row in windows.tolist())
