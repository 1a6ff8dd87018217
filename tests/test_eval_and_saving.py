import math

import pytest
import torch
from conftest import VOCAB, tiny_model

from prunekit.errors import PrunekitError
from prunekit.eval.perplexity import perplexity
from prunekit.outputs import atomic_directory, check_output


def test_uniform_model_has_perplexity_equal_to_vocabulary_size():
    model = tiny_model("llama")
    with torch.no_grad():
        model.lm_head.weight.zero_()  # tied: embeddings too, so logits are all zero
    windows = torch.randint(0, VOCAB, (3, 20))
    result = perplexity(model, windows)
    assert math.isclose(result.perplexity, VOCAB, rel_tol=1e-5)
    assert result.tokens == 3 * 19


def test_perplexity_hand_computed_from_logits():
    model = tiny_model("llama")
    windows = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        logits = model(windows).logits
    log_probs = logits.log_softmax(-1)[:, :-1].gather(-1, windows[:, 1:, None])
    assert math.isclose(perplexity(model, windows, batch_size=2).perplexity, math.exp(-log_probs.mean().item()),
                        rel_tol=1e-5)


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "result"
    with pytest.raises(RuntimeError), atomic_directory(out) as tmp:
        (tmp / "model.safetensors").write_text("half written")
        raise RuntimeError("interrupted")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_refuses_existing_unless_overwrite(tmp_path):
    out = tmp_path / "result"
    out.mkdir()
    (out / "old").write_text("old")
    with pytest.raises(PrunekitError, match="already exists"), atomic_directory(out):
        pass
    with atomic_directory(out, overwrite=True) as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]


def test_output_may_not_be_the_input(tmp_path):
    with pytest.raises(PrunekitError, match="overwrite the input"):
        check_output(tmp_path, overwrite=True, inputs=(tmp_path,))
    with pytest.raises(PrunekitError, match="overwrite the input"):
        check_output(tmp_path / "model" / "sub", overwrite=True, inputs=(tmp_path / "model",))
