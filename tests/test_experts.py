"""Mixture-of-experts expert pruning and merging: the methods' defining properties on small tensors and tiny
random MoE layers, and every MoE family end to end (prunekit.api.run on a tiny random checkpoint, the output
reloaded by stock transformers in a fresh process with the pruned in-memory model's logits)."""

import itertools
import json

import pytest
import torch
from conftest import MOE_CONFIGS, make_text, tiny_model
from test_cli import assert_one_line_error, run_cli, small_run
from test_families import prune_and_reload

from prunekit.api import prune
from prunekit.engine.experts import expert_output, measure_routing, route, sample, subset_error
from prunekit.errors import PrunekitError
from prunekit.methods.experts import (
    align_channels,
    best_subset,
    cluster_by_output,
    dominant,
    merge_weights,
    reap_saliency,
    routing_frequency,
)
from prunekit.models import surgery
from prunekit.models.adapters import adapter_for

IDS = torch.randint(3, 96, (2, 16), generator=torch.Generator().manual_seed(7))
CALIBRATION = torch.randint(3, 96, (8, 32), generator=torch.Generator().manual_seed(0))
KINDS = {
    "reap": dict(method="reap", size=4),
    "frequency": dict(method="expert-frequency", sparsity=0.5),
    "search": dict(method="expert-search", size=4),
    "merge": dict(method="expert-merge", size=3),
    "random": dict(method="expert-random", size=2),
    "wanda-50%": dict(method="wanda", sparsity=0.5),  # experts-aware: inside every expert, from its routed tokens
}
EXPERT_FIELDS = ("num_local_experts", "num_experts")
KEPT = {"reap": 4, "frequency": 3, "search": 4, "merge": 3, "random": 2, "wanda-50%": 6}


# ---------------------------------------------------------------- pure functions


def test_routing_frequency_and_reap_saliency_are_exact():
    indices = torch.tensor([[0, 1], [1, 2], [1, 0]])
    assert routing_frequency(indices, 4).tolist() == [2 / 3, 1.0, 1 / 3, 0.0]
    # expert 0: two tokens with gate x norm 0.5 and 1.5 -> mean 1.0; expert 3 never routed -> 0
    saliency = reap_saliency(torch.tensor([2.0, 3.0, 0.7, 0.0], dtype=torch.float64),
                             torch.tensor([2.0, 3.0, 1.0, 0.0], dtype=torch.float64))
    assert saliency.tolist() == [1.0, 1.0, pytest.approx(0.7), 0.0]


def test_best_subset_is_the_minimum_exhaustively_and_greedy_on_separable_errors():
    costs = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0, 0.5])

    def error(kept):  # removing expert e costs costs[e], plus an interaction between 0 and 2
        removed = set(range(6)) - set(kept)
        return float(sum(costs[e] for e in removed)) + (3.0 if {0, 2} <= removed else 0.0)

    brute = min(itertools.combinations(range(6), 3), key=error)
    assert best_subset(error, 6, 3) == brute
    assert best_subset(error, 6, 3, exhaustive=1) == (0, 2, 4)  # greedy drops 5, 1, 3: the cheapest


def test_clustering_groups_experts_with_similar_outputs_and_merge_weights_follow_frequency():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.99, 0.05], [0.02, 1.0], [-1.0, 0.1]])
    assert cluster_by_output(features, 3) == [[0, 2], [1, 3], [4]]
    groups = [[0, 2], [1, 3], [4]]
    frequency = torch.tensor([0.3, 0.0, 0.1, 0.0, 0.2])
    weights = merge_weights(groups, frequency)
    assert weights[0].tolist() == pytest.approx([0.75, 0.25]) and weights[1].tolist() == [0.5, 0.5]
    assert dominant(groups, frequency) == [0, 1, 4]


# ---------------------------------------------------------------- on tiny MoE layers


def _never_route(model: torch.nn.Module, experts: list[int]) -> None:
    """Make the router of every layer unable to pick `experts` (a large negative bias through the weights)."""
    adapter = adapter_for(model)
    generator = torch.Generator().manual_seed(3)
    for layer in adapter.layers:
        _, router = adapter.moe(layer)
        with torch.no_grad():
            router.weight.copy_(torch.randn(router.weight.shape, generator=generator))  # every other expert routed
            router.weight[:, 0] = 0.0
            router.weight[experts, 0] = -1e4  # a huge negative logit on every token with a positive first feature
    first = model.get_input_embeddings().weight
    with torch.no_grad():
        first[:, 0] = first[:, 0].abs() + 0.1  # every token has a positive first feature before the norm


def test_removing_experts_the_router_never_picks_keeps_the_function_exactly():
    """Frequency and REAP give never-routed experts 0, so they go first and the logits do not change (up to the
    float summation order over fewer experts)."""
    for method in ("expert-frequency", "reap"):
        model = tiny_model("mixtral")
        _never_route(model, [1, 4])
        with torch.no_grad():
            before = model(IDS).logits
        prune(model, stages=[dict(method=method, size=4)], calibration=CALIBRATION, progress=False,
              cache_scores=False)
        with torch.no_grad():
            after = model(IDS).logits
        assert model.config.num_local_experts == 4
        adapter = adapter_for(model)
        assert all(bool((adapter.moe(layer)[1].weight[:, 0] > -1e3).all()) for layer in adapter.layers)
        assert torch.allclose(before, after, rtol=0, atol=1e-6), (method, float((before - after).abs().max()))


@torch.no_grad()
def test_expert_search_finds_the_subset_with_the_least_reconstruction_error():
    model = tiny_model("qwen3_moe")
    adapter = adapter_for(model)
    layer = adapter.layers[0]
    experts, router = adapter.moe(layer)
    x = torch.randn(256, 64, generator=torch.Generator().manual_seed(1))
    outputs = torch.stack([experts(x, torch.full((256, 1), e), torch.ones(256, 1)) for e in range(6)])
    error = subset_error(router, outputs, x, 6)
    errors = {s: error(s) for s in itertools.combinations(range(6), 4)}
    assert best_subset(error, 6, 4) == min(errors, key=errors.get)
    # the objective is the layer's own: with every expert kept it is zero, and it matches a rerouted forward
    assert error(tuple(range(6))) == 0.0
    kept = (0, 2, 3, 5)
    pruned = surgery.restricted_router(router, 6, kept)
    weights, indices = route(pruned, x)
    by_hand = experts(x, torch.tensor(kept)[indices], weights)
    full_weights, full_indices = route(router, x)
    full = experts(x, full_indices, full_weights)
    assert error(kept) == pytest.approx(float((by_hand - full).double().pow(2).mean()), rel=1e-5)


@torch.no_grad()
def test_merged_expert_is_the_frequency_weighted_average_and_keeps_the_dominant_router_row():
    model = tiny_model("olmoe")
    adapter = adapter_for(model)
    layer = adapter.layers[0]
    experts, router = adapter.moe(layer)
    gate_up, down, rows = experts.gate_up_proj.detach().clone(), experts.down_proj.detach().clone(), \
        router.weight.detach().clone()
    frequency = torch.tensor([0.1, 0.3, 0.2, 0.2, 0.1, 0.1])
    groups = [[0, 1], [2], [3, 4, 5]]
    surgery.regroup_experts(adapter, layer, groups, merge_weights(groups, frequency), dominant(groups, frequency))
    assert torch.allclose(experts.gate_up_proj[0], 0.25 * gate_up[0] + 0.75 * gate_up[1])
    assert torch.equal(experts.down_proj[1], down[2])
    assert torch.allclose(experts.down_proj[2], 0.5 * down[3] + 0.25 * down[4] + 0.25 * down[5])
    assert torch.equal(router.weight, rows[[1, 2, 3]]) and experts.num_experts == 3


def test_align_channels_undoes_a_permutation():
    reference = torch.randn(24, 12, generator=torch.Generator().manual_seed(0))
    shuffle = torch.randperm(24, generator=torch.Generator().manual_seed(1))
    member = reference[shuffle] * 0.9 + 0.01 * torch.randn(24, 12, generator=torch.Generator().manual_seed(2))
    order = align_channels(reference, member)
    assert torch.equal(shuffle[order], torch.arange(24))  # member[order] lines up with the reference
    assert torch.equal(align_channels(reference, reference), torch.arange(24))  # aligned experts keep their order


@pytest.mark.parametrize("family", list(MOE_CONFIGS))
@torch.no_grad()
def test_permuting_an_experts_channels_keeps_its_function(family):
    """Every layout (gate and up rows stacked or interleaved, transposed matrices, biases): the reordered expert
    computes the same outputs, its channels' weights are the old ones in the new order, and the others are
    untouched."""
    model = tiny_model(family)
    adapter = adapter_for(model)
    experts, group = adapter.moe(adapter.layers[0])[0], adapter.require_experts()
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(4))
    before = [expert_output(experts, x, e) for e in range(2)]
    weights = group.channel_weights(experts, 1).clone()
    order = torch.randperm(len(weights), generator=torch.Generator().manual_seed(5))
    group.permute_channels(experts, 1, order)
    assert torch.equal(group.channel_weights(experts, 1), weights[order])
    assert torch.allclose(expert_output(experts, x, 1), before[1], rtol=1e-5, atol=1e-6)
    assert torch.equal(expert_output(experts, x, 0), before[0])


@torch.no_grad()
def test_merging_a_channel_permuted_copy_gives_the_expert_back():
    """Expert 1 is expert 0 with its channels shuffled: the same function, so expert-merge groups the two, and
    after alignment their average is expert 0 again (a plain average of the unaligned weights is not)."""
    model = tiny_model("olmoe")
    adapter = adapter_for(model)
    experts, group = adapter.moe(adapter.layers[0])[0], adapter.require_experts()
    experts.gate_up_proj[1], experts.down_proj[1] = experts.gate_up_proj[0], experts.down_proj[0]
    group.permute_channels(experts, 1, torch.randperm(experts.down_proj.shape[-1],
                                                      generator=torch.Generator().manual_seed(6)))
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(7))
    original = expert_output(experts, x, 0)
    averaged = type(experts)(model.config)  # what averaging without alignment gives
    averaged.load_state_dict(experts.state_dict())
    averaged.gate_up_proj[0] = (experts.gate_up_proj[0] + experts.gate_up_proj[1]) / 2
    averaged.down_proj[0] = (experts.down_proj[0] + experts.down_proj[1]) / 2
    naive = expert_output(averaged, x, 0)
    assert not torch.allclose(naive, original, atol=1e-3)
    prune(model, stages=[dict(method="expert-merge", size=5)], calibration=CALIBRATION, progress=False,
          cache_scores=False)
    merged = adapter.moe(adapter.layers[0])[0]
    assert merged.num_experts == 5
    assert torch.allclose(expert_output(merged, x, 0), original, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_routing_statistics_match_a_direct_computation():
    model = tiny_model("granitemoe")
    adapter = adapter_for(model)
    experts, router = adapter.moe(adapter.layers[1])
    x = torch.randn(100, 64, generator=torch.Generator().manual_seed(2))
    routing = measure_routing(experts, router, x, 6)
    weights, indices = route(router, x)
    for e in range(6):
        rows, slot = torch.nonzero(indices == e, as_tuple=True)
        out = experts(x[rows], torch.full((len(rows), 1), e), torch.ones(len(rows), 1))
        expected = float((weights[rows, slot] * out.norm(dim=-1)).mean()) if len(rows) else 0.0
        assert float(routing.reap[e]) == pytest.approx(expected, rel=1e-5)
        assert float(routing.frequency[e]) == pytest.approx(len(rows) / 100)
    assert len(sample(x, 10)) == 10 and torch.equal(sample(x, 10)[0], x[0]) and torch.equal(sample(x, 10)[-1], x[-1])


@torch.no_grad()
def test_experts_aware_wanda_scores_each_expert_on_its_gated_routed_tokens():
    """MoE-Pruner's statistics: expert e's gate_up_proj mask is Wanda's on the tokens routed to e, each scaled by its
    gate weight; an expert routed too few tokens is pruned with all the layer's tokens (and the report says so)."""
    from prunekit.engine.expert_weights import MIN_ROUTED_TOKENS
    from prunekit.methods.masks import make_mask
    from prunekit.methods.patterns import SparsityPattern
    from prunekit.methods.wanda import wanda_scores

    model = tiny_model("mixtral")
    _never_route(model, [1])  # expert 1 gets no token: it falls back to all of them
    adapter = adapter_for(model)
    experts, router = adapter.moe(adapter.layers[0])
    dense_gate_up = experts.gate_up_proj.detach().clone()
    captured = []
    block = adapter.layers[0].mlp
    handle = block.register_forward_pre_hook(lambda _m, args: captured.append(args[0].reshape(-1, 64)))
    model(CALIBRATION)
    handle.remove()
    x = torch.cat(captured)
    weights, indices = route(router, x)
    result = prune(model, stages=[dict(method="wanda", sparsity=0.5)], calibration=CALIBRATION, progress=False,
                   cache_scores=False, batch_size=8)
    notes = {m.name: m.notes for m in result.matrices}
    few_tokens = set()
    for expert in range(6):
        rows, slot = torch.nonzero(indices == expert, as_tuple=True)
        gated = x[rows] * weights[rows, slot, None] if len(rows) >= MIN_ROUTED_TOKENS else x
        norms = gated.square().sum(0)
        expected = make_mask(wanda_scores(dense_gate_up[expert], norms), 0.5, SparsityPattern.parse("unstructured"))
        assert torch.equal(experts.gate_up_proj[expert] != 0, expected), expert
        few = len(rows) < MIN_ROUTED_TOKENS
        assert any("pruned with all the layer's tokens" in n for n in
                   notes[f"layers.0.mlp.experts.{expert}.gate_up_proj"]) == few
        few_tokens |= {expert} if few else set()
    assert 1 in few_tokens and len(few_tokens) < 6  # both paths were checked


def test_bad_expert_requests_are_one_line_errors():
    model = tiny_model("mixtral")  # 6 experts, top 2
    cases = {
        "fewer than the 2 the router picks": dict(method="reap", size=1),
        "give a number from 2 to 5": dict(method="reap", size=6),
        "not param_fraction": dict(method="reap", param_fraction=0.2),
    }
    for message, stage in cases.items():
        with pytest.raises(PrunekitError, match=message) as error:
            prune(model, stages=[stage], calibration=CALIBRATION, progress=False, cache_scores=False)
        assert "\n" not in str(error.value)
    with pytest.raises(PrunekitError, match="is not a mixture-of-experts model"):
        prune(tiny_model("llama"), stages=[dict(method="reap", size=2)], calibration=CALIBRATION, progress=False,
              cache_scores=False)
    with pytest.raises(PrunekitError, match="does not measure inside routed experts"):
        prune(model, stages=[dict(method="gblm", sparsity=0.5)], calibration=CALIBRATION, progress=False,
              cache_scores=False)
    with pytest.raises(PrunekitError, match="has no dense MLP"):
        prune(model, stages=[dict(method="wanda-sp", part="mlp", sparsity=0.25)], calibration=CALIBRATION,
              progress=False, cache_scores=False)
    assert model.config.num_local_experts == 6


def test_cli_prunes_experts_and_prints_the_table(tmp_path, tokenizer, capsys, monkeypatch):
    source = tmp_path / "tiny-mixtral"
    tiny_model("mixtral").save_pretrained(source)
    tokenizer.save_pretrained(source)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_text(3000, seed=1))
    code, out, err = run_cli([*small_run(source, corpus, tmp_path / "out"), "--method", "reap", "--experts-keep", "4"],
                             capsys, monkeypatch)
    assert code == 0, err
    assert "6 -> 4 experts per layer" in out
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_local_experts"] == 4


def test_cli_refuses_too_few_experts_in_one_line(tmp_path, tokenizer, capsys, monkeypatch):
    source = tmp_path / "tiny-mixtral"
    tiny_model("mixtral").save_pretrained(source)
    tokenizer.save_pretrained(source)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_text(3000, seed=1))
    out = tmp_path / "out"
    for extra, message in ((["--experts-keep", "1"], "keep at least 2"),
                           (["--experts-keep", "3", "--size", "3"], "both give the stage's size"),
                           (["--experts-keep", "2.5"], "--experts-keep': Input should be a valid integer")):
        code, _, err = run_cli([*small_run(source, corpus, out), "--method", "reap", *extra], capsys, monkeypatch)
        assert code == 2 and message in err, err
        assert_one_line_error(err)
        assert not out.exists()


# ---------------------------------------------------------------- every family, saved and reloaded

@pytest.fixture(scope="module")
def moe_outputs(tmp_path_factory, tokenizer):
    """family -> {kind: ("ok", reloaded facts, report, dense config)}, one checking subprocess per family."""
    root = tmp_path_factory.mktemp("moe")
    done: dict[str, dict] = {}

    def outputs(family: str) -> dict:
        if family not in done:
            done[family] = prune_and_reload(root, tokenizer, family, KINDS, EXPERT_FIELDS)
        return done[family]

    return outputs


@pytest.mark.parametrize(("family", "kind"), [(f, k) for f in MOE_CONFIGS for k in KINDS],
                         ids=[f"{f}-{k}" for f in MOE_CONFIGS for k in KINDS])
def test_moe_family_by_expert_method(family, kind, moe_outputs):
    status, facts, report, _dense = moe_outputs(family)[kind]
    assert status == "ok", facts
    assert facts["equal"], f"reloaded logits differ from the in-memory model's by {facts['max_diff']}"
    experts = facts["config"].get("num_local_experts") or facts["config"].get("num_experts")
    assert experts == KEPT[kind] and facts["generated"] == 7
    if kind == "wanda-50%":
        assert facts["parameters"] == report["parameters"]
        assert report["decoder_linear_sparsity"] == pytest.approx(0.5, abs=1e-3)
        assert any(".mlp.experts.0.down_proj" in m["name"] or ".block_sparse_moe.experts.0.down_proj" in m["name"]
                   for m in report["matrices"])
    else:
        assert facts["parameters"] == report["parameters"] < report["structure"]["dense_parameters"]
