"""The README's "Extending prunekit" examples, run as written: a new weight method (one registered function with a
parameter of its own), a new data score (one function and one registry entry); the new family example,
GPTBigCode, is a real adapter file and is in the family table of test_families.py."""

import pytest
import torch
from conftest import tiny_model

import prunekit
from prunekit.data.dynamics import TrainingDynamics
from prunekit.data.registry import DATA_SCORES, LABELS, TRAINING_DYNAMICS, DataScore
from prunekit.errors import PrunekitError
from prunekit.methods import REGISTRY, names, register
from prunekit.models.adapters import SUPPORTED_MODEL_TYPES
from prunekit.recipe import Recipe


@pytest.fixture()
def random_method():
    """The README's example file, src/prunekit/methods/random_weights.py, registered for the test only."""

    @register("random-weights", "weights", "uniformly random scores, seeded: the baseline every method must beat",
              parameters={"seed": 0})
    def random_weight_scores(weight: torch.Tensor, seed: int) -> torch.Tensor:
        return torch.rand(weight.shape, generator=torch.Generator().manual_seed(seed))

    yield "random-weights"
    del REGISTRY["random-weights"]


def test_a_new_method_is_one_registered_function(random_method):
    assert random_method in names("weights")
    model = tiny_model("llama")
    result = prunekit.prune(model, stages=[{"method": random_method, "sparsity": 0.5, "parameters": {"seed": 3}}],
                            progress=False)
    assert result.sparsity == pytest.approx(0.5, abs=1e-3)
    layer = model.model.layers[0].self_attn.q_proj.weight
    expected = torch.rand(layer.shape, generator=torch.Generator().manual_seed(3))
    kept = expected >= expected.sort(dim=1).values[:, layer.shape[1] // 2:layer.shape[1] // 2 + 1]
    assert torch.equal(layer != 0, kept)  # exactly the half of each row with the higher random score
    with pytest.raises(PrunekitError, match=r"random-weights has no parameter sed: it takes seed \(default 0\)"):
        Recipe.parse({"stages": [{"method": random_method, "parameters": {"sed": 1}}]})
    with pytest.raises(PrunekitError, match="parameter seed must be a int like 0, not 'x'"):
        Recipe.parse({"stages": [{"method": random_method, "parameters": {"seed": "x"}}]})


def test_a_new_data_score_is_one_function_and_one_entry():
    def low_confidence(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """1 - the probability of the assigned label: high for examples the model is unsure of."""
        return 1 - logits.softmax(-1).gather(1, labels.unsqueeze(1)).squeeze(1).double()

    DATA_SCORES["low-confidence"] = DataScore("low-confidence", low_confidence, "1 - p(label), mean over epochs",
                                              frozenset({TRAINING_DYNAMICS, LABELS}), per_record=low_confidence)
    try:
        recorder = TrainingDynamics(num_classes=3)
        logits = [torch.randn(5, 3, generator=torch.Generator().manual_seed(e)) for e in range(2)]
        labels = torch.tensor([0, 1, 2, 0, 1])
        for epoch, values in enumerate(logits):
            recorder.record(list(range(5)), values, labels, epoch=epoch)
        ids, scores = recorder.scores("low-confidence")
        expected = (low_confidence(logits[0], labels) + low_confidence(logits[1], labels)) / 2
        assert ids == list(range(5)) and torch.allclose(scores, expected)
    finally:
        del DATA_SCORES["low-confidence"]


def test_the_new_family_example_is_supported():
    assert "gpt_bigcode" in SUPPORTED_MODEL_TYPES
