"""Vocabulary pruning: which token rows to keep. Pure functions on token counts.

VocabTrim (Goel et al. 2025) and the vocabulary-trimming literature before it keep the tokens a target text uses:
the most frequent ones first, up to a count or until they cover a fraction of the text's token occurrences. Two
constraints make the kept set a working BPE vocabulary: the required tokens (special tokens and the byte alphabet)
always stay, and a token stays only with the parts its merges are made of, recursively, or BPE could never build it.
"""

from __future__ import annotations

import torch

from prunekit.errors import PrunekitError
from prunekit.methods.registry import register

MergeParts = dict[int, list[tuple[int, int]]]  # token id -> (left, right) ids of each merge that makes it


def with_parts(tokens: list[int], merge_parts: MergeParts, kept: set[int]) -> list[int]:
    """`tokens` and the parts of every merge that makes them, recursively, less those already in `kept`."""
    added: list[int] = []
    seen = set(kept)
    stack = list(reversed(tokens))
    while stack:
        token = stack.pop()
        if token in seen:
            continue
        seen.add(token)
        added.append(token)
        for left, right in merge_parts.get(token, ()):
            stack += [right, left]
    return added


def coverage_count(token_counts: torch.Tensor, coverage: float) -> int:
    """How many of the most frequent tokens it takes for their occurrences to reach `coverage` of all of them."""
    counts = token_counts.double().sort(descending=True).values
    total = float(counts.sum())
    if total == 0:
        raise PrunekitError("the text to count tokens on is empty: give text (--calib) that the model's tokenizer "
                            "turns into tokens")
    cumulative = counts.cumsum(0) / total
    return int((cumulative < coverage - 1e-12).sum()) + 1


def frequency_order(token_counts: torch.Tensor) -> list[int]:
    """Token ids by count, most frequent first (ties: the lower id, which BPE learned earlier), then the tokens the
    text never uses, by id."""
    ids = torch.arange(len(token_counts))
    seen = token_counts > 0
    order = sorted(ids[seen].tolist(), key=lambda i: (-int(token_counts[i]), i))
    return order + ids[~seen].tolist()


def choose_tokens(token_counts: torch.Tensor, required: set[int], merge_parts: MergeParts,
                  size: int | None = None, coverage: float | None = None) -> list[int]:
    """The ids to keep, ascending: the required tokens, then the most frequent tokens with their merge parts, either
    the tokens that cover `coverage` of the counted occurrences, or as many as fit in `size` tokens in all."""
    kept = set(with_parts(sorted(required), merge_parts, set()))
    if size is not None and len(kept) > size:
        raise PrunekitError(f"keeping {size} tokens would remove special or byte tokens (the tokenizer needs "
                            f"{len(kept)} to tokenize any text): keep at least {len(kept)}")
    order = frequency_order(token_counts)
    if coverage is not None:
        for token in order[:coverage_count(token_counts, coverage)]:
            kept.update(with_parts([token], merge_parts, kept))
        return sorted(kept)
    assert size is not None
    for token in order:
        if len(kept) >= size:
            break
        extra = with_parts([token], merge_parts, kept)
        if len(kept) + len(extra) <= size:  # a token whose parts do not fit is skipped; a later one may fit
            kept.update(extra)
    return sorted(kept)


@register("vocab", "vocabulary",
          "VocabTrim: keep the tokens the calibration text uses most (with their merge parts, special and byte "
          "tokens), rewrite the tokenizer, embedding and head", needs=("token_counts",))
def by_frequency(size: int | None, coverage: float | None, token_counts: torch.Tensor, required: set[int],
                 merge_parts: MergeParts) -> list[int]:
    return choose_tokens(token_counts, required, merge_parts, size=size, coverage=coverage)
