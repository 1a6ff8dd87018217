import pytest
import torch

from prunekit.engine.layerwise import PruneStage, prune_layerwise
from prunekit.methods import get_method
from prunekit.methods.patterns import SparsityPattern
from prunekit.methods.sparsegpt import inverse_hessian, sparsegpt
from prunekit.models.adapters import adapter_for


def correlated_inputs(tokens=512, features=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=g) / features**0.5
    scales = torch.logspace(-1, 1, features)[torch.randperm(features, generator=g)]  # outlier features anywhere
    return (torch.randn(tokens, features, generator=g) @ mixing) * scales


@pytest.mark.parametrize("pattern", [SparsityPattern(), SparsityPattern(2, 4)])
def test_sparsegpt_reconstructs_better_than_magnitude_and_wanda(pattern):
    x = correlated_inputs()
    weight = torch.randn(48, 64, generator=torch.Generator().manual_seed(1))
    hessian = x.T @ x
    errors = {}
    for name in ("magnitude", "wanda", "sparsegpt"):
        method = get_method(name)
        statistics = {"magnitude": {}, "wanda": {"input_norms": x.square().sum(0)},
                      "sparsegpt": {"hessian": hessian}}[name]
        options = {"block_size": 16} if name == "sparsegpt" else {}
        pruned = method.prune(weight, statistics, 0.5, pattern, **options)
        new = pruned.weight if pruned.weight is not None else weight * pruned.keep
        assert (new[~pruned.keep] == 0).all()
        assert pruned.keep.float().mean().item() == 0.5  # same mask density for all three
        errors[name] = torch.linalg.norm(x @ weight.T - x @ new.T).item()
    assert errors["sparsegpt"] < errors["wanda"] and errors["sparsegpt"] < errors["magnitude"], errors


def test_sparsegpt_nm_structure_and_exact_unstructured_count():
    x = correlated_inputs(features=32)
    weight = torch.randn(8, 32)
    result = sparsegpt(weight, x.T @ x, 0.5, SparsityPattern(2, 4), block_size=8)
    assert ((result.weight != 0).view(8, -1, 4).sum(-1) <= 2).all()
    assert (result.keep.view(8, -1, 4).sum(-1) == 2).all()
    result = sparsegpt(weight, x.T @ x, 0.75, SparsityPattern(), block_size=16)
    assert (~result.keep).sum().item() == 0.75 * weight.numel()


def test_dead_inputs_and_singular_hessians_stay_finite():
    x = correlated_inputs(tokens=16, features=32)  # rank 16 < 32: singular without dampening
    x[:, 5] = 0  # a feature that never fires
    weight = torch.randn(8, 32)
    prepared = inverse_hessian(x.T @ x, damping=1e-12)
    assert prepared.retries > 0 and prepared.damping > 1e-12
    result = sparsegpt(weight, prepared, 0.5, SparsityPattern())
    assert torch.isfinite(result.weight).all()
    assert (result.weight[:, 5] == 0).all()
    note = get_method("sparsegpt").prune(weight, {"hessian": x.T @ x}, 0.5, SparsityPattern(), damping=1e-12).note
    assert "retried" in note


def test_sparsegpt_in_the_engine_updates_weights():
    from conftest import VOCAB, tiny_model

    model = tiny_model("llama")
    before = model.model.layers[0].mlp.down_proj.weight.clone()
    ids = torch.randint(3, VOCAB, (6, 32), generator=torch.Generator().manual_seed(0))
    results = prune_layerwise(adapter_for(model), ids, [PruneStage("sparsegpt", 0.5)], torch.device("cpu"))
    after = model.model.layers[0].mlp.down_proj.weight
    kept = after != 0
    assert abs(kept.float().mean().item() - 0.5) < 0.01
    assert not torch.allclose(after[kept], before[kept])  # the kept weights were updated, not just masked
    assert all(abs(r.sparsity - 0.5) < 0.01 for r in results)
