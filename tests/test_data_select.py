"""Selection strategies, class quotas, CCS strata, and writing a selection."""

from __future__ import annotations

import json
import warnings

import pyarrow.parquet as pq
import pytest
import torch

from prunekit.data.select import (
    SelectionNote,
    ccs_strata,
    check_ids,
    class_quotas,
    keep_count,
    largest_remainder,
    select,
    spread_budget,
)
from prunekit.data.selection_io import write_selection
from prunekit.errors import PrunekitError


def one_line_error(fn, *args, match: str, **kwargs) -> None:
    with pytest.raises(PrunekitError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)


SCORES = torch.tensor([0.3, 0.1, 0.3, 0.9, 0.5, 0.1])  # ties at 0.1 and 0.3


def test_keep_count() -> None:
    assert keep_count(10, 0.25) == 3  # 2.5 rounds up
    assert keep_count(10, 0.24) == 2
    assert keep_count(10, 0.01) == 1  # never zero
    assert keep_count(10, 1) == 10
    for bad in (0, -0.1, 1.5, float("nan"), True):
        one_line_error(keep_count, 10, bad, match="not a fraction in")
    one_line_error(keep_count, 0, 0.5, match="no examples")


def test_easiest_hardest_middle_with_ties() -> None:
    # ascending with ties to the lower index: 1, 5, 0, 2, 4, 3
    assert select(SCORES, 0.5, "easiest").tolist() == [0, 1, 5]
    assert select(SCORES, 0.5, "hardest").tolist() == [0, 3, 4]  # 3, 4, then 0 before 2
    assert select(SCORES, 0.5, "middle").tolist() == [0, 2, 5]  # drops 1 easiest (1) and 2 hardest (3, 4)
    assert select(SCORES, 1.0, "middle").tolist() == list(range(6))
    assert select(SCORES.numpy(), 1 / 6, "hardest").dtype == torch.int64


def test_random_is_seeded_and_exact() -> None:
    scores = torch.zeros(100)
    a, b, c = (select(scores, 0.3, "random", seed=s) for s in (1, 1, 2))
    assert len(a) == 30 and len(set(a.tolist())) == 30 and a.tolist() == sorted(a.tolist())
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_select_errors() -> None:
    one_line_error(select, SCORES, 0.0, "easiest", match="not a fraction")
    one_line_error(select, SCORES, 0.5, "best", match="unknown selection strategy")
    one_line_error(select, SCORES, 0.5, "ccs", ccs_beta=1.0, match="ccs_beta")
    one_line_error(select, SCORES, 0.5, "ccs", ccs_bins=0, match="ccs_bins")
    one_line_error(select, torch.tensor([0.1, float("nan")]), 0.5, "easiest", match="NaN")
    one_line_error(select, SCORES, 0.5, "easiest", class_balanced=True, match="needs labels")
    one_line_error(select, SCORES, 0.5, "easiest", labels=torch.tensor([0, 1]), match="one label per example")
    one_line_error(check_ids, ["a", "b", "a"], match="'a' appears more than once")
    check_ids([0, 1, 2])


LABELS = torch.tensor([0] * 6 + [1] * 3 + [2] * 1)


def test_proportional_quotas_largest_remainder() -> None:
    # K = 5: exact 3, 1.5, 0.5 -> floors 3, 1, 0; one unit left, tie of .5 goes to the lower class
    assert class_quotas(LABELS, 5) == {0: 3, 1: 2, 2: 0}
    # K = 9: exact 5.4, 2.7, 0.9 -> floors 5, 2, 0; two units to the largest remainders .9 and .7
    assert class_quotas(LABELS, 9) == {0: 5, 1: 3, 2: 1}
    assert largest_remainder([1, 1, 1], 2).tolist() == [1, 1, 0]


def test_equal_quotas_cap_small_classes() -> None:
    # K = 5 over 3 classes: class 2 takes min(1, 5//3) = 1, class 1 min(3, 4//2) = 2, class 0 the 2 left
    assert class_quotas(LABELS, 5, quota="equal") == {0: 2, 1: 2, 2: 1}
    assert class_quotas(LABELS, 9, quota="equal") == {0: 5, 1: 3, 2: 1}
    one_line_error(class_quotas, LABELS, 5, quota="sqrt", match="unknown quota")


def test_class_balanced_selection_keeps_hardest_per_class() -> None:
    scores = torch.tensor([0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.25, 0.6, 0.15, 0.0])
    kept = select(scores, 0.5, "hardest", labels=LABELS, class_balanced=True)
    assert kept.tolist() == [1, 3, 5, 6, 7]  # class 0: 0.9, 0.8, 0.7; class 1: 0.25, 0.6; class 2: none
    assert select(scores, 0.5, "hardest").tolist() == [1, 3, 4, 5, 7]  # without balance: globally hardest
    equal = select(scores, 0.5, "hardest", labels=LABELS, class_balanced=True, quota="equal")
    assert equal.tolist() == [1, 3, 6, 7, 9]


def test_class_errors() -> None:
    one_line_error(select, torch.zeros(3), 0.5, "easiest", labels=torch.tensor([0, 1, 3]), class_balanced=True,
                   num_classes=4, match="class 2 has no examples")
    one_line_error(select, torch.zeros(3), 0.5, "easiest", labels=torch.tensor([0, 1, 5]), num_classes=4,
                   match="label 5 is outside")
    one_line_error(select, torch.zeros(2), 0.5, "easiest", labels=torch.tensor([0.0, 1.0]), match="dtype")


def test_spread_budget_follows_algorithm_1() -> None:
    # sizes 10, 6, 2, 0 with budget 9: 2 -> min(2, 9//3 = 3) = 2; 6 -> min(6, 7//2 = 3) = 3; 10 -> 4
    assert spread_budget([10, 6, 2, 0], 9).tolist() == [4, 3, 2, 0]
    assert spread_budget([5, 5, 5], 7).tolist() == [2, 2, 3]  # the floor's remainder goes to the last visited
    for sizes, budget in (([3, 1, 4, 1, 5], 13), ([9, 2, 6], 1), ([1, 1], 2)):
        assert int(spread_budget(sizes, budget).sum()) == budget


def test_ccs_strata_equal_width() -> None:
    assert ccs_strata(torch.tensor([0.0, 0.4, 1.1, 2.9, 3.0]).numpy(), 3).tolist() == [0, 0, 1, 2, 2]
    assert ccs_strata(torch.tensor([2.0, 2.0]).numpy(), 5).tolist() == [0, 0]


def ccs_case() -> tuple[torch.Tensor, dict[str, list[int]]]:
    """20 scores: 2 hardest to cut (beta 0.1), then strata over [0, 3] of sizes 10, 6, 2 (bins of width 1)."""
    values = [0.05 + 0.09 * i for i in range(10)] + [1.1 + 0.15 * i for i in range(6)] + [2.5, 3.0] + [9.0, 10.0]
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(3))
    scores = torch.empty(20)
    scores[perm] = torch.tensor(values)
    groups = {"low": perm[:10].tolist(), "mid": perm[10:16].tolist(), "high": perm[16:18].tolist(),
              "cut": perm[18:].tolist()}
    return scores, groups


def test_ccs_per_stratum_counts() -> None:
    scores, groups = ccs_case()
    kept = set(select(scores, 0.45, "ccs", ccs_beta=0.1, ccs_bins=3, seed=0).tolist())  # K = 9
    counts = {name: len(kept & set(members)) for name, members in groups.items()}
    assert counts == {"low": 4, "mid": 3, "high": 2, "cut": 0}
    other = set(select(scores, 0.45, "ccs", ccs_beta=0.1, ccs_bins=3, seed=1).tolist())
    assert other != kept and len(other) == 9
    assert set(select(scores, 0.45, "ccs", ccs_beta=0.1, ccs_bins=3, seed=0).tolist()) == kept


def test_ccs_reduces_the_cut_when_the_budget_needs_it() -> None:
    scores = torch.arange(10.0)
    with pytest.warns(SelectionNote, match="dropping only the hardest 1"):
        kept = select(scores, 0.9, "ccs", ccs_beta=0.3)  # K = 9 > 10 - 3
    assert kept.tolist() == list(range(9))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(select(scores, 0.7, "ccs", ccs_beta=0.3)) == 7  # fits exactly: no note


def test_class_balanced_ccs_cuts_within_each_class() -> None:
    scores = torch.tensor([0.0, 1.0, 2.0, 3.0, 10.0, 0.0, 1.0, 2.0, 3.0, 10.0])
    labels = torch.tensor([0] * 5 + [1] * 5)
    kept = select(scores, 0.6, "ccs", labels=labels, class_balanced=True, ccs_beta=0.2, ccs_bins=4)
    assert 4 not in kept.tolist() and 9 not in kept.tolist() and len(kept) == 6
    assert sum(1 for i in kept.tolist() if i < 5) == 3


# ---------------------------------------------------------------- writing


def test_write_selection(tmp_path) -> None:
    out = tmp_path / "sel"
    ids = ["e", "d", "c", "b"]
    scores = torch.tensor([0.4, 0.1, 0.3, 0.2], dtype=torch.float64)
    labels = torch.tensor([1, 0, 1, 1])
    kept = select(scores, 0.5, "hardest")
    write_selection(out, ids, scores, kept, labels, {"strategy": "hardest", "score": "el2n", "seed": 0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sel"]
    table = pq.read_table(out / "scores.parquet").to_pydict()
    assert table == {"id": ids, "score": [0.4, 0.1, 0.3, 0.2], "label": [1, 0, 1, 1],
                     "kept": [True, False, True, False]}
    assert pq.read_table(out / "kept.parquet").to_pydict() == {"id": ["e", "c"], "score": [0.4, 0.3], "label": [1, 1]}
    summary = json.loads((out / "summary.json").read_text())
    assert summary == {"strategy": "hardest", "score": "el2n", "seed": 0, "examples": 4, "kept": 2,
                       "keep_fraction": 0.5, "per_class": {"0": {"kept": 0, "total": 1}, "1": {"kept": 2, "total": 3}}}


def test_write_selection_without_labels_and_int_ids(tmp_path) -> None:
    out = tmp_path / "sel"
    write_selection(out, [5, 6, 7], torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2]), None, {})
    assert pq.read_table(out / "scores.parquet").to_pydict()["label"] == [None, None, None]
    assert pq.read_table(out / "kept.parquet").to_pydict()["id"] == [7]
    assert "per_class" not in json.loads((out / "summary.json").read_text())


def test_write_selection_writes_nothing_on_bad_input(tmp_path) -> None:
    out = tmp_path / "sel"
    scores = torch.tensor([1.0, 2.0])
    one_line_error(write_selection, out, ["a", "a"], scores, torch.tensor([0]), None, {}, match="more than once")
    one_line_error(write_selection, out, ["a", "b"], scores, torch.tensor([2]), None, {}, match=r"\[0, 2\)")
    one_line_error(write_selection, out, ["a", "b"], scores, torch.tensor([0, 0]), None, {}, match="repeat")
    one_line_error(write_selection, out, ["a", 1], scores, torch.tensor([0]), None, {}, match="all ints or all")
    one_line_error(write_selection, out, ["a"], scores, torch.tensor([0]), None, {}, match="one score per example")
    one_line_error(write_selection, out, ["a", "b"], scores, torch.tensor([0]), torch.tensor([0]), {}, match="labels")
    one_line_error(write_selection, out, ["a", "b"], scores, torch.tensor([0]), None, {"x": {1, 2}}, match="JSON")
    assert list(tmp_path.iterdir()) == []


def test_write_selection_overwrite(tmp_path) -> None:
    out = tmp_path / "sel"
    args = (["a", "b"], torch.tensor([1.0, 2.0]))
    write_selection(out, *args, torch.tensor([0]), None, {"run": 1})
    one_line_error(write_selection, out, *args, torch.tensor([1]), None, {"run": 2}, match="already exists")
    assert json.loads((out / "summary.json").read_text())["run"] == 1
    write_selection(out, *args, torch.tensor([1]), None, {"run": 2}, overwrite=True)
    assert json.loads((out / "summary.json").read_text())["run"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sel"]
