"""Tokenizer surgery: keep a subset of a BPE tokenizer's tokens, renumbered 0..N-1, so that any text still tokenizes.

Works on the `tokenizers` JSON (tokenizer.json) of a fast tokenizer:
- the vocabulary keeps the chosen tokens in their old order;
- a merge survives only when both its parts and its result are kept, so BPE never produces a removed token;
- special / added tokens, the byte alphabet (byte-level BPE) or the <0xNN> byte-fallback tokens are always kept
  (`required_tokens`), which is what lets every text still tokenize;
- ids elsewhere (added tokens, post-processor templates, tokenizer_config's added_tokens_decoder) are renumbered.

A kept token is only reachable when the merges that build it survive, so the caller keeps the parts of a token with
it (`merge_parts` gives them). With that, BPE makes the same choices on any text that uses only kept tokens (the
merges it applies all survive, in the same order), so such text tokenizes to the same tokens as before.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from prunekit.errors import PrunekitError

_BYTE_FALLBACK = re.compile(r"^<0x[0-9A-F]{2}>$")


def tokenizer_json(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """The tokenizers JSON of a fast tokenizer; a one-line error for other kinds."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise PrunekitError(f"{type(tokenizer).__name__} is not a fast (tokenizers) tokenizer: vocabulary pruning "
                            "rewrites tokenizer.json, so it needs one (save the tokenizer with a tokenizer.json)")
    data = json.loads(backend.to_str())
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise PrunekitError(f"the tokenizer is a {model.get('type')} model: vocabulary pruning supports BPE "
                            "tokenizers (GPT-2, Llama 3, Qwen, SmolLM, Mistral and Gemma style)")
    return data


def _merge_pair(merge: str | list[str]) -> tuple[str, str]:
    if isinstance(merge, str):  # the older "a b" form
        left, right = merge.split(" ", 1)
        return left, right
    return merge[0], merge[1]


def _merge_result(model: dict[str, Any], left: str, right: str) -> str:
    prefix = model.get("continuing_subword_prefix") or ""
    return left + (right[len(prefix):] if prefix and right.startswith(prefix) else right)


def merge_parts(data: dict[str, Any]) -> dict[int, list[tuple[int, int]]]:
    """For each token made by merges: the (left, right) ids of every merge that makes it, highest priority first."""
    model = data["model"]
    vocab = model["vocab"]
    parts: dict[int, list[tuple[int, int]]] = {}
    for merge in model["merges"]:
        left, right = _merge_pair(merge)
        result = vocab.get(_merge_result(model, left, right))
        if result is not None and left in vocab and right in vocab:
            parts.setdefault(result, []).append((vocab[left], vocab[right]))
    return parts


def _byte_level(pre_tokenizer: dict[str, Any] | None) -> bool:
    if not pre_tokenizer:
        return False
    if pre_tokenizer.get("type") == "ByteLevel":
        return True
    return any(_byte_level(p) for p in pre_tokenizer.get("pretokenizers", []))


def byte_alphabet() -> list[str]:
    """The 256 characters byte-level BPE writes bytes as (GPT-2's printable mapping)."""
    from tokenizers.pre_tokenizers import ByteLevel

    return ByteLevel.alphabet()


def required_tokens(data: dict[str, Any]) -> set[int]:
    """Ids that must stay: added and special tokens, the unknown token, and the tokens any byte is spelled with."""
    model = data["model"]
    vocab: dict[str, int] = model["vocab"]
    required = {t["id"] for t in data.get("added_tokens", [])}
    if model.get("unk_token") in vocab:
        required.add(vocab[model["unk_token"]])
    if model.get("byte_fallback"):
        required |= {i for token, i in vocab.items() if _BYTE_FALLBACK.match(token)}
    if _byte_level(data.get("pre_tokenizer")):
        # some byte-level vocabularies lack the bytes valid UTF-8 never holds (0xC0, 0xF5...): nothing to keep then
        required |= {vocab[c] for c in byte_alphabet() if c in vocab}
    elif not model.get("byte_fallback"):
        raise PrunekitError("the tokenizer is neither byte-level nor byte-fallback BPE, so removing tokens could "
                            "leave text it cannot tokenize: vocabulary pruning supports byte-level or byte-fallback "
                            "BPE tokenizers")
    return required


def _remap_ids(node: Any, new_id: dict[int, int]) -> Any:
    """Every "id" / "ids" value under the post-processor, renumbered (special tokens of the templates)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "ids" and isinstance(value, list):
                out[key] = [new_id[i] for i in value]
            elif key == "id" and isinstance(value, int):
                out[key] = new_id[value]
            else:
                out[key] = _remap_ids(value, new_id)
        return out
    if isinstance(node, list):
        return [_remap_ids(v, new_id) for v in node]
    return node


def trimmed_json(data: dict[str, Any], keep: Iterable[int]) -> dict[str, Any]:
    """`data` with only the tokens `keep` (old ids), which become 0..N-1 in their old order."""
    kept = sorted(set(keep))
    new_id = {old: new for new, old in enumerate(kept)}
    model = dict(data["model"])
    vocab = {token: new_id[i] for token, i in sorted(model["vocab"].items(), key=lambda item: item[1])
             if i in new_id}
    merges = []
    for merge in model["merges"]:
        left, right = _merge_pair(merge)
        if left in vocab and right in vocab and _merge_result(model, left, right) in vocab:
            merges.append(merge)
    model["vocab"], model["merges"] = vocab, merges
    added = [{**t, "id": new_id[t["id"]]} for t in data.get("added_tokens", [])]
    post = data.get("post_processor")
    return {**data, "model": model, "added_tokens": added,
            "post_processor": _remap_ids(post, new_id) if post is not None else None}


def _trimmed_config(config: dict[str, Any], new_id: dict[int, int]) -> dict[str, Any]:
    decoder = config.get("added_tokens_decoder")
    if isinstance(decoder, dict):
        config = {**config, "added_tokens_decoder": {str(new_id[int(i)]): v for i, v in decoder.items()}}
    return config


def shrink_tokenizer(tokenizer: PreTrainedTokenizerBase, keep: Iterable[int]) -> PreTrainedTokenizerBase:
    """A new tokenizer with only the tokens `keep` (old ids), renumbered 0..N-1 in their old order, loaded back
    through stock `AutoTokenizer` from the rewritten files (so what is saved is what loads)."""
    kept = sorted(set(keep))
    new_id = {old: new for new, old in enumerate(kept)}
    data = trimmed_json(tokenizer_json(tokenizer), kept)
    with tempfile.TemporaryDirectory(prefix="prunekit-tokenizer-") as tmp:
        tokenizer.save_pretrained(tmp)
        folder = Path(tmp)
        # files a tokenizer class may rebuild itself from instead of tokenizer.json: the JSON is the one truth
        for stale in ("vocab.json", "merges.txt", "added_tokens.json", "tokenizer.model", "vocab.txt"):
            (folder / stale).unlink(missing_ok=True)
        (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
        config_path = folder / "tokenizer_config.json"
        if config_path.exists():
            config = _trimmed_config(json.loads(config_path.read_text()), new_id)
            config_path.write_text(json.dumps(config, ensure_ascii=False, indent=2))
        trimmed = AutoTokenizer.from_pretrained(tmp)
    if len(trimmed) != len(kept):
        raise PrunekitError(f"the rewritten tokenizer has {len(trimmed)} tokens, not the {len(kept)} kept: this "
                            f"{type(tokenizer).__name__} keeps tokens outside tokenizer.json, which prunekit cannot "
                            "trim")
    return trimmed
