"""Perplexity of every document under a small reference causal LM ("Perplexed by Perplexity", "When Less is More").

Documents are cut at `max_tokens`, sorted by length and batched so padding stays small (length bucketing); a BOS
(or EOS) token is put first when the tokenizer adds none, so even the first token is scored.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from prunekit.corpus.step import INT32_MAX, PERPLEXITY, TEXT, Step, check_model_spec, with_column
from prunekit.errors import PrunekitError
from prunekit.models.loss import next_token_loss

__all__ = ["PERPLEXITY", "PerplexityStep", "text_perplexities"]


@torch.inference_mode()
def text_perplexities(model: nn.Module, tokenizer: object, texts: list[str], max_tokens: int = 512,
                      batch_tokens: int = 4096) -> np.ndarray:
    """exp(mean negative log-likelihood) of each text's tokens; NaN for a text with no tokens."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    encoded = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=max_tokens)["input_ids"]
    sequences = [ids if (start is None or (ids and ids[0] == start)) else [start, *ids][:max_tokens]
                 for ids in encoded]
    out = np.full(len(texts), np.nan)
    order = sorted(range(len(texts)), key=lambda i: len(sequences[i]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    position = 0
    while position < len(order):
        # Members are sorted by length, so the last one added sets the padding: grow while rows x it fits.
        count = 1
        while (position + count < len(order)
               and (count + 1) * len(sequences[order[position + count]]) <= batch_tokens):
            count += 1
        index = order[position : position + count]
        longest = len(sequences[index[-1]])
        position += count
        index = [i for i in index if len(sequences[i]) >= 2]
        if not index:
            continue
        ids = torch.full((len(index), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(index), longest), dtype=torch.long)
        for row, i in enumerate(index):
            ids[row, : len(sequences[i])] = torch.tensor(sequences[i])
            mask[row, : len(sequences[i])] = 1
        losses = next_token_loss(model(input_ids=ids, attention_mask=mask).logits, ids, "none")
        scored = mask[:, 1:].float()
        mean = (losses * scored).sum(1) / scored.sum(1)
        out[index] = torch.exp(mean).numpy()
    return out


@functools.cache
def _reference_model(spec: str, dtype: str) -> tuple[nn.Module, object]:
    from prunekit.models.loading import load_model

    loaded = load_model(spec, dtype=dtype, device="cpu")
    return loaded.model, loaded.tokenizer


@dataclass
class PerplexityStep(Step):
    """Adds `perplexity` (float64; null for a document with fewer than two tokens)."""

    name = "perplexity"
    model: str = "smollm2-135m"
    max_tokens: int = 512
    batch_tokens: int = 4096
    dtype: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_tokens < 2:
            raise PrunekitError(f"max_tokens={self.max_tokens}: perplexity needs at least 2 tokens per document")
        if self.max_tokens > INT32_MAX:
            raise PrunekitError(f"max_tokens={self.max_tokens}: use at most {INT32_MAX} tokens per document")
        if self.batch_tokens < 1:
            raise PrunekitError(f"batch_tokens={self.batch_tokens}: use 1 or more tokens per batch")

    def provides(self) -> tuple[str, ...]:
        return (PERPLEXITY,)

    def check(self) -> None:
        from prunekit.assets.registry import MODELS

        check_model_spec(self.model, tuple(MODELS), "reference model")

    def run(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        model, tokenizer = _reference_model(self.model, self.dtype)
        for batch in batches:
            values = text_perplexities(model, tokenizer, batch.column(TEXT).to_pylist(), self.max_tokens,
                                       self.batch_tokens)
            yield with_column(batch, PERPLEXITY, pa.array(values, pa.float64(), from_pandas=True))

