"""Speculative decoding with a small (pruned, vocabulary-trimmed) draft: transformers' assisted generation of a
target model with each draft, against greedy decoding of the target alone.

Method. Every model is loaded once, in this process. For each prompt, in each repeat, the target decodes alone
(`generate`, greedy), then with each draft in turn (`generate(..., assistant_model=draft)`, greedy), so drift of
the machine hits all of them alike. Reported per draft:

- acceptance rate: accepted draft tokens / proposed draft tokens, counted in target tokens by wrapping the
  candidate generator's `get_candidates` (what the draft proposed) and `update_candidate_strategy` (called once the
  target has verified a round, with the sequence it kept): a proposed token counts as accepted when it is in the
  kept sequence at its place. Counting from the kept sequence instead of transformers' `num_matches` keeps an
  accepted EOS or a token at the length limit from counting as rejected, so a draft identical to the target
  scores exactly 1.0;
- tokens per round: generated tokens / target forward passes (verification rounds);
- tokens/s: generated tokens / seconds of the whole `generate` call (prompt processing included: the prompts are
  short), summed over the prompts, median over the repeats; the speedup is the target-alone time over this;
- identical: prompts whose output equals the target's own greedy output token for token. Greedy assisted
  decoding is lossless in exact arithmetic; the target verifies several tokens in one forward pass, so in
  bfloat16 a near-tie can still flip, which this count shows.

How a draft is matched to the target, by tokenizer (`match_vocab`):

- same vocabulary: plain assisted generation (the draft's ids are the target's ids);
- the draft's tokens are a subset of the target's by token string (a vocabulary-trimmed draft, renumbered):
  ids are translated through a string-to-string map (transformers' `AssistantToTargetTranslator`, the
  heterogeneous-vocabulary method of Timor et al. 2025); transformers itself uses that translator only when
  sampling, so the candidate generator is built here for greedy decoding. Target tokens the draft lacks are
  re-encoded from their text;
- partly shared vocabularies: universal assisted decoding (every round re-encoded through text, transformers'
  greedy path for different tokenizers);
- too little shared (below `min_overlap` of the draft's tokens): a one-line error; such a draft comes from
  another model family and cannot predict the target's tokens well.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.table import Table
from transformers import GenerationConfig, PreTrainedTokenizerBase
from transformers.generation.candidate_generator import (
    AssistantToTargetTranslator,
    AssistedCandidateGenerator,
    AssistedCandidateGeneratorDifferentTokenizers,
    CandidateGenerator,
    UniversalSpeculativeDecodingGenerator,
    _prepare_attention_mask,
    _prepare_position_ids,
    _prepare_token_type_ids,
)
from transformers.generation.logits_process import LogitsProcessorList, SuppressTokensLogitsProcessor

from prunekit.errors import PrunekitError
from prunekit.eval.speed import device_name
from prunekit.files import read_text
from prunekit.runinfo import versions

RESULT_VERSION = 1

# Plain completion (no chat template): a signature and a docstring, the model writes the body.
CODE_PROMPTS = (
    'def is_prime(n: int) -> bool:\n    """Return True if n is a prime number."""\n',
    'def fibonacci(n: int) -> list[int]:\n    """Return the first n Fibonacci numbers."""\n',
    'def reverse_words(sentence: str) -> str:\n    """Reverse the order of the words in a sentence."""\n',
    'def flatten(nested: list) -> list:\n    """Flatten an arbitrarily nested list of lists."""\n',
    'def word_counts(text: str) -> dict[str, int]:\n    """Count how often each word occurs in text, '
    'ignoring case."""\n',
    'def binary_search(items: list[int], target: int) -> int:\n    """Return the index of target in the sorted '
    'list items, or -1."""\n',
    'def merge_intervals(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:\n    """Merge overlapping '
    'intervals and return them sorted."""\n',
    'import json\n\n\ndef load_config(path: str) -> dict:\n    """Read a JSON config file and return its contents, '
    'or an empty dict if it does not exist."""\n',
)


@dataclass
class AssistedConfig:
    new_tokens: int = 64  # at most this many tokens generated per prompt
    repeats: int = 1  # measured passes over the prompts (median of the totals reported)
    warmup: int = 1  # untimed short generations per model and draft first (lazy kernel setup)
    draft_tokens: int = 20  # tokens the draft proposes per round at most (transformers' num_assistant_tokens)
    confidence: float = 0.4  # the draft stops a round early below this probability (0: never); transformers' default
    ignore_eos: bool = False  # True: always generate new_tokens (EOS suppressed, in the target and alone alike)
    min_overlap: float = 0.5  # share of the draft's tokens the target must know for a text-mapped draft
    device: str = "auto"
    dtype: str = "auto"  # auto: float32 on CPU, the checkpoint's dtype on a GPU
    threads: int | None = None  # torch's default unless set
    trust_remote_code: bool = False


@dataclass
class VocabMatch:
    """How a draft's vocabulary relates to the target's."""

    mode: str  # same | mapped | text
    draft_tokens: int  # entries in the draft's tokenizer
    target_tokens: int
    shared: int  # draft tokens whose string the target's tokenizer also has
    overlap: float  # shared / draft_tokens


# ---- prompts ----


def read_prompts(path: Path) -> list[str]:
    """Prompts from a file: JSONL (a JSON string per line, or an object with "prompt" or "text") for prompts that
    span lines, otherwise one prompt per non-empty line, as it is."""
    path = Path(path)
    lines = [line for line in read_text(path, "prompts file").splitlines() if line.strip()]
    prompts = [_jsonl_prompt(line, path, i + 1) for i, line in enumerate(lines)] if path.suffix == ".jsonl" else lines
    if not prompts:
        raise PrunekitError(f"{path} holds no prompts: write one per line (or JSONL for prompts that span lines)")
    return prompts


def _jsonl_prompt(line: str, path: Path, number: int) -> str:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as e:
        raise PrunekitError(f"{path} line {number} is not JSON ({e.msg}): write a JSON string or "
                            '{"prompt": "..."} per line') from None
    prompt = item if isinstance(item, str) else item.get("prompt", item.get("text")) if isinstance(item, dict) else None
    if not isinstance(prompt, str) or not prompt:
        raise PrunekitError(f'{path} line {number} has no prompt: write a JSON string or {{"prompt": "..."}}')
    return prompt


# ---- matching a draft's vocabulary to the target's ----


def match_vocab(target: PreTrainedTokenizerBase, draft: PreTrainedTokenizerBase, min_overlap: float = 0.5,
                names: tuple[str, str] = ("target", "draft")) -> VocabMatch:
    """same, mapped (the draft's token strings all in the target's) or text; a one-line error when too few of the
    draft's tokens are the target's."""
    target_vocab, draft_vocab = target.get_vocab(), draft.get_vocab()
    shared = sum(token in target_vocab for token in draft_vocab)
    overlap = shared / max(len(draft_vocab), 1)
    same = target_vocab == draft_vocab
    mode = "same" if same else "mapped" if shared == len(draft_vocab) else "text"
    if mode == "text" and overlap < min_overlap:
        raise PrunekitError(
            f"draft {names[1]!r} shares only {overlap:.0%} of its {len(draft_vocab):,} tokens with target "
            f"{names[0]!r} (at least {min_overlap:.0%} needed): it is from another tokenizer family; use a draft of "
            "the target's family, or a vocabulary-trimmed copy of one (prunekit prune DRAFT --method vocab)")
    return VocabMatch(mode, len(draft_vocab), len(target_vocab), shared, overlap)


def _text_vocab_size(model: torch.nn.Module) -> int:
    return int(model.config.get_text_config().vocab_size)


def build_translator(target_tokenizer: PreTrainedTokenizerBase, draft_tokenizer: PreTrainedTokenizerBase,
                     target: torch.nn.Module, draft: torch.nn.Module) -> AssistantToTargetTranslator:
    """Draft id -> target id by token string (transformers' translator, its LM head left whole)."""
    return AssistantToTargetTranslator(target_tokenizer, draft_tokenizer, _text_vocab_size(target),
                                       assistant_model=draft, assistant_prune_lm_head=False)


def unmapped_ids(translator: AssistantToTargetTranslator, draft: torch.nn.Module) -> list[int]:
    """Draft ids with no target id: strings the target lacks, and padding rows of the draft's embedding past its
    tokenizer (no string at all), which the draft could otherwise propose and the map could not translate."""
    mapped = translator._assistant_to_target_input_ids
    missing = torch.nonzero(mapped == translator.SUPPRESS_TOKEN_ID).flatten().tolist()
    return missing + list(range(len(mapped), _text_vocab_size(draft)))


# ---- counting accepted draft tokens ----


@dataclass
class Acceptance:
    proposed: int = 0  # draft tokens the target verified, in target tokens
    accepted: int = 0  # of them, those the target kept
    rounds: int = 0  # target forward passes with candidates

    def watch(self, generator: CandidateGenerator) -> CandidateGenerator:
        """Wrap the generator's two calls of a round (see the module docstring); returns the same generator."""
        get_candidates, update = generator.get_candidates, generator.update_candidate_strategy
        pending: dict[str, Any] = {}

        def counted_get_candidates(input_ids: torch.LongTensor, **kwargs: Any) -> tuple[torch.LongTensor, Any]:
            candidates, logits = get_candidates(input_ids, **kwargs)
            pending.update(start=input_ids.shape[1], proposed=candidates[0, input_ids.shape[1]:].tolist())
            return candidates, logits

        def counted_update(input_ids: torch.LongTensor, scores: torch.Tensor, num_matches: int) -> None:
            proposed, kept = pending["proposed"], input_ids[0, pending["start"]:].tolist()
            self.rounds += 1
            self.proposed += len(proposed)
            self.accepted += _common_prefix(proposed, kept)
            update(input_ids, scores, num_matches)

        generator.get_candidates = counted_get_candidates  # type: ignore[method-assign]
        generator.update_candidate_strategy = counted_update  # type: ignore[method-assign]
        return generator

    def add(self, other: Acceptance) -> None:
        self.proposed += other.proposed
        self.accepted += other.accepted
        self.rounds += other.rounds

    @property
    def rate(self) -> float | None:
        return self.accepted / self.proposed if self.proposed else None


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


# ---- one draft, ready to assist ----


@dataclass
class Draft:
    spec: str
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    match: VocabMatch
    translator: AssistantToTargetTranslator | None = None  # mapped mode only, built on first use
    unmapped: list[int] = field(default_factory=list)  # draft ids the translator cannot map (mapped mode)


class _TextDraftGenerator(AssistedCandidateGeneratorDifferentTokenizers):
    """transformers' generator for a draft of another tokenizer, with the draft's cache cut back to the tokens it
    shares with the round's draft ids. transformers 5.25 works out the cut from lengths in the target's tokens,
    which differ from the draft's, so the cache could cover every id and the draft's next step got no input."""

    _cached_ids: torch.Tensor | None = None  # the draft ids the cache was computed on, as the last round left them

    def get_candidates(self, input_ids: torch.LongTensor, **kwargs: Any) -> tuple[torch.LongTensor, Any]:
        # copied before the round rewrites them in place (transformers edits the previous ids on a discrepancy)
        previous = self.prev_assistant_ids
        self._cached_ids = None if previous is None else previous.clone()
        return super().get_candidates(input_ids, **kwargs)

    def _update_past_and_masks(self, input_ids: torch.LongTensor, *args: Any, **kwargs: Any) -> bool:
        cache = self.assistant_kwargs.get("cache")
        if cache is None or self._cached_ids is None:
            return False
        cached = self._cached_ids[:, :cache.get_seq_length()]
        # keep the longest shared prefix, always leaving the last id to be fed
        limit = min(cached.shape[1], input_ids.shape[1] - 1)
        differs = torch.nonzero(cached[0, :limit] != input_ids[0, :limit].to(cached.device))
        keep = int(differs[0]) if len(differs) else limit
        if cache.get_seq_length() > keep:
            cache.crop(keep - cache.get_seq_length())
        length, encoder_decoder = input_ids.shape[-1], self.assistant_model.config.is_encoder_decoder
        self.assistant_kwargs = _prepare_attention_mask(self.assistant_kwargs, length, encoder_decoder)
        self.assistant_kwargs = _prepare_position_ids(self.assistant_kwargs, length, encoder_decoder)
        self.assistant_kwargs = _prepare_token_type_ids(self.assistant_kwargs, length)
        return True


def _candidate_generator(draft: Draft, target_tokenizer: PreTrainedTokenizerBase, target: torch.nn.Module,
                         kwargs: dict[str, Any]) -> CandidateGenerator:
    """The generator transformers would build for this pair, except for a mapped draft under greedy decoding,
    where transformers falls back to text re-encoding although the id map is exact and cheaper."""
    common = {key: kwargs[key] for key in ("input_ids", "generation_config", "model_kwargs", "inputs_tensor",
                                           "logits_processor")}
    if draft.match.mode == "same":
        return AssistedCandidateGenerator(assistant_model=draft.model, **common)
    tokenizers = {"target_tokenizer": target_tokenizer, "assistant_tokenizer": draft.tokenizer}
    if draft.match.mode == "text":
        return _TextDraftGenerator(assistant_model=draft.model, **tokenizers, **common)
    if draft.translator is None:
        draft.translator = build_translator(target_tokenizer, draft.tokenizer, target, draft.model)
        draft.unmapped = unmapped_ids(draft.translator, draft.model)
    draft.model.generation_config.repetition_penalty = None  # logits would be penalised at the wrong ids
    generator = UniversalSpeculativeDecodingGenerator(assistant_model=draft.model, atm_translator=draft.translator,
                                                      **tokenizers, **common)
    # the draft's rounds stop at EOS by the target's EOS ids, which mean other tokens (or none) in a renumbered
    # vocabulary: give the draft the same tokens in its own numbering
    generator.generation_config.eos_token_id = _draft_ids(generator.generation_config.eos_token_id, draft.translator)
    if draft.unmapped:
        # transformers replaces the draft's logits processors by the translator's: keep the call's own ones
        # (EOS suppressed with --ignore-eos) alongside the suppression of the draft ids the map lacks
        draft.translator.logits_processors = LogitsProcessorList(
            [*generator.logits_processor, SuppressTokensLogitsProcessor(draft.unmapped, device=draft.model.device)])
    return generator


def _draft_ids(target_ids: int | list[int] | None, translator: AssistantToTargetTranslator) -> list[int] | None:
    """Target token ids in the draft's numbering (None where the draft has none of them: its own EOS then)."""
    ids = [target_ids] if isinstance(target_ids, int) else list(target_ids or [])
    mapped = [translator.target_to_assistant_input_ids[i] for i in ids if i in translator.target_to_assistant_input_ids]
    return mapped or None


@contextmanager
def _assisting(target: torch.nn.Module, target_tokenizer: PreTrainedTokenizerBase, draft: Draft,
               acceptance: Acceptance) -> Iterator[None]:
    """While inside, the target's `generate` gets its candidate generator from `_candidate_generator`, counted.
    An attribute on the instance shadows the method for this one model only, and is removed afterwards."""

    def build(**kwargs: Any) -> CandidateGenerator:
        return acceptance.watch(_candidate_generator(draft, target_tokenizer, target, kwargs))

    target._get_candidate_generator = build
    try:
        yield
    finally:
        del target._get_candidate_generator


# ---- generating ----


def generation_config(target: torch.nn.Module, new_tokens: int, ignore_eos: bool) -> GenerationConfig:
    """Greedy, nothing else: a checkpoint's sampling or repetition settings would change what "the target's greedy
    output" means. EOS is suppressed (min_new_tokens) rather than unset, as an unset EOS falls back to the
    model's."""
    own = target.generation_config
    pad = own.pad_token_id if own.pad_token_id is not None else own.eos_token_id
    return GenerationConfig(do_sample=False, max_new_tokens=new_tokens,
                            min_new_tokens=new_tokens if ignore_eos else None, eos_token_id=own.eos_token_id,
                            pad_token_id=pad, bos_token_id=own.bos_token_id)


def _set_draft_options(draft: torch.nn.Module, config: AssistedConfig) -> None:
    """transformers reads the draft's round length and confidence threshold from the draft's generation config."""
    draft.generation_config.num_assistant_tokens = config.draft_tokens
    draft.generation_config.num_assistant_tokens_schedule = "constant"
    draft.generation_config.assistant_confidence_threshold = config.confidence


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' assisted generation warns about the arguments it passes to itself (the draft's generate call
    gets a generation config and its own length arguments, once per round): silenced while generating."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


@torch.inference_mode()
def generate(target: torch.nn.Module, target_tokenizer: PreTrainedTokenizerBase, ids: torch.Tensor,
             gen_config: GenerationConfig, draft: Draft | None = None) -> tuple[list[int], float, Acceptance]:
    """(new token ids, seconds of the `generate` call, acceptance) for one prompt; without a draft, the target's
    own greedy decoding."""
    acceptance = Acceptance()
    extra: dict[str, Any] = {}
    if draft is not None:
        extra["assistant_model"] = draft.model
        if _text_vocab_size(target) != _text_vocab_size(draft.model):  # transformers insists on the tokenizers then
            extra.update(tokenizer=target_tokenizer, assistant_tokenizer=draft.tokenizer)
    mask = torch.ones_like(ids)
    with _quiet_transformers():
        _sync(ids.device)
        start = time.perf_counter()
        if draft is None:
            out = target.generate(input_ids=ids, attention_mask=mask, generation_config=gen_config)
        else:
            with _assisting(target, target_tokenizer, draft, acceptance):
                out = target.generate(input_ids=ids, attention_mask=mask, generation_config=gen_config, **extra)
        _sync(ids.device)
        seconds = time.perf_counter() - start
    return out[0, ids.shape[1]:].tolist(), seconds, acceptance


# ---- the comparison ----


def _check(drafts: list[str], prompts: list[str], config: AssistedConfig) -> None:
    if not drafts:
        raise PrunekitError("no draft model: pass --draft DRAFT (repeatable)")
    if not prompts:
        raise PrunekitError("no prompts to decode: pass --prompts FILE with one prompt per line")
    for name in ("new_tokens", "repeats", "draft_tokens"):
        if getattr(config, name) < 1:
            raise PrunekitError(f"{name.replace('_', '-')} must be at least 1, not {getattr(config, name)}")
    if config.warmup < 0:
        raise PrunekitError(f"warmup must be 0 or more, not {config.warmup}")
    if config.threads is not None and config.threads < 1:
        raise PrunekitError(f"threads must be at least 1, not {config.threads}")
    if not 0 <= config.confidence < 1:
        raise PrunekitError(f"the draft confidence threshold must be in [0, 1), not {config.confidence}")


def _check_lengths(prompt_ids: list[torch.Tensor], new_tokens: int, models: list[tuple[str, torch.nn.Module]]) -> None:
    """Every prompt holds a token, and with the new tokens fits every model's context (a draft re-encodes the
    same text, so its length is about the target's)."""
    for i, ids in enumerate(prompt_ids):
        if ids.shape[1] == 0:
            raise PrunekitError(f"prompt {i + 1} is no token at all for the target's tokenizer: give it some text")
    needed = max(ids.shape[1] for ids in prompt_ids) + new_tokens
    for spec, model in models:
        limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
        if limit is not None and needed > limit:
            raise PrunekitError(f"{spec!r}: the longest prompt + --new-tokens = {needed} tokens exceeds its context "
                                f"of {limit}: shorten the prompts or lower --new-tokens")


def _load(spec: str, config: AssistedConfig, device: torch.device) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    from prunekit.models.loading import load_model

    loaded = load_model(spec, dtype=config.dtype, device=str(device), trust_remote_code=config.trust_remote_code)
    return loaded.model.to(device).eval(), loaded.tokenizer


def _load_draft(spec: str, target_spec: str, target_tokenizer: PreTrainedTokenizerBase, config: AssistedConfig,
                device: torch.device) -> Draft:
    from prunekit.models.loading import load_config_and_tokenizer, resolve_source

    where, _ = resolve_source(spec)
    _, tokenizer, _ = load_config_and_tokenizer(where, config.trust_remote_code, spec)
    match = match_vocab(target_tokenizer, tokenizer, config.min_overlap, (target_spec, spec))  # before the weights
    model, _ = _load(spec, config, device)
    _set_draft_options(model, config)
    return Draft(spec, model, tokenizer, match)


def _encode(tokenizer: PreTrainedTokenizerBase, prompts: list[str], device: torch.device) -> list[torch.Tensor]:
    return [tokenizer(p, return_tensors="pt")["input_ids"].to(device) for p in prompts]


def _warm_up(target: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, ids: torch.Tensor, drafts: list[Draft],
             config: AssistedConfig) -> None:
    short = generation_config(target, min(8, config.new_tokens), config.ignore_eos)
    for _ in range(config.warmup):
        for draft in [None, *drafts]:
            generate(target, tokenizer, ids, short, draft)


def _run(target: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompt_ids: list[torch.Tensor],
         drafts: list[Draft], config: AssistedConfig, say: Callable[[str], None]) -> list[list[dict[str, Any]]]:
    """runs[k][p]: for the target alone (k = 0) and each draft, per prompt: tokens, seconds per repeat, acceptance
    (of the first repeat: greedy decoding repeats itself)."""
    gen_config = generation_config(target, config.new_tokens, config.ignore_eos)
    runs: list[list[dict[str, Any]]] = [[{"seconds": []} for _ in prompt_ids] for _ in range(len(drafts) + 1)]
    for r in range(config.repeats):
        for p, ids in enumerate(prompt_ids):
            say(f"repeat {r + 1}/{config.repeats}, prompt {p + 1}/{len(prompt_ids)}")
            for k, draft in enumerate([None, *drafts]):
                tokens, seconds, acceptance = generate(target, tokenizer, ids, gen_config, draft)
                record = runs[k][p]
                record["seconds"].append(seconds)
                record.setdefault("tokens", tokens)
                record.setdefault("acceptance", acceptance)
    return runs


def _total_seconds(records: list[dict[str, Any]]) -> list[float]:
    """Seconds of each repeat, summed over the prompts."""
    return [sum(r["seconds"][i] for r in records) for i in range(len(records[0]["seconds"]))]


def _first_difference(a: list[int], b: list[int]) -> int | None:
    n = _common_prefix(a, b)
    return None if n == len(a) == len(b) else n


def _speed(records: list[dict[str, Any]]) -> dict[str, Any]:
    totals = _total_seconds(records)
    tokens = sum(len(r["tokens"]) for r in records)
    seconds = statistics.median(totals)
    return {"tokens": tokens, "seconds": seconds, "seconds_runs": totals, "tokens_per_s": tokens / seconds}


def _prompt_result(record: dict[str, Any], alone: dict[str, Any],
                   tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """One prompt with one draft; where the output differs from the target's own, the text of both from the
    first differing token, to see the near-tie that flipped."""
    tokens, own = record["tokens"], alone["tokens"]
    first = _first_difference(tokens, own)
    result = {"tokens": len(tokens), "seconds": record["seconds"], "acceptance": record["acceptance"].rate,
              "identical": first is None, "first_difference": first}
    if first is not None:
        result["differs"] = {"assisted": tokenizer.decode(tokens[first:]), "alone": tokenizer.decode(own[first:])}
    return result


def _draft_result(draft: Draft, records: list[dict[str, Any]], alone: list[dict[str, Any]],
                  tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    total = Acceptance()
    for r in records:
        total.add(r["acceptance"])
    speed = _speed(records)
    per_prompt = [_prompt_result(r, a, tokenizer) for r, a in zip(records, alone, strict=True)]
    return {
        "model": draft.spec, "parameters": sum(p.numel() for p in draft.model.parameters()),
        "vocab": asdict(draft.match), **speed,
        "speedup": _speed(alone)["seconds"] / speed["seconds"],
        "acceptance": total.rate, "accepted": total.accepted, "proposed": total.proposed, "rounds": total.rounds,
        "tokens_per_round": speed["tokens"] / total.rounds if total.rounds else None,
        "identical": sum(p["identical"] for p in per_prompt), "per_prompt": per_prompt,
    }


def compare_drafts(target_spec: str, draft_specs: list[str], prompts: list[str] | None = None,
                   config: AssistedConfig | None = None,
                   on_progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Assisted generation of `target_spec` with each draft against the target alone (see the module docstring);
    a JSON-serialisable result."""
    from prunekit.models.loading import resolve_device

    config = config or AssistedConfig()
    prompts = list(CODE_PROMPTS) if prompts is None else prompts
    _check(draft_specs, prompts, config)
    say = on_progress or _print_progress
    device = resolve_device(config.device)
    if device.type not in ("cpu", "cuda"):
        raise PrunekitError(f"assisted generation runs on cpu or cuda, not {config.device!r}: use auto, cpu, cuda "
                            "or cuda:N")
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    say(f"loading target {target_spec}")
    target, tokenizer = _load(target_spec, config, device)
    drafts = []
    for spec in draft_specs:
        say(f"loading draft {spec}")
        drafts.append(_load_draft(spec, target_spec, tokenizer, config, device))
    prompt_ids = _encode(tokenizer, prompts, device)
    _check_lengths(prompt_ids, config.new_tokens, [(target_spec, target), *((d.spec, d.model) for d in drafts)])
    _warm_up(target, tokenizer, prompt_ids[0], drafts, config)
    runs = _run(target, tokenizer, prompt_ids, drafts, config, say)
    alone = [{"tokens": len(r["tokens"]), "seconds": r["seconds"]} for r in runs[0]]
    return {
        "prunekit_assisted_version": RESULT_VERSION,
        "config": asdict(config),
        "environment": _environment(device),
        "target": {"model": target_spec, "parameters": sum(p.numel() for p in target.parameters()),
                   "dtype": str(next(target.parameters()).dtype).removeprefix("torch."), **_speed(runs[0]),
                   "per_prompt": alone},
        "prompts": prompts,
        "outputs": [tokenizer.decode(r["tokens"]) for r in runs[0]],
        "drafts": [_draft_result(d, records, runs[0], tokenizer) for d, records in zip(drafts, runs[1:],
                                                                                      strict=True)],
        "notes": ["greedy decoding; tokens/s over whole generate calls, summed over the prompts, median of the "
                  "repeats; acceptance = accepted / proposed draft tokens, in target tokens"],
    }


def _environment(device: torch.device) -> dict[str, Any]:
    return {"device": str(device), "device_name": device_name(device), "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "platform": platform.platform(), "versions": versions()}


def _print_progress(message: str) -> None:
    from prunekit.progress import console

    console.print(f"[dim]{message}[/]", highlight=False)


# ---- the table ----


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _vocab_cell(match: dict[str, Any]) -> str:
    if match["mode"] == "same":
        return "same"
    return f"{match['mode']} ({match['draft_tokens']:,} tokens, {match['overlap']:.1%} shared)"


def render_table(result: dict[str, Any]) -> Table:
    """One row for the target alone, one per draft: vocabulary match, acceptance, tokens per target forward pass,
    tokens/s, speedup, prompts whose output equals the target's."""
    config, env, target = result["config"], result["environment"], result["target"]
    count = len(result["prompts"])
    table = Table(
        title=f"speculative decoding of {target['model']} ({target['dtype']}), greedy",
        caption=f"{env['device_name']}, {env['threads']} threads; {count} prompts, up to {config['new_tokens']} "
        f"new tokens; draft rounds of up to {config['draft_tokens']} tokens; median of {config['repeats']} "
        "repeats; comparable within this run only",
    )
    for column in ("draft", "params", "vocabulary", "acceptance", "tokens/round", "tokens", "tok/s", "speedup",
                   "identical"):
        table.add_column(column, justify="left" if column in ("draft", "vocabulary") else "right")
    table.add_row("(target alone)", f"{target['parameters'] / 1e6:,.0f}M", "-", "-", "1.00", str(target["tokens"]),
                  f"{target['tokens_per_s']:,.2f}", "1.00x", "-")
    for d in result["drafts"]:
        per_round = "-" if d["tokens_per_round"] is None else f"{d['tokens_per_round']:.2f}"
        table.add_row(d["model"], f"{d['parameters'] / 1e6:,.0f}M", _vocab_cell(d["vocab"]), _percent(d["acceptance"]),
                      per_round, str(d["tokens"]), f"{d['tokens_per_s']:,.2f}", f"{d['speedup']:.2f}x",
                      f"{d['identical']}/{count}")
    return table


def write_json(result: dict[str, Any], path: Path, overwrite: bool = False, inputs: tuple = ()) -> None:
    from prunekit.eval.speed import write_json as write

    write(result, path, overwrite, inputs)
