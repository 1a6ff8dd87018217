"""The vocabulary stage: count the tokens a text uses, choose the rows to keep, rewrite tokenizer, embedding, head
and the config's token ids together, and say what it cost in tokens per character of that text."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from prunekit.engine.structured import StructuredResult, StructuredStage
from prunekit.errors import PrunekitError
from prunekit.models import surgery
from prunekit.models.adapters.base import ModelAdapter, submodule
from prunekit.models.tokenizer_surgery import merge_parts, required_tokens, shrink_tokenizer, tokenizer_json
from prunekit.text.tokens import token_stream

# config fields that hold token ids (an int or a list of ints), in the model config and the generation config
TOKEN_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "decoder_start_token_id",
                   "sep_token_id", "cls_token_id", "mask_token_id")


def _config_ids(config: object) -> set[int]:
    ids: set[int] = set()
    for field in TOKEN_ID_FIELDS:
        value = getattr(config, field, None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(value)
    return ids


def _remap_config_ids(config: object, new_id: dict[int, int]) -> None:
    """Renumber the config's token ids; one that names no token of the tokenizer is dropped (set to None)."""
    for field in TOKEN_ID_FIELDS:
        value = getattr(config, field, None)
        if isinstance(value, int):
            setattr(config, field, new_id.get(value))
        elif isinstance(value, list | tuple):
            setattr(config, field, [new_id[i] for i in value if i in new_id] or None)


def token_counts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], size: int) -> torch.Tensor:
    """Occurrences of each token id (0..size-1) in `texts`, tokenized without special tokens."""
    ids = token_stream(tokenizer, list(texts))
    return torch.bincount(ids, minlength=size)[:size]


def tokens_per_character(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> float:
    characters = sum(len(t) for t in texts)
    tokens = sum(len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"])
    return tokens / max(characters, 1)


def target_size(adapter: ModelAdapter, stage: StructuredStage, tokens: int) -> int | None:
    """Tokens to keep from the stage's size, sparsity or parameter fraction (None: by coverage)."""
    if stage.size is not None:
        size = stage.size
    elif stage.sparsity is not None:
        size = tokens - round(stage.sparsity * tokens)
    elif stage.param_fraction is not None:
        embedding = submodule(adapter.model, adapter.vocabulary.embedding)
        head = submodule(adapter.model, adapter.vocabulary.head)
        per_token = embedding.weight.shape[1] * (1 if head.weight is embedding.weight else 2)
        parameters = sum(p.numel() for p in adapter.model.parameters())
        size = tokens - round(stage.param_fraction * parameters / per_token)
    else:
        return None
    if not 0 < size < tokens:
        raise PrunekitError(f"cannot keep {size} of the tokenizer's {tokens} tokens: ask for 1 to {tokens - 1}")
    return size


def prune_vocabulary(adapter: ModelAdapter, tokenizer: PreTrainedTokenizerBase, stage: StructuredStage,
                     texts: Sequence[str]) -> tuple[StructuredResult, PreTrainedTokenizerBase]:
    """Keep the tokens `texts` use most (see prunekit.methods.vocabulary); returns the stage's record and the new
    tokenizer. The model is edited in place."""
    data = tokenizer_json(tokenizer)
    tokens = len(tokenizer)
    rows = submodule(adapter.model, adapter.vocabulary.embedding).weight.shape[0]
    if tokens > rows:
        raise PrunekitError(f"the tokenizer has {tokens} tokens but the model embeds {rows}: they do not belong "
                            "together, so prunekit cannot trim them consistently")
    required = required_tokens(data) | {i for i in _config_ids(adapter.config) if i < tokens}
    generation = getattr(adapter.model, "generation_config", None)
    if generation is not None:
        required |= {i for i in _config_ids(generation) if i < tokens}
    counts = token_counts(tokenizer, texts, tokens)
    keep = stage.spec.function(size=target_size(adapter, stage, tokens), coverage=stage.coverage,
                               token_counts=counts, required=required, merge_parts=merge_parts(data))
    covered = float(counts[keep].sum()) / max(float(counts.sum()), 1.0)
    trimmed = shrink_tokenizer(tokenizer, keep)
    # rows past the tokenizer (padding rows some checkpoints carry) are never produced by it: they go too
    surgery.shrink_vocabulary(adapter, torch.tensor(keep))
    new_id = {old: new for new, old in enumerate(keep)}
    _remap_config_ids(adapter.config, new_id)
    if generation is not None:
        _remap_config_ids(generation, new_id)
    before, after = tokens_per_character(tokenizer, texts), tokens_per_character(trimmed, texts)
    removed = {"tokens_before": rows, "tokens_after": len(keep), "text_coverage": round(covered, 6),
               "tokens_per_char_before": round(before, 5), "tokens_per_char_after": round(after, 5)}
    notes = [f"kept {len(keep):,} of {rows:,} token rows, covering {covered:.4%} of the calibration text's "
             f"tokens; tokens per character {before:.4f} -> {after:.4f}"]
    return StructuredResult(stage=f"vocab ({stage.method})", removed=removed, notes=notes), trimmed
