"""Pruning groups: a fused layout (Phi-3's qkv_proj and gate_up_proj) shrinks exactly like the separate projections
it fuses, the method registry checks a stage's options, and an unknown layout is a one-line error."""

import pytest
import torch
from conftest import tiny_model
from test_cli import assert_one_line_error, run_cli, small_run
from transformers import AutoModelForCausalLM, LlamaConfig, Phi3Config

from prunekit.api import prune
from prunekit.errors import PrunekitError
from prunekit.methods import REGISTRY, get_method
from prunekit.models.adapters import adapter_for
from prunekit.recipe import Recipe

SIZES = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=10000.0,
             tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
IDS = torch.randint(3, 96, (4, 32), generator=torch.Generator().manual_seed(0))


def twins() -> tuple[torch.nn.Module, torch.nn.Module]:
    """A Llama model and a Phi-3 model holding the same weights, Phi-3's fused: the same function."""
    torch.manual_seed(0)
    llama = AutoModelForCausalLM.from_config(LlamaConfig(**SIZES)).eval()
    phi3 = AutoModelForCausalLM.from_config(Phi3Config(**SIZES)).eval()
    state = {}
    for name, tensor in llama.state_dict().items():
        if ".self_attn.q_proj." in name:
            prefix = name.replace("q_proj.weight", "")
            state[prefix + "qkv_proj.weight"] = torch.cat([llama.state_dict()[prefix + f"{p}_proj.weight"]
                                                           for p in "qkv"])
        elif ".mlp.gate_proj." in name:
            prefix = name.replace("gate_proj.weight", "")
            state[prefix + "gate_up_proj.weight"] = torch.cat([llama.state_dict()[prefix + f"{p}_proj.weight"]
                                                               for p in ("gate", "up")])
        elif not any(f".{p}_proj." in name for p in ("k", "v", "up")):
            state[name] = tensor
    phi3.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert torch.allclose(llama(IDS).logits, phi3(IDS).logits, atol=1e-5)
    return llama, phi3


@pytest.mark.parametrize("stage", [
    {"method": "wanda-sp", "part": "heads", "size": 2},
    {"method": "taylor", "part": "kv-heads", "size": 1, "gradient_samples": 2},
    {"method": "taylor", "part": "mlp", "sparsity": 0.25, "gradient_samples": 2},
    {"method": "activation", "part": "mlp", "sparsity": 0.5},
], ids=lambda s: f"{s['method']}-{s['part']}")
def test_fused_projections_shrink_like_the_separate_ones(stage):
    llama, phi3 = twins()
    results = [prune(model, stages=[stage], calibration=IDS, progress=False, cache_scores=False)
               for model in (llama, phi3)]
    kept = [r.structured[0].removed["kept_per_layer"] for r in results]
    assert kept[0] == kept[1]
    for separate, fused in zip(llama.model.layers, phi3.model.layers, strict=True):
        attention, mlp = separate.self_attn, separate.mlp
        qkv = torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight])
        assert torch.equal(fused.self_attn.qkv_proj.weight, qkv)
        assert torch.equal(fused.mlp.gate_up_proj.weight, torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]))
        assert torch.equal(fused.self_attn.o_proj.weight, attention.o_proj.weight)
        assert torch.equal(fused.mlp.down_proj.weight, mlp.down_proj.weight)
    for field in ("num_attention_heads", "num_key_value_heads", "intermediate_size"):
        assert getattr(phi3.config, field) == getattr(llama.config, field), field
    if stage["part"] != "mlp":  # Phi-3 configs get a head_dim once heads go (hidden / heads no longer holds)
        assert phi3.config.head_dim == llama.config.head_dim == 16
    with torch.no_grad():
        assert torch.allclose(llama(IDS).logits, phi3(IDS).logits, atol=1e-5)


def test_every_method_declares_what_it_needs_and_takes():
    assert sorted(m.name for m in REGISTRY.values() if m.kind == "weights") == [
        "alps", "gblm", "gradient", "magnitude", "ria", "sparsegpt", "wanda", "wanda++"]
    assert sorted(m.name for m in REGISTRY.values() if m.kind == "experts") == [
        "expert-frequency", "expert-merge", "expert-random", "expert-search", "reap"]
    assert get_method("reap").needs == ("expert_routing",) and get_method("moefy").kind == "conversion"
    assert get_method("alps").needs == ("hessian",) and get_method("ria").parameters == {"a": 0.5}
    assert get_method("sparsegpt").accepted_options == ("block_size", "damping")
    assert get_method("gblm").needs == ("gradient_norms", "input_norms")
    assert get_method("taylor").accepted_options == ("bias_compensation", "gradient_samples")
    assert get_method("flap").bias_by_default and not get_method("wanda-sp").bias_by_default
    with pytest.raises(PrunekitError, match="unknown method 'obs': choose one of magnitude, wanda"):
        get_method("obs")


@pytest.mark.parametrize(("stage", "message"), [
    ({"method": "wanda", "damping": 0.1}, "wanda does not take damping: it takes no method-specific options"),
    ({"method": "magnitude", "gradient_samples": 4}, "magnitude does not take gradient_samples"),
    ({"method": "block-influence", "size": 1, "seed": 3}, "block-influence does not take seed"),
    ({"method": "wanda-sp", "part": "mlp", "sparsity": 0.25, "gradient_samples": 4},
     "wanda-sp does not take gradient_samples: it takes bias_compensation"),
])
def test_an_option_the_method_does_not_take_is_refused(stage, message):
    with pytest.raises(PrunekitError) as error:
        Recipe.parse({"stages": [stage]})
    assert message in str(error.value) and "\n" not in str(error.value)


def test_an_option_at_its_default_is_accepted_so_full_recipe_dumps_reload():
    recipe = Recipe.parse({"stages": [{"method": "wanda", "block_size": 128, "damping": 0.01}]})
    assert Recipe.parse(recipe.model_dump()).stages[0].method == "wanda"


def test_cli_refuses_an_option_the_method_does_not_take(tiny_model_dir, text_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    code, _, err = run_cli([*small_run(tiny_model_dir, text_file, out), "--method", "wanda", "--damping", "0.1"],
                           capsys, monkeypatch)
    assert code == 2 and "wanda does not take damping" in err
    assert_one_line_error(err)
    assert not out.exists()


def test_a_layout_the_adapter_does_not_know_is_one_line():
    model = tiny_model("phi3")
    del model.model.layers[0].self_attn.qkv_proj  # as if a transformers release had split it again
    with pytest.raises(PrunekitError) as error:
        adapter_for(model)
    message = str(error.value)
    assert "does not have the layout the Phi-3" in message and "missing self_attn.qkv_proj" in message
    assert "\n" not in message


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "gpt2", "opt", "phi3"])
def test_vocabulary_rows_shrink_together_and_reload(family, tmp_path):
    """The vocabulary group (for vocabulary pruning): on kept tokens, the logits are the dense model's kept columns."""
    from prunekit.models.surgery import shrink_vocabulary

    model = tiny_model(family)
    keep = torch.tensor([0, 1, 2, *range(10, 60)])
    ids = torch.randint(0, len(keep), (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(keep[ids]).logits[..., keep]
    shrink_vocabulary(adapter_for(model), keep)
    assert model.config.vocab_size == len(keep)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, expected, atol=1e-5)
        assert torch.equal(reloaded(ids).logits, model(ids).logits)


@pytest.mark.parametrize("family", ["llama", "qwen3", "phi3", "granite", "cohere"])
def test_hidden_channels_shrink_together_and_reload(family, tmp_path):
    """The hidden-size group (for hidden / embedding pruning): every reader's columns, writer's rows and norm."""
    from prunekit.models.surgery import shrink_hidden

    model = tiny_model(family)
    keep = torch.tensor([i for i in range(64) if i % 4])  # 48 of 64
    shrink_hidden(adapter_for(model), keep)
    assert model.config.hidden_size == 48
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.num_parameters() == model.num_parameters() < tiny_model(family).num_parameters()
    with torch.no_grad():
        assert torch.equal(reloaded(IDS).logits, model(IDS).logits)


@pytest.mark.parametrize(("family", "message"), [
    ("gpt2", "gpt2 derives its head size from hidden_size / heads"),
    ("gemma2", "which scales by the hidden size"),
    ("olmo2", "holds model.layers.0.self_attn.q_norm.weight, sized by the hidden size"),
])
def test_hidden_size_refusals_are_one_line(family, message):
    from prunekit.models.surgery import shrink_hidden

    model = tiny_model(family)
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(PrunekitError) as error:
        shrink_hidden(adapter_for(model), torch.arange(48))
    assert message in str(error.value) and "\n" not in str(error.value)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # nothing touched


@pytest.mark.parametrize("family", ["llama", "phi3", "cohere"])
def test_hidden_group_covers_the_whole_residual_stream(family):
    """Permuting every hidden channel through the group leaves the model's function unchanged: a reader or writer
    the group missed or mistook would scramble it."""
    from prunekit.models.surgery import shrink_hidden

    model = tiny_model(family)
    with torch.no_grad():
        expected = model(IDS).logits
    shrink_hidden(adapter_for(model), torch.randperm(64, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        assert torch.allclose(model(IDS).logits, expected, atol=1e-5)
