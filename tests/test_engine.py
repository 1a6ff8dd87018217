import copy

import pytest
import torch
from conftest import CONFIGS, VOCAB, tiny_model
from transformers import BloomConfig, BloomForCausalLM

from prunekit.engine.capture import capture_layer_inputs
from prunekit.engine.layerwise import PruneStage, prune_layerwise
from prunekit.engine.walker import forward_layer
from prunekit.errors import PrunekitError
from prunekit.methods.patterns import SparsityPattern
from prunekit.models.adapters import SUPPORTED_MODEL_TYPES, adapter_for
from prunekit.models.groups import weight_matrix

CPU = torch.device("cpu")


def calibration(n=6, length=32, seed=0):
    return torch.randint(3, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", list(CONFIGS))
def test_layer_by_layer_replay_reproduces_the_model(family):
    """Running the captured calls layer after layer gives exactly the model's own hidden states."""
    model = tiny_model(family)
    adapter = adapter_for(model)
    ids = calibration()
    captured = capture_layer_inputs(adapter, list(ids.split(4)), CPU)
    with torch.no_grad():
        expected = model(input_ids=ids, output_hidden_states=True).hidden_states
        hidden = captured.hidden
        for index, layer in enumerate(adapter.layers):
            assert torch.allclose(torch.cat(hidden), expected[index], atol=1e-5), f"layer {index} input differs"
            hidden = [forward_layer(layer, h, c) for h, c in zip(hidden, captured.calls[index], strict=True)]


@pytest.mark.parametrize("family", list(CONFIGS))
@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_exact_sparsity_every_family(family, method):
    model = tiny_model(family)
    adapter = adapter_for(model)
    stages = [PruneStage(method, 0.5)]
    results = prune_layerwise(adapter, calibration(), stages, CPU)
    matrices = [{**adapter.linears(layer), **adapter.expert_matrices(layer)} for layer in adapter.layers]
    assert len(results) == sum(len(m) for m in matrices)  # an MoE model's experts are pruned too
    for layer_matrices in matrices:
        for linear in layer_matrices.values():
            weight = weight_matrix(linear)  # (outputs, inputs) also for GPT-2's Conv1D
            zeros_per_row = (weight == 0).sum(dim=1)
            assert (zeros_per_row == weight.shape[1] // 2).all()
    assert all(r.sparsity == 0.5 for r in results)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_nm_sparsity(n, m):
    model = tiny_model("qwen2")
    adapter = adapter_for(model)
    prune_layerwise(adapter, calibration(), [PruneStage("wanda", 1 - n / m, SparsityPattern(n, m))], CPU)
    for layer in adapter.layers:
        for linear in adapter.linears(layer).values():
            nonzeros = (linear.weight != 0).view(linear.out_features, -1, m).sum(-1)
            assert (nonzeros == n).all()


def test_targets_and_layers_select_what_is_pruned():
    model = tiny_model("llama")
    adapter = adapter_for(model)
    stage = PruneStage("magnitude", 0.5, targets=("mlp.*",), layers=(1,))
    results = {r.name: r.sparsity for r in prune_layerwise(adapter, calibration(), [stage], CPU)}
    assert results["layers.1.mlp.down_proj"] == 0.5
    assert results["layers.0.mlp.down_proj"] == 0.0
    assert results["layers.1.self_attn.q_proj"] == 0.0


def test_stages_compose_unstructured_then_nm_on_mlp():
    model = tiny_model("llama")
    adapter = adapter_for(model)
    stages = [PruneStage("wanda", 0.3), PruneStage("wanda", 0.5, SparsityPattern(2, 4), targets=("mlp.*",))]
    results = {r.name: r.sparsity for r in prune_layerwise(adapter, calibration(), stages, CPU)}
    assert abs(results["layers.0.self_attn.q_proj"] - 0.3) < 0.02
    assert results["layers.0.mlp.up_proj"] >= 0.5
    up = adapter.layers[0].mlp.up_proj.weight
    assert ((up != 0).view(up.shape[0], -1, 4).sum(-1) <= 2).all()


def _input_sq_sums(model, layer_index, names, ids):
    """Plain torch: forward the whole model and sum squared inputs of the named linears of one layer (float64)."""
    layer = model.model.layers[layer_index]
    sums = {}
    handles = []
    for name in names:
        module = layer.get_submodule(name)

        def hook(_m, args, name=name):
            x = args[0].detach().double().reshape(-1, args[0].shape[-1])
            sums[name] = sums.get(name, 0) + x.square().sum(0)

        handles.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        model(input_ids=ids)
    for h in handles:
        h.remove()
    return sums


def _wanda_mask(weight, sq_sum, sparsity):
    scores = weight.double().abs() * sq_sum.sqrt()
    k = round(sparsity * weight.shape[1])
    keep = torch.ones_like(weight, dtype=torch.bool)
    keep.scatter_(1, scores.argsort(dim=1)[:, :k], False)
    return keep


def test_wanda_masks_equal_an_independent_recomputation():
    """Layer 0 from the dense model; layer 1 from a model whose layer 0 holds the engine's pruned weights: the
    sequential semantics (each layer calibrated on the pruned layers before it)."""
    dense = tiny_model("llama")
    pruned = copy.deepcopy(dense)
    ids = calibration(n=8, length=48)
    prune_layerwise(adapter_for(pruned), ids, [PruneStage("wanda", 0.5)], CPU, batch_size=3)
    names = adapter_for(dense).linear_names
    for layer_index in (0, 1):
        reference = copy.deepcopy(dense)
        for earlier in range(layer_index):
            reference.model.layers[earlier].load_state_dict(pruned.model.layers[earlier].state_dict())
        sums = _input_sq_sums(reference, layer_index, names, ids)
        for name in names:
            weight = reference.model.layers[layer_index].get_submodule(name).weight
            expected = _wanda_mask(weight, sums[name], 0.5)
            actual = pruned.model.layers[layer_index].get_submodule(name).weight != 0
            assert torch.equal(actual, expected), f"layer {layer_index} {name}"


def test_wanda_differs_from_magnitude_and_is_deterministic():
    runs = []
    for method in ("wanda", "wanda", "magnitude"):
        model = tiny_model("llama")
        prune_layerwise(adapter_for(model), calibration(), [PruneStage(method, 0.5)], CPU)
        runs.append(model.model.layers[1].mlp.down_proj.weight.clone())
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0] != 0, runs[2] != 0)


def test_global_allocation_needs_comparable_scores():
    model = tiny_model("llama")
    with pytest.raises(PrunekitError, match="global allocation"):
        prune_layerwise(adapter_for(model), calibration(), [PruneStage("wanda", 0.5, allocation="global")], CPU)
    results = prune_layerwise(adapter_for(model), calibration(), [PruneStage("magnitude", 0.5, allocation="global")],
                              CPU)
    total = sum(r.numel for r in results)
    assert abs(sum(r.zeros for r in results) - total // 2) <= len(results)
    assert len({round(r.sparsity, 3) for r in results}) > 1  # non-uniform


def test_unsupported_architecture_lists_supported_ones():
    model = BloomForCausalLM(BloomConfig(n_layer=1, hidden_size=32, n_head=2, vocab_size=50))
    with pytest.raises(PrunekitError) as error:
        adapter_for(model)
    message = str(error.value)
    assert "bloom" in message and all(t in message for t in SUPPORTED_MODEL_TYPES)
    assert "\n" not in message


def test_owl_gives_layers_different_sparsities_with_the_target_mean():
    model = tiny_model("llama")
    adapter = adapter_for(model)
    stage = PruneStage("wanda", 0.5, allocation="owl", owl_m=2.0, owl_lambda=0.1)
    results = prune_layerwise(adapter, calibration(), [stage], CPU)
    per_layer = {}
    for r in results:
        layer = int(r.name.split(".")[1])
        per_layer.setdefault(layer, []).append(r)
    sparsity = [sum(r.zeros for r in rs) / sum(r.numel for r in rs) for rs in per_layer.values()]
    assert sorted(round(s, 2) for s in sparsity) == [0.4, 0.6]
    assert abs(sum(sparsity) / 2 - 0.5) < 0.005


def test_owl_works_with_magnitude_and_sparsegpt():
    for method in ("magnitude", "sparsegpt"):
        model = tiny_model("llama")
        results = prune_layerwise(adapter_for(model), calibration(), [PruneStage(method, 0.5, allocation="owl")], CPU)
        total = sum(r.zeros for r in results) / sum(r.numel for r in results)
        assert abs(total - 0.5) < 0.01, method


def test_owl_with_magnitude_through_the_api_draws_calibration(tokenizer, text_file):
    import prunekit
    from prunekit.recipe import CalibrationConfig

    model = tiny_model("llama")
    config = CalibrationConfig(source=str(text_file), samples=4, seq_len=32)
    result = prunekit.prune(model, tokenizer, stages=[{"method": "magnitude", "allocation": "owl", "owl_lambda": 0.1}],
                            calibration=config, progress=False)
    assert abs(result.sparsity - 0.5) < 0.01
    layer0 = [m.sparsity for m in result.matrices if m.name.startswith("layers.0.")]
    layer1 = [m.sparsity for m in result.matrices if m.name.startswith("layers.1.")]
    assert abs(max(layer0) - min(layer0)) < 0.02 and abs(max(layer1) - min(layer1)) < 0.02
    assert abs(layer0[0] - layer1[0]) > 0.15  # 0.4 and 0.6


def test_gradient_norms_are_l2_over_per_sample_gradients():
    from prunekit.engine.gradients import gradient_norms

    model = tiny_model("llama")
    ids = calibration(n=3, length=16)
    linear = model.model.layers[1].mlp.down_proj
    norms = gradient_norms(model, {"down": linear}, ids, CPU)["down"]
    assert all(p.grad is None and p.requires_grad for p in model.parameters())  # left as found
    expected = torch.zeros_like(linear.weight)
    for sample in ids:
        model.zero_grad()
        model(input_ids=sample[None], labels=sample[None]).loss.backward()
        expected += linear.weight.grad.square()
    assert torch.allclose(norms, expected.sqrt(), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("method", ["gradient", "gblm"])
def test_gradient_methods_prune_exactly_and_differ_from_wanda(method):
    model = tiny_model("llama")
    results = prune_layerwise(adapter_for(model), calibration(), [PruneStage(method, 0.5)], CPU)
    assert all(r.sparsity == 0.5 for r in results)
    reference = tiny_model("llama")
    prune_layerwise(adapter_for(reference), calibration(), [PruneStage("wanda", 0.5)], CPU)
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight != 0,
                           reference.model.layers[0].mlp.up_proj.weight != 0)


def test_owl_ratios_are_cached_and_reused_exactly(tmp_path, monkeypatch):
    """OWL's dense pass is measured once per model, calibration and targets; another sparsity reuses it."""
    import prunekit

    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))
    ids = calibration()
    stage = {"method": "wanda", "sparsity": 0.6, "allocation": "owl", "owl_lambda": 0.1}
    fresh = tiny_model("llama")
    prunekit.prune(fresh, stages=[stage], calibration=ids, progress=False, cache_scores=False)
    assert not (tmp_path / "scores").exists()
    first = tiny_model("llama")
    prunekit.prune(first, stages=[{**stage, "sparsity": 0.5}], calibration=ids, progress=False)
    assert len(list((tmp_path / "scores").iterdir())) == 1
    second = tiny_model("llama")
    prunekit.prune(second, stages=[stage], calibration=ids, progress=False)
    assert len(list((tmp_path / "scores").iterdir())) == 1  # the same entry served the second sparsity
    for a, b in zip(fresh.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_damaged_cache_entry_is_computed_again(tmp_path, monkeypatch):
    from prunekit.engine.cache import ScoreCache

    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))
    cache = ScoreCache()
    cache.save("k", {"x": torch.ones(3)})
    (tmp_path / "scores" / "k.safetensors").write_bytes(b"not safetensors")
    assert torch.equal(cache.get_or_compute("k", lambda: {"x": torch.zeros(3)})["x"], torch.zeros(3))
    assert torch.equal(cache.load("k")["x"], torch.zeros(3)) and cache.hits == ["k"]
