"""Every newer family x every kind of pruning, end to end: prunekit.api.run with a Recipe on a tiny random
checkpoint, the output reloaded by stock transformers in a fresh process (no prunekit imported) and its logits on a
fixed input compared with the pruned in-memory model's; what a family cannot express is a one-line PrunekitError.

Per family, one module-scoped set of outputs (all kinds) and one checking subprocess, so the table stays cheap."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import make_text, tiny_model
from test_cli import assert_one_line_error, run_cli, small_run
from transformers import AutoModelForCausalLM

import prunekit.api
from prunekit.api import prune, run
from prunekit.errors import PrunekitError
from prunekit.recipe import Recipe

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "opt", "gemma2", "olmo2", "granite", "stablelm",
            "starcoder2", "cohere", "phi", "phi3", "gpt_neox", "gpt2", "gpt_bigcode", "falcon")
KINDS = {
    "wanda-50%": dict(method="wanda", sparsity=0.5),
    "magnitude-2:4": dict(method="magnitude", pattern="2:4"),
    "sparsegpt-50%": dict(method="sparsegpt", sparsity=0.5),
    "depth": dict(method="block-influence", size=1),
    "width-mlp": dict(method="wanda-sp", part="mlp", sparsity=0.25),
    "heads": dict(method="wanda-sp", part="heads", size=2),
    "kv-heads": dict(method="flap", part="kv-heads", size=1, bias_compensation=False),
    "flap-bias-mlp": dict(method="flap", part="mlp", sparsity=0.25),
    "flap-bias-attention": dict(method="flap", part="kv-heads", size=1),
}
# (family, kind): what the one-line error must say. Everything else must prune, save and reload exactly.
NO_MLP_BIAS = "bias compensation needs a bias on mlp.down_proj"
OLMO2_QK_NORM = "olmo2 normalises queries and keys over all heads"
NO_O_PROJ_BIAS = "bias compensation needs a bias on self_attn.o_proj"


def derived_head_size(family: str) -> str:
    return f"{family} derives its head size from hidden_size / heads"


REFUSED = {
    ("gemma2", "flap-bias-mlp"): NO_MLP_BIAS,
    ("olmo2", "heads"): OLMO2_QK_NORM,
    ("olmo2", "kv-heads"): OLMO2_QK_NORM,
    ("olmo2", "flap-bias-mlp"): NO_MLP_BIAS,
    ("olmo2", "flap-bias-attention"): OLMO2_QK_NORM,
    **{(family, "flap-bias-mlp"): NO_MLP_BIAS for family in ("mistral", "qwen2", "qwen3", "gemma3_text")},
    **{(family, "flap-bias-attention"): NO_O_PROJ_BIAS for family in ("mistral", "qwen2")},
    ("stablelm", "flap-bias-mlp"): NO_MLP_BIAS,
    ("cohere", "flap-bias-mlp"): NO_MLP_BIAS,
    ("phi3", "flap-bias-mlp"): NO_MLP_BIAS,
    ("phi3", "flap-bias-attention"): NO_O_PROJ_BIAS,
    **{(family, kind): derived_head_size(family)
       for family in ("opt", "stablelm", "gpt_neox", "gpt2", "gpt_bigcode", "falcon")
       for kind in ("heads", "kv-heads", "flap-bias-attention")},
}
# (attention, mlp); the others: attention_bias, mlp_bias; None: every linear has a bias already, no flag changes
BIAS_FLAGS = {"starcoder2": ("use_bias", "use_bias"), "phi": (None, None), "gpt_neox": (None, None),
              "gpt2": (None, None), "gpt_bigcode": (None, None), "falcon": ("bias", "bias"), "opt": (None, None)}
# the others: intermediate_size
WIDTH_FIELD = {"gpt2": "n_inner", "gpt_bigcode": "n_inner", "falcon": "ffn_hidden_size", "opt": "ffn_dim"}
FIELDS = ("num_hidden_layers", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
          "layer_types", "attention_bias", "mlp_bias", "use_bias", "bias", "n_inner", "ffn_hidden_size",
          "ffn_dim")
IDS = torch.randint(3, 96, (2, 16), generator=torch.Generator().manual_seed(7))

CHECK = textwrap.dedent("""
    import json, sys
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D
    work, kinds, fields = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    ids = torch.load(f"{work}/ids.pt")
    out = {}
    for kind in kinds:
        model = AutoModelForCausalLM.from_pretrained(f"{work}/{kind}").eval()
        expected = torch.load(f"{work}/expected-{kind}.pt")
        with torch.no_grad():
            logits = model(ids).logits
        weights = [m.weight for n, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear | Conv1D) and (".layers." in n or ".h." in n)]
        out[kind] = dict(
            equal=bool(logits.shape == expected.shape and torch.allclose(logits, expected, atol=1e-5)),
            max_diff=float((logits - expected).abs().max()) if logits.shape == expected.shape else None,
            parameters=model.num_parameters(),
            decoder_zeros=sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights),
            config={f: getattr(model.config, f) for f in fields if hasattr(model.config, f)},
            generated=model.generate(ids[:1, :4], max_new_tokens=3, min_new_tokens=3, do_sample=False).shape[1],
        )
    out["prunekit imported"] = "prunekit" in sys.modules
    print(json.dumps(out))
""")


def prune_and_reload(root, tokenizer, family: str, kinds: dict[str, dict], fields=FIELDS) -> dict[str, tuple]:
    """Each of `kinds` (name -> stage) run by prunekit.api.run on a tiny random `family` checkpoint, the outputs
    checked by one subprocess of stock transformers: {kind: ("ok", reloaded facts, report, dense config) |
    ("error", message, out exists)}."""
    corpus = root / "corpus.txt"
    if not corpus.exists():
        corpus.write_text(make_text(3000, seed=1))
    work = root / family
    source = work / "source"
    dense = tiny_model(family)
    dense.save_pretrained(source)
    tokenizer.save_pretrained(source)
    torch.save(IDS, work / "ids.pt")
    results: dict[str, tuple] = {}
    original_save = prunekit.api.save

    def save_and_record(loaded, out, report, *args, **kwargs):
        with torch.no_grad():  # the pruned in-memory model, just before prunekit writes it
            torch.save(loaded.model(IDS).logits, work / f"expected-{out.name}.pt")
        return original_save(loaded, out, report, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(prunekit.api, "save", save_and_record)
        patch.setenv("PRUNEKIT_CACHE", str(root / "cache"))
        for kind, stage in kinds.items():
            recipe = Recipe.parse(dict(
                model=str(source), device="cpu", stages=[stage], evaluation=dict(ppl=False),
                calibration=dict(source=str(corpus), samples=4, seq_len=32, batch_size=4)))
            try:
                report = run(recipe, work / kind)
            except PrunekitError as e:
                results[kind] = ("error", str(e), (work / kind).exists())
            else:
                dense_config = {f: getattr(dense.config, f) for f in fields if hasattr(dense.config, f)}
                results[kind] = ("ok", None, report, dense_config)
    ok = [k for k, r in results.items() if r[0] == "ok"]
    check = subprocess.run([sys.executable, "-c", CHECK, str(work), json.dumps(ok), json.dumps(fields)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr[-3000:]
    facts = json.loads(check.stdout.strip().splitlines()[-1])
    assert facts.pop("prunekit imported") is False
    for kind in ok:
        results[kind] = ("ok", facts[kind], *results[kind][2:])
    return results


@pytest.fixture(scope="module")
def family_outputs(tmp_path_factory, tokenizer):
    """family -> {kind: ("ok", reloaded facts, prunekit's report, dense config) | ("error", message, out exists)}."""
    root = tmp_path_factory.mktemp("families")
    done: dict[str, dict] = {}

    def outputs(family: str) -> dict:
        if family not in done:
            done[family] = prune_and_reload(root, tokenizer, family, KINDS)
        return done[family]

    return outputs


def _expected_config(family: str, kind: str, dense: dict) -> dict:
    attention_flag, mlp_flag = BIAS_FLAGS.get(family, ("attention_bias", "mlp_bias"))
    width_field = WIDTH_FIELD.get(family, "intermediate_size")
    layers, width, heads, kv = (dense.get(f) for f in ("num_hidden_layers", width_field, "num_attention_heads",
                                                        "num_key_value_heads"))
    kv = kv or heads  # no grouped-query attention
    expected = {
        "depth": {"num_hidden_layers": layers - 1},
        "width-mlp": {width_field: width * 3 // 4},
        "heads": {"num_attention_heads": 2, "num_key_value_heads": kv},
        "kv-heads": {"num_attention_heads": heads // kv, "num_key_value_heads": kv - 1},
        "flap-bias-mlp": {width_field: width * 3 // 4, mlp_flag: True},
        "flap-bias-attention": {"num_attention_heads": heads // kv, "num_key_value_heads": kv - 1,
                                attention_flag: True},
    }.get(kind, {"num_hidden_layers": layers, width_field: width, "num_attention_heads": heads})
    return {k: v for k, v in expected.items() if k is not None}


@pytest.mark.parametrize(("family", "kind"), [(f, k) for f in FAMILIES for k in KINDS],
                         ids=[f"{f}-{k}" for f in FAMILIES for k in KINDS])
def test_family_by_kind(family, kind, family_outputs):
    status, *rest = family_outputs(family)[kind]
    if (family, kind) in REFUSED:
        assert status == "error", f"{family} {kind} was expected to be refused"
        message, written = rest
        assert REFUSED[family, kind] in message and "\n" not in message, message
        assert not written
        return
    assert status == "ok", rest[0]
    facts, report, dense = rest
    assert facts["equal"], f"reloaded logits differ from the in-memory model's by {facts['max_diff']}"
    assert facts["parameters"] == report["parameters"] and facts["generated"] == 7
    for field, value in _expected_config(family, kind, dense).items():
        assert facts["config"][field] == value, field
    if family == "gemma2" and kind == "depth":
        assert len(facts["config"]["layer_types"]) == 2
    if kind in ("wanda-50%", "magnitude-2:4", "sparsegpt-50%"):
        assert facts["decoder_zeros"] == pytest.approx(0.5, abs=1e-3) == report["decoder_linear_sparsity"]
    else:
        assert facts["parameters"] < report["structure"]["dense_parameters"]


def test_cohere_with_qk_norm_refuses_heads_and_keeps_mlp_pruning():
    """Command R+ (use_qk_norm) has per-head q/k norm weights that head removal would have to slice."""
    calibration = torch.randint(3, 96, (4, 32), generator=torch.Generator().manual_seed(0))

    def model():
        torch.manual_seed(0)
        config = tiny_model("cohere").config
        config.use_qk_norm = True
        return AutoModelForCausalLM.from_config(config).eval()

    for part in ("heads", "kv-heads"):
        with pytest.raises(PrunekitError, match="use_qk_norm has per-head") as error:
            prune(model(), stages=[dict(method="wanda-sp", part=part, size=1 if part == "kv-heads" else 2)],
                  calibration=calibration, progress=False, cache_scores=False)
        assert "\n" not in str(error.value)
    pruned = model()
    prune(pruned, stages=[dict(method="wanda-sp", part="mlp", sparsity=0.25)], calibration=calibration,
          progress=False, cache_scores=False)
    assert pruned.config.intermediate_size == 96


def test_cli_refuses_olmo2_heads_in_one_line(tmp_path, tokenizer, capsys, monkeypatch):
    source = tmp_path / "tiny-olmo2"
    tiny_model("olmo2").save_pretrained(source)
    tokenizer.save_pretrained(source)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_text(3000, seed=1))
    out = tmp_path / "out"
    code, _, err = run_cli([*small_run(source, corpus, out), "--method", "wanda-sp", "--part", "heads", "--size", "2"],
                           capsys, monkeypatch)
    assert code == 2 and OLMO2_QK_NORM in err
    assert_one_line_error(err)
    assert not out.exists()
