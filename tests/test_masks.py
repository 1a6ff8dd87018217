import pytest
import torch

from prunekit.errors import PrunekitError
from prunekit.methods import get_method
from prunekit.methods.allocation import global_threshold_sparsities, outlier_ratio, owl_sparsities
from prunekit.methods.gradient import gblm_scores, gradient_scores
from prunekit.methods.magnitude import magnitude_scores
from prunekit.methods.masks import make_mask, matrix_mask, nm_mask, row_mask
from prunekit.methods.patterns import SparsityPattern
from prunekit.methods.wanda import wanda_scores


def test_row_mask_removes_exactly_per_row_even_with_ties():
    scores = torch.tensor([[3.0, 1.0, 1.0, 1.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    keep = row_mask(scores, 0.5)
    assert keep.tolist() == [[True, False, False, True, True, False], [False, False, False, True, True, True]]


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.7, 0.9])
def test_row_mask_matches_a_sort(sparsity):
    scores = torch.randn(37, 96)
    keep = row_mask(scores, sparsity)
    k = round(sparsity * 96)
    expected = torch.ones_like(keep)
    expected.scatter_(-1, scores.argsort(dim=-1)[:, :k], False)
    assert torch.equal(keep, expected)


def test_matrix_mask_compares_across_rows():
    scores = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert matrix_mask(scores, 0.5).tolist() == [[False, False], [True, True]]


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_mask_keeps_n_in_every_group(n, m):
    scores = torch.randn(16, 64)
    keep = nm_mask(scores, n, m)
    assert (keep.view(16, -1, m).sum(-1) == n).all()
    # the kept ones are the largest in their group
    groups = scores.view(16, -1, m)
    kept_min = torch.where(keep.view(16, -1, m), groups, torch.inf).min(-1).values
    dropped_max = torch.where(~keep.view(16, -1, m), groups, -torch.inf).max(-1).values
    assert (kept_min >= dropped_max).all()


def test_make_mask_dispatches_on_pattern():
    scores = torch.randn(8, 16)
    assert torch.equal(make_mask(scores, 0.5, SparsityPattern(2, 4)), nm_mask(scores, 2, 4))
    assert torch.equal(make_mask(scores, 0.5, SparsityPattern()), row_mask(scores, 0.5))


def test_wanda_score_hand_computed():
    weight = torch.tensor([[1.0, -2.0], [-3.0, 0.5]])
    # inputs x1 = (1, 2), x2 = (2, 2): per-feature sums of squares 5 and 8
    sq_sum = torch.tensor([1.0 + 4.0, 4.0 + 4.0])
    expected = torch.tensor([[1 * 5**0.5, 2 * 8**0.5], [3 * 5**0.5, 0.5 * 8**0.5]])
    assert torch.allclose(wanda_scores(weight, sq_sum), expected)
    assert torch.equal(magnitude_scores(weight), weight.abs())


def test_global_allocation_hits_the_target_and_favours_large_weights():
    scores = {"small": torch.rand(100) * 0.1, "large": torch.rand(300) + 1.0}
    plan = global_threshold_sparsities(scores, 0.25)
    assert plan["small"] == 1.0 and plan["large"] == 0.0
    scores = {"a": torch.rand(1000), "b": torch.rand(3000) * 2}
    plan = global_threshold_sparsities(scores, 0.5)
    removed = plan["a"] * 1000 + plan["b"] * 3000
    assert abs(removed - 2000) <= 1
    assert plan["a"] > plan["b"]


@pytest.mark.parametrize("text", ["4:4", "5:4", "0:4", "2-4", "a:b", "2:4:8"])
def test_bad_patterns_are_rejected(text):
    with pytest.raises(PrunekitError):
        SparsityPattern.parse(text)


def test_pattern_parsing():
    assert SparsityPattern.parse("2:4") == SparsityPattern(2, 4)
    assert SparsityPattern.parse(" 4:8 ").sparsity == 0.5
    assert not SparsityPattern.parse("unstructured").is_nm


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(PrunekitError, match="magnitude, wanda"):
        get_method("obs")


def test_global_allocation_floor_prevents_layer_collapse():
    scores = {"tiny": torch.rand(100) * 0.01, "big": torch.rand(100) + 1.0}
    plan = global_threshold_sparsities(scores, 0.5, min_density=0.2)
    assert plan["tiny"] == 0.8  # would be 1.0 without the floor
    assert abs(plan["tiny"] * 100 + plan["big"] * 100 - 100) <= 1


def test_owl_sparsities_hand_computed():
    sparsities = owl_sparsities([1.0, 2.0, 3.0], target=0.5, lam=0.1)
    assert sparsities == pytest.approx([0.6, 0.5, 0.4])  # most outliers -> least pruned
    assert owl_sparsities([2.0, 2.0], 0.7, 0.08) == [0.7, 0.7]
    skewed = owl_sparsities([0.0, 0.0, 0.0, 1.0], 0.6, 0.08)
    assert sum(skewed) / 4 == pytest.approx(0.6) and min(skewed) == pytest.approx(0.6 - 0.12)


def test_outlier_ratio_hand_computed():
    # mean of all five scores is 2.8; with M = 2 only the 10 exceeds 5.6
    assert outlier_ratio([torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0, 10.0])], m=2) == pytest.approx(0.2)


def test_gradient_and_gblm_scores_hand_computed():
    weight = torch.tensor([[1.0, -2.0]])
    grad_norm = torch.tensor([[0.5, 0.25]])
    sq_sum = torch.tensor([4.0, 9.0])
    assert torch.allclose(gradient_scores(weight, grad_norm), torch.tensor([[0.5, 0.5]]))
    # 100 * |W| * G + |W| * ||X||
    assert torch.allclose(gblm_scores(weight, grad_norm, sq_sum), torch.tensor([[50.0 + 2.0, 50.0 + 6.0]]))
