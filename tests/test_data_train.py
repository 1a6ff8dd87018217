"""The small models, the deterministic training loop, its recorder feed, distillation and evaluation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prunekit.data import sources
from prunekit.data.train import TrainConfig, _loss, augment, evaluate, mlp, predict_logits, small_cnn, train
from prunekit.errors import PrunekitError

FAST = TrainConfig(epochs=3, batch_size=64, lr=0.05)


@pytest.fixture(scope="module")
def digits() -> tuple[sources.LabelledData, sources.LabelledData]:
    return sources.digits().split(0.2, seed=0)


def _tiny_images(n: int = 48, size: int = 16, seed: int = 0) -> sources.LabelledData:
    """Two classes told apart by brightness, so a CNN can learn them in a few steps."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    x = torch.rand(n, 3, size, size, generator=generator) + labels.view(-1, 1, 1, 1).float()
    return sources.from_arrays(x, labels, classes=["dark", "bright"], name="tiny")


def _weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([v.flatten().float() for v in model.state_dict().values()])


class ListRecorder:
    def __init__(self) -> None:
        self.calls: list[tuple[list[str], torch.Tensor, torch.Tensor, int, int]] = []

    def record(self, ids: list[str], logits: torch.Tensor, labels: torch.Tensor, epoch: int, run: int = 0) -> None:
        self.calls.append((ids, logits, labels, epoch, run))


def test_model_sizes_and_shapes() -> None:
    cnn = small_cnn(10)
    assert 100_000 <= sum(p.numel() for p in cnn.parameters()) <= 300_000
    assert cnn(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert small_cnn(10, in_channels=1)(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert mlp(64, 10, hidden=(32, 16))(torch.zeros(5, 64)).shape == (5, 10)
    assert torch.equal(_weights(small_cnn(10, seed=1)), _weights(small_cnn(10, seed=1)))
    assert not torch.equal(_weights(mlp(4, 2, seed=1)), _weights(mlp(4, 2, seed=2)))


def test_mlp_learns_digits(digits: tuple) -> None:
    train_set, held_out = digits
    model = train(mlp(64, 10), train_set, TrainConfig(epochs=8, lr=0.1))
    assert evaluate(model, held_out) > 0.9


def test_training_repeats_exactly_and_leaves_global_rng_alone(digits: tuple) -> None:
    train_set, _ = digits
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = train(mlp(64, 10, seed=0), train_set, FAST)
    assert torch.equal(torch.rand(1), before)
    b = train(mlp(64, 10, seed=0), train_set, FAST)
    c = train(mlp(64, 10, seed=0), train_set, TrainConfig(epochs=3, batch_size=64, lr=0.05, seed=1))
    assert torch.equal(_weights(a), _weights(b))
    assert not torch.equal(_weights(a), _weights(c))


def test_cnn_training_with_augmentation_repeats_exactly() -> None:
    data = _tiny_images()
    config = TrainConfig(epochs=2, batch_size=16, lr=0.05)
    a = train(small_cnn(2, width=8), data, config)
    b = train(small_cnn(2, width=8), data, config)
    assert torch.equal(_weights(a), _weights(b))
    assert torch.equal(predict_logits(a, data), predict_logits(b, data))


def test_recorder_sees_every_example_once_per_epoch() -> None:
    data = _tiny_images(n=50)
    recorder = ListRecorder()
    progress: list[tuple[int, float, float]] = []
    train(small_cnn(2, width=8), data, TrainConfig(epochs=3, batch_size=16), recorder=recorder,
          on_epoch=lambda e, loss, s: progress.append((e, loss, s)), run=2)
    assert [e for e, _, _ in progress] == [0, 1, 2] and all(loss > 0 and s >= 0 for _, loss, s in progress)
    for epoch in range(3):
        calls = [c for c in recorder.calls if c[3] == epoch]
        ids = [i for c in calls for i in c[0]]
        assert sorted(ids) == sorted(data.ids)
        assert all(len(c[0]) >= 12 for c in calls)  # batches of near-equal size: no straggler of one
        position = {i: k for k, i in enumerate(data.ids)}
        for batch_ids, logits, labels, _, run in calls:
            assert logits.shape == (len(batch_ids), 2) and not logits.requires_grad and run == 2
            assert labels.tolist() == [int(data.labels[position[i]]) for i in batch_ids]


def test_augment_crops_and_flips_deterministically() -> None:
    images = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).view(2, 3, 16, 16) + 1
    a = augment(images, torch.Generator().manual_seed(0))
    b = augment(images, torch.Generator().manual_seed(0))
    assert a.shape == images.shape and torch.equal(a, b)
    # Every output pixel is a zero pad or an input pixel of the same image and channel.
    for n in range(2):
        for ch in range(3):
            values = set(images[n, ch].flatten().tolist()) | {0.0}
            assert set(a[n, ch].flatten().tolist()) <= values
    shifted = [augment(images, torch.Generator().manual_seed(s)) for s in range(5)]
    assert any(not torch.equal(s, images) for s in shifted)


def test_distillation_loss_matches_hinton() -> None:
    torch.manual_seed(0)
    student, labels = torch.randn(6, 4), torch.randint(0, 4, (6,))
    teacher_logits = torch.randn(6, 4)

    class Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return teacher_logits

    config = TrainConfig(kd_alpha=0.7, kd_temperature=2.0)
    p_teacher = F.softmax(teacher_logits / 2, dim=1)
    kl = (p_teacher * (p_teacher.log() - F.log_softmax(student / 2, dim=1))).sum(1).mean()
    expected = 0.3 * F.cross_entropy(student, labels) + 0.7 * 4 * kl
    assert torch.allclose(_loss(student, labels, torch.zeros(6, 1), config, Fixed()), expected, atol=1e-6)
    # A student identical to its teacher has zero KL.
    same = _loss(teacher_logits, labels, torch.zeros(6, 1), config, Fixed())
    assert torch.allclose(same, 0.3 * F.cross_entropy(teacher_logits, labels), atol=1e-6)


def test_distillation_trains_toward_the_teacher(digits: tuple) -> None:
    train_set, held_out = digits
    teacher = train(mlp(64, 10, seed=5), train_set, TrainConfig(epochs=8, lr=0.1))
    teacher.train()
    student = train(mlp(64, 10, hidden=32), train_set, TrainConfig(epochs=8, lr=0.1, kd_alpha=0.9), teacher=teacher)
    assert teacher.training  # its mode is restored
    agreement = (predict_logits(student, held_out).argmax(1) == predict_logits(teacher, held_out).argmax(1))
    assert agreement.float().mean() > 0.85
    with pytest.raises(PrunekitError, match="kd_alpha is 0"):
        train(mlp(64, 10), train_set, FAST, teacher=teacher)


def test_evaluation_restores_mode_and_checks_labels(digits: tuple) -> None:
    _, held_out = digits
    model = mlp(64, 10).train()
    logits = predict_logits(model, held_out, batch_size=100)
    assert logits.shape == (len(held_out), 10) and model.training
    assert 0.0 <= evaluate(model, held_out) <= 1.0
    unlabelled = sources.from_arrays(held_out.inputs)
    with pytest.raises(PrunekitError, match="no labels"):
        evaluate(model, unlabelled)
    with pytest.raises(PrunekitError, match="no labels"):
        train(model, unlabelled, FAST)


@pytest.mark.real
def test_small_cnn_learns_cifar10() -> None:
    train_set, held_out = sources.cifar10_test().split(1000, seed=0)
    train_set = train_set.subset(torch.arange(3000))
    model = train(small_cnn(10), train_set, TrainConfig(epochs=3))
    assert evaluate(model, held_out) > 0.3
