"""Tiny randomly initialised models of every supported family, a tiny tokenizer and a little text."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    CohereConfig,
    FalconConfig,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    GPTBigCodeConfig,
    GPTNeoXConfig,
    GptOssConfig,
    GraniteConfig,
    GraniteMoeConfig,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    Olmo2Config,
    OlmoeConfig,
    OPTConfig,
    Phi3Config,
    PhiConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2MoeConfig,
    Qwen3Config,
    Qwen3MoeConfig,
    StableLmConfig,
    Starcoder2Config,
)

VOCAB = 96
_COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
_TOKENS = dict(bos_token_id=1, eos_token_id=2)  # the newer families' defaults lie outside the tiny vocabulary

CONFIGS = {
    "llama": lambda: LlamaConfig(**_COMMON),
    "mistral": lambda: MistralConfig(**_COMMON),
    "qwen2": lambda: Qwen2Config(**_COMMON),
    "qwen3": lambda: Qwen3Config(**_COMMON, head_dim=16),
    "gemma3_text": lambda: Gemma3TextConfig(
        **{**_COMMON, "num_hidden_layers": 3}, head_dim=16, sliding_window=8,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    ),
    "opt": lambda: OPTConfig(vocab_size=VOCAB, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                             num_attention_heads=4, word_embed_proj_dim=64, max_position_embeddings=256),
    "gemma2": lambda: Gemma2Config(
        **{**_COMMON, "num_hidden_layers": 3}, **_TOKENS, head_dim=16, sliding_window=8,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    ),
    "olmo2": lambda: Olmo2Config(**_COMMON, **_TOKENS),
    "granite": lambda: GraniteConfig(**_COMMON, **_TOKENS, embedding_multiplier=2.0, residual_multiplier=0.5,
                                     attention_multiplier=0.25, logits_scaling=2.0),
    "stablelm": lambda: StableLmConfig(**_COMMON, **_TOKENS, use_qkv_bias=True),
    "starcoder2": lambda: Starcoder2Config(**_COMMON, **_TOKENS),  # use_bias on, as in the released models
    "cohere": lambda: CohereConfig(**_COMMON, **_TOKENS),
    "phi": lambda: PhiConfig(**_COMMON, **_TOKENS),
    "phi3": lambda: Phi3Config(**_COMMON, **_TOKENS),
    "gpt_neox": lambda: GPTNeoXConfig(**{k: v for k, v in _COMMON.items() if k != "num_key_value_heads"}, **_TOKENS),
    "gpt2": lambda: GPT2Config(vocab_size=VOCAB, n_embd=64, n_inner=128, n_layer=2, n_head=4, n_positions=256,
                               **_TOKENS),
    "gpt_bigcode": lambda: GPTBigCodeConfig(vocab_size=VOCAB, n_embd=64, n_inner=128, n_layer=2, n_head=4,
                                            n_positions=256, multi_query=True, **_TOKENS),
    "falcon": lambda: FalconConfig(vocab_size=VOCAB, hidden_size=64, ffn_hidden_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, max_position_embeddings=256, **_TOKENS),
}
# Mixture-of-experts families: 6 experts, 2 per token, experts narrower than the dense MLP.
_EXPERTS = dict(num_experts_per_tok=2)
MOE_CONFIGS = {
    "mixtral": lambda: MixtralConfig(**_COMMON, **_EXPERTS, num_local_experts=6),
    "qwen2_moe": lambda: Qwen2MoeConfig(**_COMMON, **_EXPERTS, num_experts=6, moe_intermediate_size=32,
                                        shared_expert_intermediate_size=64),
    "qwen3_moe": lambda: Qwen3MoeConfig(**_COMMON, **_EXPERTS, head_dim=16, num_experts=6, moe_intermediate_size=32),
    "olmoe": lambda: OlmoeConfig(**{**_COMMON, "intermediate_size": 32}, **_TOKENS, **_EXPERTS, num_experts=6),
    "granitemoe": lambda: GraniteMoeConfig(**{**_COMMON, "intermediate_size": 32}, **_TOKENS, **_EXPERTS,
                                           num_local_experts=6),
    "gpt_oss": lambda: GptOssConfig(**{**_COMMON, "intermediate_size": 32}, **_TOKENS, **_EXPERTS, head_dim=16,
                                    num_local_experts=6, sliding_window=8,
                                    layer_types=["sliding_attention", "full_attention"]),
}
CONFIGS.update(MOE_CONFIGS)

WORDS = ("the river city north old stone bridge was built in year people market king church small large "
         "green house road water mountain winter summer light music school book war peace ship island").split()


def tiny_model(family: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = CONFIGS[family]()
    config.pad_token_id = 0
    return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def make_text(n_words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    sentences = []
    while n_words > 0:
        length = rng.randint(5, 14)
        sentences.append(" ".join(rng.choice(WORDS) for _ in range(length)).capitalize() + ".")
        n_words -= length
    return " ".join(sentences)


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "<unk>", "</s>"])
    tok.train_from_iterator([make_text(5000, s) for s in range(3)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")


@pytest.fixture()
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(make_text(20000, seed=1))
    return path


@pytest.fixture()
def tiny_model_dir(tmp_path: Path, tokenizer: PreTrainedTokenizerFast) -> Path:
    path = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unit tests never touch the user's cache; tests marked `real` use it, so weights are fetched once."""
    if request.node.get_closest_marker("real") is None:
        monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
