"""Small, fast, deterministic training for data-pruning experiments: the models, the training loop that feeds the
training-dynamics recorder, knowledge distillation, and evaluation.

Data pruning needs many trainings (scoring runs, then one model per pruned subset), all on CPU, so the models are
small and the loop is lean: the whole dataset is one in-memory tensor, batches are sliced from it, augmentation
(random crop + horizontal flip) is done on the batch tensor, and a one-cycle schedule reaches good accuracy in few
epochs. Everything random (shuffling, augmentation) comes from one generator seeded by `TrainConfig.seed`, so a
training repeats exactly on the same machine and thread count.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.data.sources import LabelledData
from prunekit.errors import PrunekitError

OnEpoch = Callable[[int, float, float], None]


class Recorder(Protocol):
    """What `train` feeds per batch: the training-dynamics recorder's interface."""

    def record(self, ids: list[str], logits: torch.Tensor, labels: torch.Tensor, epoch: int, run: int = 0) -> None: ...


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters. `lr` is the peak of the one-cycle schedule. `augment` applies only to images.
    `kd_alpha` weighs distillation against cross-entropy when a teacher is given. `num_threads` sets torch's
    intra-op threads during training (None: leave torch's setting). It defaults to 1: these models are too small to
    gain much from more, a CPU shared with other jobs makes two threads 4-7x SLOWER (they wait on each other), and
    results repeat exactly only at the same thread count. Train several models in parallel processes instead."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    weight_decay: float = 5e-4
    momentum: float = 0.9
    seed: int = 0
    augment: bool = True
    label_smoothing: float = 0.0
    kd_alpha: float = 0.0
    kd_temperature: float = 4.0
    num_threads: int | None = 1

    def __post_init__(self) -> None:
        """Every setting checked when it is made, so a command fails before it reads data or writes anything."""
        if self.epochs < 1 or self.batch_size < 1:
            raise PrunekitError("epochs and batch_size must be at least 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise PrunekitError(f"learning rate {self.lr} must be a positive number, e.g. 0.05")
        if not (self.weight_decay >= 0 and 0 <= self.momentum < 1 and 0 <= self.label_smoothing < 1):
            raise PrunekitError("weight_decay must be >= 0, momentum and label_smoothing in [0, 1)")
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise PrunekitError(f"kd_alpha is {self.kd_alpha}: it must lie in [0, 1]")
        if not self.kd_temperature > 0:
            raise PrunekitError(f"kd_temperature {self.kd_temperature} must be positive")
        if self.num_threads is not None and self.num_threads < 1:
            raise PrunekitError(f"threads {self.num_threads} must be at least 1")


def _conv_block(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def small_cnn(num_classes: int, in_channels: int = 3, seed: int = 0, width: int = 24) -> nn.Module:
    """A 4-stage CNN for 32x32 images (~220k parameters at width 24; other sizes work through the global pool).
    The stem has stride 2: full-resolution feature maps cost most of a CPU epoch and add little at this size."""
    with _seeded(seed):
        return nn.Sequential(
            *_conv_block(in_channels, width, stride=2),
            *_conv_block(width, 2 * width),
            nn.MaxPool2d(2),
            *_conv_block(2 * width, 4 * width),
            nn.MaxPool2d(2),
            *_conv_block(4 * width, 8 * width),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
            nn.Linear(8 * width, num_classes),
        )


def mlp(in_features: int, num_classes: int, hidden: int | Sequence[int] = 256, seed: int = 0) -> nn.Module:
    """A ReLU MLP for feature vectors (inputs of any shape are flattened first)."""
    widths = [in_features, *([hidden] if isinstance(hidden, int) else hidden)]
    with _seeded(seed):
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        return nn.Sequential(*layers, nn.Linear(widths[-1], num_classes))


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's global generator inside, restoring it after, so callers' random state is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run with torch's intra-op thread count set to `num_threads` (None: unchanged), restored after."""
    previous = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train(
    model: nn.Module,
    data: LabelledData,
    config: TrainConfig | None = None,
    recorder: Recorder | None = None,
    teacher: nn.Module | None = None,
    on_epoch: OnEpoch | None = None,
    run: int = 0,
) -> nn.Module:
    """Train `model` in place on `data` with SGD (Nesterov momentum) and a one-cycle schedule; returns it, in eval
    mode.

    With a `recorder`, every example is recorded once per epoch (epochs numbered from 0, `run` passed through) with
    the logits of that epoch's training forward pass: train-mode batch norm, augmented input, the weights of the
    moment. That is the usual practice for forgetting events and AUM and costs no extra forward pass.
    With a `teacher`, the loss is Hinton's distillation: (1 - a) * CE + a * T^2 * KL(softmax(t/T) || softmax(s/T)).
    `on_epoch(epoch, mean_loss, seconds)` reports progress.
    """
    config = config or TrainConfig()
    _check_trainable(data, config, teacher)
    with torch_threads(config.num_threads), _seeded(config.seed), _teacher_mode(teacher):
        generator = torch.Generator().manual_seed(config.seed)
        model = _memory_layout(model, data).train()
        optimizer = torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum, nesterov=True, weight_decay=config.weight_decay
        )
        batches_per_epoch = math.ceil(len(data) / config.batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, config.lr, total_steps=config.epochs * batches_per_epoch, pct_start=0.25, cycle_momentum=False
        )
        for epoch in range(config.epochs):
            start = time.perf_counter()
            # tensor_split makes near-equal batches: no straggler of one example to upset batch norm.
            batches = torch.randperm(len(data), generator=generator).tensor_split(batches_per_epoch)
            loss = _train_epoch(model, data, batches, _Step(config, optimizer, schedule, generator, teacher),
                                recorder, epoch, run)
            if on_epoch is not None:
                on_epoch(epoch, loss, time.perf_counter() - start)
    return model.eval()


@dataclass
class _Step:
    """What one optimisation step needs besides the batch."""

    config: TrainConfig
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    teacher: nn.Module | None


def _train_epoch(
    model: nn.Module,
    data: LabelledData,
    batches: Sequence[torch.Tensor],
    step: _Step,
    recorder: Recorder | None,
    epoch: int,
    run: int,
) -> float:
    """One pass over `batches` (index tensors into `data`); returns the mean training loss."""
    device = next(model.parameters()).device
    total = 0.0
    for index in batches:
        x = _batch_inputs(data, index, step.config, step.generator, device)
        y = data.labels[index].to(device)
        logits = model(x)
        loss = _loss(logits, y, x, step.config, step.teacher)
        step.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        step.optimizer.step()
        step.schedule.step()
        total += float(loss.detach()) * len(index)
        if recorder is not None:
            recorder.record([data.ids[i] for i in index.tolist()], logits.detach().cpu(), y.cpu(), epoch, run)
    return total / len(data)


def _check_trainable(data: LabelledData, config: TrainConfig, teacher: nn.Module | None) -> None:
    if data.labels is None:
        raise PrunekitError(f"dataset {data.name!r} has no labels: training needs one label per example")
    if len(data) == 0:
        raise PrunekitError(f"dataset {data.name!r} is empty: nothing to train on")
    if config.epochs < 1 or config.batch_size < 1:
        raise PrunekitError("epochs and batch_size must be at least 1")
    if not 0.0 <= config.kd_alpha <= 1.0:
        raise PrunekitError(f"kd_alpha is {config.kd_alpha}: it must lie in [0, 1]")
    if teacher is not None and config.kd_alpha == 0.0:
        raise PrunekitError("a teacher was given but kd_alpha is 0, so it would be ignored: set kd_alpha in (0, 1]")


@contextlib.contextmanager
def _teacher_mode(teacher: nn.Module | None) -> Iterator[None]:
    if teacher is None:
        yield
        return
    was_training = teacher.training
    teacher.eval()
    try:
        yield
    finally:
        teacher.train(was_training)


def _memory_layout(model: nn.Module, data: LabelledData) -> nn.Module:
    # channels_last lets oneDNN skip layout conversions around every convolution: ~1.5-2x faster CPU epochs.
    return model.to(memory_format=torch.channels_last) if data.is_image else model


def _batch_inputs(
    data: LabelledData, index: torch.Tensor, config: TrainConfig, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    x = data.inputs[index]
    if data.is_image and config.augment:
        x = augment(x, generator)
    if data.is_image:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.to(device)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding by 1/8 of the size (4 px at 32x32), and a random horizontal flip, per image.
    Zero padding is the dataset mean, since images are normalised."""
    n, c, h, w = images.shape
    pad = max(1, min(h, w) // 8)
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    rows = (dy + torch.arange(h))[:, None, :, None]
    cols = (dx + torch.arange(w))[:, None, None, :]
    cropped = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], cropped.flip(3), cropped)


def _loss(
    logits: torch.Tensor, labels: torch.Tensor, x: torch.Tensor, config: TrainConfig, teacher: nn.Module | None
) -> torch.Tensor:
    ce = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
    if teacher is None:
        return ce
    with torch.no_grad():
        teacher_logits = teacher(x)
    t = config.kd_temperature
    kl = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1), reduction="batchmean",
                  log_target=True)
    return (1 - config.kd_alpha) * ce + config.kd_alpha * t * t * kl


@torch.no_grad()
def predict_logits(model: nn.Module, data: LabelledData, batch_size: int = 512) -> torch.Tensor:
    """Eval-mode logits [N, C] (float32, on CPU) for every example, in order; the model's mode is restored."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        chunks = []
        for start in range(0, len(data), batch_size):
            x = data.inputs[start : start + batch_size]
            x = x.contiguous(memory_format=torch.channels_last) if data.is_image else x
            chunks.append(model(x.to(device)).float().cpu())
        return torch.cat(chunks) if chunks else torch.empty(0, data.num_classes)
    finally:
        model.train(was_training)


def evaluate(model: nn.Module, data: LabelledData, batch_size: int = 512) -> float:
    """Top-1 accuracy of `model` on `data`, in [0, 1]."""
    if data.labels is None:
        raise PrunekitError(f"dataset {data.name!r} has no labels: accuracy needs them")
    if len(data) == 0:
        raise PrunekitError(f"dataset {data.name!r} is empty: nothing to evaluate")
    predictions = predict_logits(model, data, batch_size).argmax(dim=1)
    return float((predictions == data.labels).float().mean())
