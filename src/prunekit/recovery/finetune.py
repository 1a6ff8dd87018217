"""The recovery loop: LoRA adapters (peft) trained with a language-modelling loss (`lora`) or with a KL loss on a
dense teacher's logits (`distill`, optionally plus the LM loss), merged back, sparsity mask re-applied.

Training text: non-overlapping windows of the calibration split (the evaluation split is never seen), shuffled with
the seed and cycled. Checkpoints (adapter weights as safetensors, optimizer state as a weights-only torch file, the
step and losses) go to the work folder every `checkpoint_every` steps; a rerun with the same settings resumes there.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedTokenizerBase

from prunekit.errors import PrunekitError
from prunekit.progress import progress_bar
from prunekit.recovery.losses import distillation_loss, lm_loss
from prunekit.recovery.masks import apply_masks, masked_zeros, sparsity_masks
from prunekit.text.sources import load_texts
from prunekit.text.tokens import token_stream

METHODS = ("lora", "distill")


@dataclass
class RecoveryConfig:
    method: str = "lora"
    steps: int = 100
    batch_size: int = 4
    seq_len: int = 256
    lr: float = 5e-4
    warmup: int = 10
    lora_rank: int = 16
    lora_alpha: int = 32
    temperature: float = 1.0
    lm_weight: float = 0.0  # distill: weight of the LM loss added to the KL loss
    checkpoint_every: int = 25
    source: str = "wikipedia"
    text_column: str = "text"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise PrunekitError(f"unknown recovery method {self.method!r}: use {' or '.join(METHODS)}")
        if isinstance(self.lora_rank, bool) or self.lora_rank < 1:
            raise PrunekitError(f"LoRA rank {self.lora_rank} must be a positive integer (e.g. 8 or 16)")
        for name in ("steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise PrunekitError(f"{name.replace('_', '-')} must be at least 1")
        if self.seq_len < 2:
            raise PrunekitError("seq-len must be at least 2 tokens")
        if self.lr <= 0 or self.temperature <= 0 or self.lm_weight < 0:
            raise PrunekitError("lr and temperature must be positive, lm-weight not negative")

    def fingerprint(self) -> str:
        training = {k: v for k, v in asdict(self).items() if k != "checkpoint_every"}
        return hashlib.sha256(json.dumps(training, sort_keys=True).encode()).hexdigest()[:16]


def check_teacher(student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase, student_vocab: int,
                  teacher_vocab: int) -> None:
    """Distillation compares next-token distributions position by position: same tokenizer, same vocabulary."""
    if student_vocab != teacher_vocab or student.get_vocab() != teacher.get_vocab():
        raise PrunekitError(
            f"the teacher has a different vocabulary ({teacher_vocab} tokens vs the student's {student_vocab}, or "
            "other token ids): distill from the dense model the student was pruned from"
        )


def training_windows(tokenizer: PreTrainedTokenizerBase, config: RecoveryConfig) -> torch.Tensor:
    """All non-overlapping windows of the calibration split, in a seeded order: [windows, seq_len]."""
    stream = token_stream(tokenizer, load_texts(config.source, "calibration", config.text_column))
    count = stream.numel() // config.seq_len
    if count < config.batch_size:
        raise PrunekitError(f"the training text has {stream.numel():,} tokens, fewer than one batch of "
                            f"{config.batch_size} x {config.seq_len}: give more text or lower --batch-size/--seq-len")
    windows = stream[: count * config.seq_len].view(count, config.seq_len)
    return windows[torch.randperm(count, generator=torch.Generator().manual_seed(config.seed))]


def learning_rate(step: int, config: RecoveryConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def recover(model: nn.Module, tokenizer: PreTrainedTokenizerBase, config: RecoveryConfig, work: Path,
            teacher: nn.Module | None = None, say: Callable[[str], None] = print) -> tuple[nn.Module, dict]:
    """Fine-tune `model` (in place) and return the merged model and a report section."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    if config.method == "distill" and teacher is None:
        raise PrunekitError("distillation needs a teacher: pass --teacher (the dense model)")
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    masks = sparsity_masks(model)
    zeros_before, masked = masked_zeros(model, masks)
    windows = training_windows(tokenizer, config)
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=0.0, bias="none",
                      target_modules="all-linear")
    student = get_peft_model(model, lora)
    trainable = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=0.0)
    checkpoint = work / "checkpoint"
    state = _load_checkpoint(checkpoint, config)
    start, losses = 0, []
    if state is not None:
        set_peft_model_state_dict(student, load_file(checkpoint / "adapter.safetensors"))
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
        start, losses = state["step"], state["losses"]
        say(f"resuming from step {start} ({checkpoint})")
    student.train()
    if teacher is not None:
        teacher.eval()
    with progress_bar() as bar:
        task = bar.add_task(f"{config.method} loss -", total=config.steps, completed=start)
        for step in range(start, config.steps):
            index = (torch.arange(config.batch_size) + step * config.batch_size) % len(windows)
            ids = windows[index].to(next(student.parameters()).device)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, config)
            logits = student(input_ids=ids, use_cache=False).logits
            loss = _loss(logits, ids, teacher, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            losses.append(round(loss.item(), 5))
            bar.update(task, advance=1, description=f"{config.method} loss {sum(losses[-10:]) / len(losses[-10:]):.3f}")
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
                _save_checkpoint(checkpoint, config, step + 1, losses, get_peft_model_state_dict(student),
                                 optimizer)
    merged = student.merge_and_unload()
    merged.eval()
    apply_masks(merged, masks)
    zeros_after, _ = masked_zeros(merged, masks)
    first, last = losses[: min(10, len(losses))], losses[-min(10, len(losses)) :]
    return merged, {
        **asdict(config),
        "tokens": config.steps * config.batch_size * config.seq_len,
        "loss_first_10": sum(first) / len(first),
        "loss_last_10": sum(last) / len(last),
        "losses": losses,
        "masked_weights": masked,
        "masked_zeros_before": zeros_before,
        "masked_zeros_after": zeros_after,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _loss(logits: torch.Tensor, ids: torch.Tensor, teacher: nn.Module | None, config: RecoveryConfig
          ) -> torch.Tensor:
    if config.method == "lora":
        return lm_loss(logits, ids)
    with torch.no_grad():
        target = teacher(input_ids=ids, use_cache=False).logits
    loss = distillation_loss(logits, target, config.temperature)
    return loss + config.lm_weight * lm_loss(logits, ids) if config.lm_weight else loss


def _load_checkpoint(folder: Path, config: RecoveryConfig) -> dict | None:
    try:
        state = json.loads((folder / "state.json").read_text())
    except (OSError, ValueError):
        return None
    return state if state.get("fingerprint") == config.fingerprint() else None


def _save_checkpoint(folder: Path, config: RecoveryConfig, step: int, losses: list[float],
                     adapter: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
    """Written aside and renamed, so an interrupted save leaves the previous checkpoint intact."""
    partial = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file({k: v.detach().contiguous() for k, v in adapter.items()}, partial / "adapter.safetensors")
    torch.save(optimizer.state_dict(), partial / "optimizer.pt")
    (partial / "state.json").write_text(json.dumps({"fingerprint": config.fingerprint(), "step": step,
                                                    "losses": losses}))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
