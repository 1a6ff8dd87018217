import json

import pytest
import torch
from conftest import CONFIGS, VOCAB, tiny_model
from transformers import AutoModelForCausalLM

from prunekit.errors import PrunekitError
from prunekit.eval.speed import (
    SpeedConfig,
    benchmark_models,
    count_parameters,
    decode,
    make_prompt,
    render_table,
    write_json,
)

FAST = SpeedConfig(prompt_len=8, new_tokens=4, batch_sizes=(1, 2), repeats=2, warmup=1, device="cpu")


def fewer_layers_model(layers: int) -> torch.nn.Module:
    torch.manual_seed(0)
    config = CONFIGS["llama"]()
    config.num_hidden_layers = layers
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A dense tiny llama and one with a layer fewer, saved without tokenizers (the benchmark needs none)."""
    root = tmp_path_factory.mktemp("speed")
    dense, shallow = tiny_model("llama"), fewer_layers_model(CONFIGS["llama"]().num_hidden_layers - 1)
    dense.save_pretrained(root / "dense")
    shallow.save_pretrained(root / "shallow")
    return {"dense": (root / "dense", dense), "shallow": (root / "shallow", shallow)}


@pytest.fixture(scope="module")
def result(models):
    lines = []
    result = benchmark_models([str(models["dense"][0]), str(models["shallow"][0])], FAST, on_progress=lines.append)
    assert any("dense" in line for line in lines)
    return result


def test_every_model_is_measured(result, models):
    assert [m["model"] for m in result["models"]] == [str(models["dense"][0]), str(models["shallow"][0])]
    for entry, (_, model) in zip(result["models"], models.values(), strict=True):
        assert entry["parameters"] == count_parameters(model)
        assert entry["weight_bytes"] > 0
        assert entry["memory"]["peak_rss_bytes"] >= entry["memory"]["baseline_rss_bytes"] > 0
        assert entry["structure"]["vocab_size"] == VOCAB
        assert len(entry["ttft_ms"]["runs"]) == FAST.repeats
        assert entry["prefill_tokens_per_s"]["median"] > 0
        assert set(entry["decode_tokens_per_s"]) == {str(b) for b in FAST.batch_sizes}
        for stats in entry["decode_tokens_per_s"].values():
            assert len(stats["runs"]) == FAST.repeats
            assert 0 < stats["min"] <= stats["median"] <= stats["max"]
    assert result["environment"]["threads"] >= 1
    assert result["environment"]["versions"]["torch"] == torch.__version__


def test_baseline_ratios_are_one(result):
    ratios = result["models"][0]["ratios"]
    for key in ("parameters", "weight_bytes", "peak_memory", "prefill_speedup", "ttft_speedup"):
        assert ratios[key] == pytest.approx(1.0)
    assert all(r == pytest.approx(1.0) for r in ratios["decode_speedup"].values())


def test_fewer_layers_show_in_structure_and_parameters(result):
    dense, shallow = result["models"]
    assert shallow["structure"]["layers"] == dense["structure"]["layers"] - 1
    assert shallow["parameters"] < dense["parameters"]
    assert shallow["ratios"]["parameters"] == pytest.approx(shallow["parameters"] / dense["parameters"])
    assert shallow["ratios"]["weight_bytes"] < 1


def test_result_is_json_and_renders(result, tmp_path):
    write_json(result, tmp_path / "out" / "speed.json")
    assert json.loads((tmp_path / "out" / "speed.json").read_text()) == result
    table = render_table(result)
    assert table.row_count == len(result["models"])
    headers = [str(column.header) for column in table.columns]
    assert headers[-len(FAST.batch_sizes):] == [f"decode tok/s b={b}" for b in FAST.batch_sizes]


def test_one_model_at_a_time(models):
    config = SpeedConfig(**{**FAST.__dict__, "interleave": False, "repeats": 1, "warmup": 0, "threads": 1})
    result = benchmark_models([str(models["shallow"][0])], config, on_progress=lambda _: None)
    assert result["models"][0]["parameters"] == count_parameters(models["shallow"][1])
    assert result["environment"]["threads"] == config.threads


def test_missing_directory_is_a_one_line_error(tmp_path):
    with pytest.raises(PrunekitError) as error:
        benchmark_models([str(tmp_path / "nowhere")], FAST)
    assert "nowhere" in str(error.value)
    assert "\n" not in str(error.value)


def test_directory_without_a_model_is_a_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrunekitError) as error:
        benchmark_models([str(tmp_path / "empty")], FAST)
    assert "\n" not in str(error.value)


def test_bad_settings_are_errors(models):
    with pytest.raises(PrunekitError, match="batch"):
        benchmark_models([str(models["dense"][0])], SpeedConfig(batch_sizes=(0,)))
    with pytest.raises(PrunekitError, match="context"):
        benchmark_models([str(models["dense"][0])], SpeedConfig(prompt_len=CONFIGS["llama"]().max_position_embeddings))


def test_tied_weights_are_counted_once():
    config = CONFIGS["llama"]()
    untied = AutoModelForCausalLM.from_config(config)
    config.tie_word_embeddings = True
    tied = AutoModelForCausalLM.from_config(config)
    assert count_parameters(untied) - count_parameters(tied) == config.vocab_size * config.hidden_size


def test_decode_makes_new_tokens_per_sequence_deterministically():
    model = tiny_model("llama")
    prompt = make_prompt(FAST.batch_sizes[-1], FAST.prompt_len, VOCAB, FAST.seed)
    tokens, seconds = decode(model, prompt, FAST.new_tokens)
    assert tokens.shape == (FAST.batch_sizes[-1], FAST.new_tokens)
    assert seconds > 0
    assert torch.equal(decode(model, prompt, FAST.new_tokens)[0], tokens)
    assert torch.equal(make_prompt(FAST.batch_sizes[-1], FAST.prompt_len, VOCAB, FAST.seed), prompt)
    assert int(prompt.max()) < VOCAB


def test_decode_matches_full_forward_greedy():
    model = tiny_model("llama")
    prompt = make_prompt(1, FAST.prompt_len, VOCAB, FAST.seed)
    tokens, _ = decode(model, prompt, FAST.new_tokens)
    sequence = prompt
    with torch.no_grad():
        for _ in range(FAST.new_tokens + 1):
            next_token = model(input_ids=sequence, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            sequence = torch.cat([sequence, next_token], dim=1)
    # the prefill's token is fed to the loop; the loop's tokens are the ones after it
    assert torch.equal(tokens, sequence[:, FAST.prompt_len + 1:])


def test_bench_command_prints_the_table_and_writes_json(models, tmp_path, capsys, monkeypatch):
    from test_cli import run_cli

    out = tmp_path / "bench.json"
    args = ["bench", str(models["dense"][0]), str(models["shallow"][0]), "--prompt-len", "8", "--new-tokens", "2",
            "--batch-sizes", "1,2", "--repeats", "1", "--device", "cpu", "--out", str(out)]
    code, stdout, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    assert "decode" in stdout and "1.00x" in stdout
    saved = json.loads(out.read_text())
    assert [m["structure"]["layers"] for m in saved["models"]] == [2, 1]
    code, _, err = run_cli(["bench", str(models["dense"][0]), "--batch-sizes", "1,x"], capsys, monkeypatch)
    assert code == 2 and "--batch-sizes" in err
