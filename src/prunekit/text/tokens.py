"""From documents to token ids: seeded calibration windows and fixed evaluation windows."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from prunekit.errors import PrunekitError


def token_stream(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> torch.Tensor:
    """All documents tokenized and joined into one stream, separated by the EOS token when there is one."""
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids: list[int] = []
    for doc in encoded:
        ids.extend(doc)
        ids.extend(sep)
    return torch.tensor(ids, dtype=torch.long)


def calibration_windows(stream: torch.Tensor, samples: int, seq_len: int, seed: int) -> torch.Tensor:
    """`samples` distinct non-overlapping windows of `seq_len` tokens, chosen at random with `seed`: [samples, L]."""
    available = stream.numel() // seq_len
    if available < samples:
        raise PrunekitError(
            f"calibration text has {stream.numel():,} tokens, fewer than the {samples} x {seq_len} requested: "
            "give more text or lower --calib-samples / --calib-seq-len"
        )
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(available, generator=generator)[:samples].sort().values
    return stream[: available * seq_len].view(available, seq_len)[chosen].clone()


def held_out_windows(stream: torch.Tensor, samples: int, seq_len: int, seed: int, calibration_samples: int
                     ) -> torch.Tensor:
    """`samples` windows that `calibration_windows(stream, calibration_samples, seq_len, seed)` does not choose
    (the next ones of its random order), for scoring against text the calibration statistics never saw."""
    available = stream.numel() // seq_len
    if available < calibration_samples + samples:
        raise PrunekitError(
            f"calibration text has {stream.numel():,} tokens, fewer than the ({calibration_samples} + {samples}) x "
            f"{seq_len} requested (calibration + held-out windows): give more text or fewer samples"
        )
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(available, generator=generator)[calibration_samples:calibration_samples + samples]
    return stream[: available * seq_len].view(available, seq_len)[chosen.sort().values].clone()


def evaluation_windows(stream: torch.Tensor, samples: int, seq_len: int) -> torch.Tensor:
    """`samples` non-overlapping windows spread evenly over the stream (deterministic): [samples, L]."""
    available = stream.numel() // seq_len
    if available < samples:
        raise PrunekitError(
            f"evaluation text has {stream.numel():,} tokens, fewer than the {samples} x {seq_len} requested: "
            "give more text or lower --ppl-samples / --ppl-seq-len"
        )
    chosen = torch.linspace(0, available - 1, samples).round().long()
    return stream[: available * seq_len].view(available, seq_len)[chosen].clone()
