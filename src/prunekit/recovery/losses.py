"""Training losses on logits: language modelling and distillation from a teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prunekit.models.loss import next_token_loss


def lm_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; logits [B, L, V], ids [B, L]."""
    return next_token_loss(logits, ids)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) of the softened next-token distributions, mean over tokens, scaled by T^2 so the
    gradient size does not depend on the temperature (Hinton et al.)."""
    t = temperature
    log_student = F.log_softmax(student.flatten(0, 1).float() / t, dim=-1)
    log_teacher = F.log_softmax(teacher.flatten(0, 1).float() / t, dim=-1)
    return F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean") * t * t
