"""Per-example scores against hand-computed values, and the training-dynamics recorder."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from prunekit.data import scores as S
from prunekit.data.dynamics import TrainingDynamics, default_epochs, per_example_grad_norms
from prunekit.errors import PrunekitError


def one_line_error(fn, *args, match: str, **kwargs) -> str:
    with pytest.raises(PrunekitError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def log(rows: list[list[float]]) -> torch.Tensor:
    """Logits whose softmax is exactly `rows` (each row sums to 1)."""
    return torch.tensor(rows, dtype=torch.float64).clamp_min(1e-30).log()


# ---------------------------------------------------------------- scores


def test_el2n_hand_computed() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    got = S.el2n(probs, torch.tensor([0, 2]))
    # [0.7-1, 0.2, 0.1] and [0.1, 0.6, 0.3-1]
    assert torch.allclose(got, torch.tensor([math.sqrt(0.09 + 0.04 + 0.01), math.sqrt(0.01 + 0.36 + 0.49)]).double())


def test_el2n_averages_the_norm_over_runs() -> None:
    probs = torch.tensor([[[0.7, 0.2, 0.1]], [[1.0, 0.0, 0.0]]])  # run 2 is exactly right: norm 0
    assert torch.allclose(S.el2n(probs, torch.tensor([0])), torch.tensor([math.sqrt(0.14) / 2]).double())


def test_grand_is_the_mean_norm_over_runs() -> None:
    assert torch.equal(S.grand(torch.tensor([[1.0, 2.0], [3.0, 4.0]])), torch.tensor([2.0, 3.0]).double())
    assert torch.equal(S.grand(torch.tensor([0.5, 1.5])), torch.tensor([0.5, 1.5]).double())
    one_line_error(S.grand, torch.tensor([-1.0]), match="negative")


def test_forgetting_events_hand_computed() -> None:
    correct = torch.tensor(
        [  # columns: forgotten twice, always right, never learned, learned then forgotten once
            [True, True, False, False],
            [False, True, False, True],
            [True, True, False, False],
            [False, True, False, False],
        ]
    )
    assert S.forgetting_events(correct).tolist() == [2.0, 0.0, 4.0, 1.0]


def test_never_learned_outranks_the_most_forgetful_possible() -> None:
    epochs = 5
    flip = torch.tensor([[t % 2 == 0] for t in range(epochs)])  # T F T F T: floor(5/2) = 2 events, the maximum
    never = torch.zeros(epochs, 1, dtype=torch.bool)
    assert S.forgetting_events(torch.cat([flip, never], dim=1)).tolist() == [2.0, 5.0]


def test_forgetting_events_skip_missing_epochs() -> None:
    correct = torch.tensor([[True, True], [False, False], [False, True]])
    present = torch.tensor([[True, True], [True, False], [True, True]])
    # example 0: T F F = 1 event; example 1: T (gap) T = 0 events (the unrecorded F is not counted)
    assert S.forgetting_events(correct, present).tolist() == [1.0, 0.0]


def test_aum_uses_logits_and_is_the_negative_mean_margin() -> None:
    logits = torch.tensor(
        [
            [[3.0, 1.0, 2.0], [0.0, 0.0, 5.0]],  # epoch 0: margins 3-2 = 1 and 5-0 = 5
            [[1.0, 4.0, 0.0], [2.0, 1.0, 3.0]],  # epoch 1: margins 1-4 = -3 and 3-2 = 1
        ]
    )
    got = S.aum(logits, torch.tensor([0, 2]))
    assert torch.equal(got, torch.tensor([1.0, -3.0]).double())  # -(1-3)/2, -(5+1)/2
    assert torch.equal(S.aum(2 * logits, torch.tensor([0, 2])), 2 * got)  # logits, not probabilities


def test_entropy_hand_computed() -> None:
    probs = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.9, 0.1]])
    expected = [math.log(2), 0.0, -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))]
    assert torch.allclose(S.entropy(probs), torch.tensor(expected).double())
    runs = torch.stack([probs, torch.tensor([[1.0, 0.0]] * 3)])
    assert torch.allclose(S.entropy(runs), torch.tensor(expected).double() / 2)


def test_prototype_distance_one_cluster_hand_computed() -> None:
    emb = torch.tensor([[2.0, 0.0], [0.0, 5.0], [-3.0, 0.0]])
    # normalised: (1,0), (0,1), (-1,0); centroid (0, 1/3)
    cosine = S.prototype_distance(emb, clusters=1, seed=0)
    assert torch.allclose(cosine, torch.tensor([1.0, 0.0, 1.0]).double(), atol=1e-9)
    euclid = S.prototype_distance(emb, clusters=1, seed=0, metric="euclidean")
    assert torch.allclose(euclid, torch.tensor([math.sqrt(10 / 9), 2 / 3, math.sqrt(10 / 9)]).double(), atol=1e-9)
    raw = S.prototype_distance(emb, clusters=1, seed=0, normalize=False, metric="euclidean")
    # centroid (-1/3, 5/3)
    assert torch.allclose(raw, torch.tensor([74, 101, 89]).double().sqrt() / 3, atol=1e-9)


def test_prototype_distance_two_clusters() -> None:
    emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6], [-1.0, 0.0]])
    # clusters {0, 1, 2} (centroid along +x) and {3}: cosine distances 0, 1-0.8, 1-0.8, 0
    got = S.prototype_distance(emb, clusters=2, seed=0)
    assert torch.allclose(got, torch.tensor([0.0, 0.2, 0.2, 0.0]).double(), atol=1e-9)


def test_random_scores_are_seeded() -> None:
    a, b, c = S.random_scores(50, seed=1), S.random_scores(50, seed=1), S.random_scores(50, seed=2)
    assert a.shape == (50,) and torch.equal(a, b) and not torch.equal(a, c)
    assert bool(((a >= 0) & (a < 1)).all())


def test_validation_errors_are_one_line() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1]])
    one_line_error(S.el2n, probs, None, match="needs labels")
    one_line_error(S.aum, probs, None, match="needs labels")
    one_line_error(S.el2n, probs, torch.tensor([3]), match="label 3 is outside the 3 classes")
    one_line_error(S.el2n, probs, torch.tensor([0, 1]), match="pass one per example")
    one_line_error(S.el2n, torch.tensor([[2.0, -1.0, 0.5]]), torch.tensor([0]), match="not logits")
    one_line_error(S.el2n, torch.ones(3), torch.tensor([0]), match="expected")
    one_line_error(S.forgetting_events, torch.ones(2, 2), match="bool")
    one_line_error(S.check_embeddings, torch.ones(3, 4), 3, expected_dim=8, match="dimension 4 but 8")
    one_line_error(S.check_embeddings, torch.ones(2, 4), 3, match="2 embeddings for 3 examples")
    one_line_error(S.check_embeddings, torch.ones(3), 3, match="expected")
    one_line_error(S.prototype_distance, torch.eye(3), clusters=4, seed=0, match="4 clusters for 3 examples")
    one_line_error(S.prototype_distance, torch.zeros(3, 2), clusters=1, seed=0, match="all zeros")
    one_line_error(S.prototype_distance, torch.eye(3), clusters=1, seed=0, metric="l1", match="unknown")
    one_line_error(S.aum, torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]), match="NaN")


# ---------------------------------------------------------------- training dynamics


def hand_recorder() -> TrainingDynamics:
    """3 examples, 4 epochs; example 'c' is never classified right, 'a' is forgotten twice, 'b' never."""
    rec = TrainingDynamics()
    right, wrong = [2.0, 0.0], [0.0, 2.0]  # logits for label 0
    pattern = {"a": [right, wrong, right, wrong], "b": [right] * 4, "c": [wrong] * 4}
    for epoch in range(4):
        order = ["c", "a", "b"] if epoch % 2 else ["b", "a", "c"]  # shuffled batches
        logits = torch.tensor([pattern[i][epoch] for i in order])
        rec.record(order, logits, torch.zeros(3, dtype=torch.long), epoch=epoch)
    return rec


def test_ids_are_kept_in_first_seen_order() -> None:
    rec = hand_recorder()
    assert rec.ids == ["b", "a", "c"] and rec.epochs == [0, 1, 2, 3] and rec.runs == [0] and rec.num_classes == 2


def test_recorded_forgetting_and_aum() -> None:
    ids, forgetting = hand_recorder().scores("forgetting")
    assert ids == ["b", "a", "c"] and forgetting.tolist() == [0.0, 2.0, 4.0]
    _, aum = hand_recorder().scores("aum")
    assert aum.tolist() == [-2.0, 0.0, 2.0]  # margins: b +2 always, a +2 -2 +2 -2, c -2 always


def test_recorded_forgetting_averages_runs() -> None:
    rec = TrainingDynamics()
    right, wrong = [2.0, 0.0], [0.0, 2.0]
    for epoch, (run0, run1) in enumerate([(right, wrong), (wrong, wrong), (right, wrong)]):
        rec.record([0], torch.tensor([run0]), torch.tensor([0]), epoch=epoch, run=0)  # T F T: 1 event
        rec.record([0], torch.tensor([run1]), torch.tensor([0]), epoch=epoch, run=1)  # never learned: 3
    assert rec.scores("forgetting")[1].tolist() == [2.0]


def test_recorded_el2n_uses_one_early_epoch_and_averages_runs() -> None:
    rec = TrainingDynamics()
    rec.record([10, 11], log([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]]), torch.tensor([0, 2]), epoch=0, run=0)
    rec.record([10, 11], log([[1.0, 0.0, 0.0], [0.1, 0.6, 0.3]]), torch.tensor([0, 2]), epoch=0, run=1)
    for epoch in (1, 2):  # later epochs must not enter the default EL2N window for E = 3
        for run in (0, 1):
            rec.record([11, 10], log([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]), torch.tensor([2, 0]), epoch=epoch, run=run)
    ids, el2n = rec.scores("el2n")
    assert ids == [10, 11]
    assert torch.allclose(el2n, torch.tensor([math.sqrt(0.14) / 2, math.sqrt(0.86)]).double())
    _, late = rec.scores("el2n", epochs=slice(1, 3))
    assert torch.allclose(late, torch.zeros(2).double(), atol=1e-6)


def test_recorded_entropy_reads_the_last_epoch_by_default() -> None:
    rec = TrainingDynamics()
    rec.record([0], log([[0.5, 0.5]]), torch.tensor([0]), epoch=0)
    rec.record([0], log([[0.9, 0.1]]), torch.tensor([0]), epoch=1)
    _, ent = rec.scores("entropy")
    assert torch.allclose(ent, torch.tensor([-(0.9 * math.log(0.9) + 0.1 * math.log(0.1))]).double())


def test_default_windows() -> None:
    assert default_epochs("el2n", 200) == slice(19, 20)
    assert default_epochs("el2n", 10) == slice(0, 1)
    assert default_epochs("el2n", 15) == slice(1, 2)
    assert default_epochs("entropy", 7) == slice(6, 7)
    assert default_epochs("aum", 7) == slice(0, 7) and default_epochs("forgetting", 7) == slice(0, 7)


def test_record_errors() -> None:
    rec = TrainingDynamics()
    rec.record(torch.tensor([0, 1]), torch.zeros(2, 3), torch.tensor([0, 1]), epoch=0)
    one_line_error(rec.record, [1], torch.zeros(1, 3), torch.tensor([1]), epoch=0, match="1 was already recorded")
    one_line_error(rec.record, [2, 2], torch.zeros(2, 3), torch.tensor([1, 1]), epoch=1, match="appears twice")
    one_line_error(rec.record, [1], torch.zeros(1, 3), torch.tensor([2]), epoch=1, match="label 2 but was recorded")
    one_line_error(rec.record, [5], torch.zeros(1, 4), torch.tensor([0]), epoch=1, match="4 classes but 3")
    one_line_error(rec.record, ["x"], torch.zeros(1, 3), torch.tensor([0]), epoch=1, match="mix ints and strings")
    one_line_error(rec.record, [5], torch.zeros(1, 3), torch.tensor([3]), epoch=1, match="outside")
    one_line_error(rec.record, [5], torch.zeros(1, 3), torch.tensor([0]), epoch=-1, match="non-negative")
    one_line_error(rec.scores, "grand", match="unknown training-dynamics score")
    one_line_error(rec.scores, "aum", epochs=slice(5, 9), match="selects none")
    one_line_error(TrainingDynamics().scores, "aum", match="nothing was recorded")
    # the failed records stored nothing
    assert rec.ids == [0, 1] and rec.epochs == [0]
    rec.record([1], torch.zeros(1, 3), torch.tensor([1]), epoch=0, run=1)  # another run may repeat it


def test_missing_records_error_or_skip() -> None:
    rec = TrainingDynamics()
    rec.record(["a", "b"], torch.tensor([[2.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 0]), epoch=0)
    rec.record(["a"], torch.tensor([[0.0, 2.0]]), torch.tensor([0]), epoch=1)  # 'b' dropped (drop_last)
    rec.record(["a", "b"], torch.tensor([[0.0, 2.0], [0.0, 4.0]]), torch.tensor([0, 0]), epoch=2)
    one_line_error(rec.scores, "aum", match="example 'b' has no record for epoch 1")
    _, aum = rec.scores("aum", missing="skip")
    assert aum.tolist() == [-(2 - 2 - 2) / 3, -(2 - 4) / 2]
    _, forgetting = rec.scores("forgetting", missing="skip")
    assert forgetting.tolist() == [1.0, 1.0]
    one_line_error(rec.scores, "aum", epochs=slice(1, 2), missing="skip", match="'b' has no record in epochs 1..1")


def test_save_load_round_trip(tmp_path) -> None:
    rec = hand_recorder()
    rec.record(["a", "b", "c"], torch.tensor([[0.3, -0.1], [1.0, 0.5], [0.0, 0.2]]), torch.zeros(3).long(), 0, run=3)
    path = tmp_path / "dyn.parquet"
    rec.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["dyn.parquet"]
    back = TrainingDynamics.load(path)
    assert back.ids == rec.ids and back.runs == [0, 3] and torch.equal(back.labels, rec.labels)
    for method in ("el2n", "forgetting", "aum", "entropy"):
        assert torch.equal(back.scores(method, missing="skip")[1], rec.scores(method, missing="skip")[1])
    one_line_error(rec.save, path, match="already exists")
    rec.save(path, overwrite=True)
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1]}), other)
    one_line_error(TrainingDynamics.load, other, match="not a prunekit training-dynamics file")
    one_line_error(TrainingDynamics.load, tmp_path / "nope.parquet", match="does not exist")


def test_int_ids_round_trip(tmp_path) -> None:
    rec = TrainingDynamics()
    rec.record([7, 3], torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), torch.tensor([2, 1]), epoch=4)
    rec.save(tmp_path / "d.parquet")
    back = TrainingDynamics.load(tmp_path / "d.parquet")
    assert back.ids == [7, 3] and back.epochs == [4] and back.labels.tolist() == [2, 1]
    assert torch.equal(back.scores("aum")[1], rec.scores("aum")[1])


# ---------------------------------------------------------------- GraNd gradients


def test_per_example_grad_norms_match_single_example_backward() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    model[0].bias.requires_grad_(False)  # frozen parameters are not part of the norm
    x, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 2, 1, 0])
    expected = []
    for i in range(6):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        expected.append(torch.sqrt(sum(g.double().square().sum() for g in grads)))
    with torch.no_grad():  # callers often score under no_grad
        got = per_example_grad_norms(model, x, y)
    assert torch.allclose(got, torch.stack(expected), rtol=1e-5)
    assert torch.allclose(S.grand(torch.stack([got, got])), got)


def test_per_example_grad_norms_refuses_train_mode_batch_norm() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    one_line_error(per_example_grad_norms, model, torch.randn(3, 4), torch.tensor([0, 1, 0]), match="model.eval")
    model.eval()
    assert per_example_grad_norms(model, torch.randn(3, 4), torch.tensor([0, 1, 0])).shape == (3,)
