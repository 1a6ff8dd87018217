"""The causal language-model loss, written once: every perplexity, calibration score and training step uses it."""

from __future__ import annotations

import torch
from torch import nn


def next_token_loss(logits: torch.Tensor, input_ids: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of each next token, in float32: logits [B, L, V] score ids[:, 1:]; the first token is not
    scored. `reduction` as in torch: mean, sum, or none (one loss per scored token, shape [B, L - 1])."""
    losses = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten(),
                                         reduction=reduction)
    return losses.view(input_ids.shape[0], -1) if reduction == "none" else losses
