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
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedTokenizerBase

from prunekit.errors import PrunekitError
from prunekit.files import first_line, load_safetensors
from prunekit.outputs import work_directory
from prunekit.progress import progress_bar
from prunekit.recipe import SEED_MAX
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
        for name in ("steps", "batch_size", "checkpoint_every", "lora_alpha"):
            if getattr(self, name) < 1:
                raise PrunekitError(f"{name.replace('_', '-')} must be at least 1")
        if not 0 <= self.seed <= SEED_MAX:
            raise PrunekitError(f"seed {self.seed} must be between 0 and {SEED_MAX}")
        if self.warmup < 0:
            raise PrunekitError("warmup must not be negative")
        if self.seq_len < 2:
            raise PrunekitError("seq-len must be at least 2 tokens")
        if not (math.isfinite(self.lr) and math.isfinite(self.temperature) and math.isfinite(self.lm_weight)):
            raise PrunekitError("lr, temperature and lm-weight must be finite numbers")
        if self.lr <= 0 or self.temperature <= 0 or self.lm_weight < 0:
            raise PrunekitError("lr and temperature must be positive, lm-weight not negative")

    def settings(self) -> dict:
        """The settings a resumed run must share (how often it checkpoints does not change the result)."""
        return {k: v for k, v in asdict(self).items() if k != "checkpoint_every"}


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer, names included: which weights these are, whatever their path."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def run_fingerprint(config: RecoveryConfig, model: nn.Module, teacher: nn.Module | None,
                    windows: torch.Tensor) -> str:
    """What a checkpoint is of: the student's and the teacher's weights, the training tokens and every setting. A
    checkpoint with another fingerprint is never resumed."""
    digest = hashlib.sha256(json.dumps(config.settings(), sort_keys=True).encode())
    digest.update(weights_digest(model).encode())
    digest.update(weights_digest(teacher).encode() if teacher is not None else b"no teacher")
    digest.update(windows.contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


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
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    if config.method == "distill" and teacher is None:
        raise PrunekitError("distillation needs a teacher: pass --teacher (the dense model)")
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    masks = sparsity_masks(model)
    zeros_before, masked = masked_zeros(model, masks)
    windows = training_windows(tokenizer, config)
    fingerprint = run_fingerprint(config, model, teacher, windows)
    work = work_directory(work, "recover")  # only now: bad training text must leave nothing behind
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=0.0, bias="none",
                      target_modules="all-linear")
    student = get_peft_model(model, lora)
    trainable = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=0.0)
    checkpoint = work / "checkpoint"
    start, losses = _resume(work, fingerprint, student, optimizer, say)
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
                _save_checkpoint(checkpoint, fingerprint, step + 1, losses, get_peft_model_state_dict(student),
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


def _resume(work: Path, fingerprint: str, student: nn.Module, optimizer: torch.optim.Optimizer,
            say: Callable[[str], None]) -> tuple[int, list[float]]:
    """(step, losses) of the newest intact checkpoint of this very run, loaded into `student` and `optimizer`;
    (0, []) when there is none. A corrupt one is said, with the file at fault, and the one before it tried."""
    from peft import set_peft_model_state_dict

    for folder in (work / "checkpoint", work / "previous"):
        state = _read_state(folder)
        if state is None or state.get("fingerprint") != fingerprint:
            continue
        adapter_before = {k: v.clone() for k, v in student.state_dict().items() if "lora_" in k}
        try:
            adapter = load_safetensors(folder / "adapter.safetensors", "recovery checkpoint")
            optimizer_state = _load_optimizer(folder / "optimizer.pt")
            set_peft_model_state_dict(student, adapter)
            optimizer.load_state_dict(optimizer_state)
            step, losses = int(state["step"]), [float(x) for x in state["losses"]]
        except (PrunekitError, KeyError, TypeError, ValueError, RuntimeError) as e:
            student.load_state_dict(adapter_before, strict=False)  # undo a half-applied adapter
            say(f"checkpoint {folder} is unusable ({first_line(e)}): "
                + ("trying the one before it" if folder.name == "checkpoint" else "starting from step 0"))
            continue
        say(f"resuming from step {step} ({folder})")
        return step, losses
    return 0, []


def _read_state(folder: Path) -> dict | None:
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _load_optimizer(path: Path) -> dict:
    try:
        return torch.load(path, weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated torch file raises one of several types
        raise PrunekitError(f"{path.name} cannot be read ({first_line(e)})") from None


def _save_checkpoint(folder: Path, fingerprint: str, step: int, losses: list[float],
                     adapter: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
    """Written aside and renamed; the checkpoint before it is kept as `previous`, so a damaged newest one still
    leaves one to resume from."""
    partial = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file({k: v.detach().contiguous() for k, v in adapter.items()}, partial / "adapter.safetensors")
    torch.save(optimizer.state_dict(), partial / "optimizer.pt")
    (partial / "state.json").write_text(json.dumps({"fingerprint": fingerprint, "step": step, "losses": losses}))
    previous = folder.with_name("previous")
    if folder.exists():
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(folder, previous)
    os.replace(partial, folder)
