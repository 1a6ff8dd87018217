"""GGUF export: a saved prunekit / Hugging Face model directory as one file that llama.cpp (and transformers'
GGUF loader) runs.

What goes in, and why:
- Tensors named by the `gguf` library's own name map (`gguf.get_tensor_name_map`), never a table of ours, in
  f32, f16 or q8_0. As llama.cpp does, q8_0 quantizes the 2-D weights only (norms and biases stay f32) and keeps a
  matrix whose rows are not a multiple of the 32-value block in f16.
- llama.cpp's `llama` architecture rotates adjacent pairs of each head's query/key channels, Hugging Face's Llama
  rotates the two halves: the q/k rows are permuted per head as llama.cpp's converter does (transformers' GGUF
  loader undoes it). qwen2/qwen3 rotate halves in llama.cpp too, so their weights go as they are.
- Hyperparameters from the weights' actual shapes (blocks, widths, heads), checked against config.json, so a
  structurally pruned model (fewer blocks, a narrower MLP, fewer heads with an explicit `head_dim`) exports as is.
- The tokenizer from the directory's own tokenizer.json (byte-level BPE): tokens, token types, merges, special
  ids, the add-BOS flag, the chat template. Nothing assumes an original vocabulary, so a trimmed tokenizer works.
  llama.cpp also needs the pre-tokenizer's name (`tokenizer.ggml.pre`); its converter recognises a model by
  hashing the token ids of a fixed text, which a renumbered vocabulary would defeat, so we recognise the
  pre-tokenizer by its behaviour instead: the pieces it cuts a fixed text into, compared with reference
  pre-tokenizers built from the regexes transformers reads GGUF files with.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors import safe_open
from tokenizers import Regex, Tokenizer, pre_tokenizers
from tokenizers.pre_tokenizers import PreTokenizer

from prunekit.errors import PrunekitError

TYPES = ("f32", "f16", "q8_0")

# Families whose Hugging Face layout maps onto a llama.cpp architecture that this exporter writes and that
# transformers' GGUF loader reads back (the test oracle). Mistral is llama to llama.cpp (its converter does
# the same). Values are gguf.MODEL_ARCH member names.
FAMILIES = {"llama": "LLAMA", "mistral": "LLAMA", "qwen2": "QWEN2", "qwen3": "QWEN3"}
_PERMUTED_QK = {"LLAMA"}  # architectures whose rope pairs adjacent channels in llama.cpp

# A text that exercises what pre-tokenizers differ on: newlines and runs of spaces, digit runs, contractions,
# punctuation runs, emoji, CJK and Cyrillic (the same kinds of text llama.cpp's converter hashes).
_PROBE = ("\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ ✅ 🦙🦙 3 33 333 3333 33333 "
          "333333 3.3 3..3 3...3 ?我想在apple工作1314151天～ ------======= нещо на Български ''''''```````\"\"\"\""
          "......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like "
          "some tea? We'Ve a'lL HelloWorld x2y 1,000.5 ab12cd")
# The name llama.cpp knows a pre-tokenizer by, when several names share one regex: the ones its converter writes.
_PREFERRED_PRE = ("llama-bpe", "qwen2", "gpt-4o", "tekken", "qwen35")


@dataclass
class ExportResult:
    path: Path
    architecture: str
    type: str
    tensors: int
    bytes: int
    pre_tokenizer: str
    vocab_size: int
    notes: list[str] = field(default_factory=list)


@dataclass
class _Shapes:
    """The hyperparameters llama.cpp needs, read off the weights."""
    blocks: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int


@dataclass
class _Tensor:
    hf_name: str
    gguf_name: str
    shape: tuple[int, ...]
    qtype: gguf.GGMLQuantizationType
    handle: object  # the safetensors file it is read from


@dataclass
class _Vocab:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    special_ids: dict[str, int]
    add_bos: bool
    add_eos: bool
    chat_template: str | None


# ---------------------------------------------------------------------------------------------------------- input


def _read_config(model_dir: Path) -> dict:
    if not model_dir.exists():
        raise PrunekitError(f"{model_dir} does not exist: pass a saved model directory (e.g. a `prunekit prune` "
                            "output)")
    if not model_dir.is_dir():
        raise PrunekitError(f"{model_dir} is not a directory: pass a saved model directory (config.json, "
                            "*.safetensors, tokenizer.json)")
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except FileNotFoundError:
        raise PrunekitError(f"{model_dir} is not a model directory (no config.json in it)") from None
    except (OSError, ValueError) as e:
        raise PrunekitError(f"{model_dir}/config.json is not readable JSON ({e})") from None
    if not isinstance(config, dict):
        raise PrunekitError(f"{model_dir}/config.json is not a JSON object")
    return config


def _architecture(config: dict) -> str:
    family = str(config.get("model_type", "unknown"))
    if family not in FAMILIES:
        raise PrunekitError(f"GGUF export does not support the {family} family yet; supported: "
                            f"{', '.join(FAMILIES)}")
    return FAMILIES[family]


def _safetensor_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise PrunekitError(f"{model_dir} has no .safetensors weights: GGUF export reads safetensors only")
    return files


# -------------------------------------------------------------------------------------------------------- tensors


def _permute_rope_pairs(weight: np.ndarray, heads: int) -> np.ndarray:
    """Reorder each head's rows from Hugging Face's rotate-halves order (x0..x{d/2-1}, then the partners) to the
    adjacent pairs (x0, x{d/2}, x1, ...) that llama.cpp's `llama` rope rotates; works for weights and biases."""
    rows = weight.shape[0]
    half = rows // heads // 2
    return weight.reshape(heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _target_type(array_ndim: int, shape: tuple[int, ...], kind: str) -> gguf.GGMLQuantizationType:

    q = gguf.GGMLQuantizationType
    if array_ndim < 2 or kind == "f32":
        return q.F32  # norms and biases: tiny, and llama.cpp's kernels want them in f32
    if kind == "q8_0" and shape[-1] % gguf.GGML_QUANT_SIZES[q.Q8_0][0] == 0:
        return q.Q8_0
    return q.F16  # f16 asked, or a row that cannot be cut into q8_0 blocks


def _block_count(names: list[str]) -> int:
    return len({int(m.group(1)) for n in names if (m := re.search(r"\.layers\.(\d+)\.", n))})


def _plan_tensors(model_dir: Path, arch: str, tied: bool, kind: str, stack: ExitStack) -> list[_Tensor]:
    """Every tensor to write, with its GGUF name, shape and type; the weights themselves are read later."""
    handles = {}
    for file in _safetensor_files(model_dir):
        handle = stack.enter_context(safe_open(str(file), framework="pt"))
        handles.update({name: handle for name in handle.keys()})  # noqa: SIM118 - not iterable
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch], _block_count(list(handles)))
    plan: list[_Tensor] = []
    for hf_name, handle in handles.items():
        if tied and hf_name.startswith("lm_head."):
            continue  # llama.cpp reuses token_embd when output.weight is absent
        base, dot, suffix = hf_name.rpartition(".")
        gguf_base = name_map.get_name(base) if dot else None
        if gguf_base is None:
            if "rotary_emb" in hf_name:
                continue  # recomputed from rope_theta by every runtime
            raise PrunekitError(f"tensor {hf_name} of {model_dir} has no GGUF name for the {arch.lower()} "
                                "architecture: is this directory a standard checkpoint of its family?")
        shape = tuple(handle.get_slice(hf_name).get_shape())
        if suffix == "bias" and not handle.get_tensor(hf_name).any():
            # An all-zero bias (a llama with mlp_bias gets one on gate and up when FLAP compensates down_proj)
            # changes nothing; llama.cpp's biases are optional, and each one it loads is an add per token.
            continue
        plan.append(_Tensor(hf_name, f"{gguf_base}.{suffix}", shape, _target_type(len(shape), shape, kind), handle))
    return plan


def _load(tensor: _Tensor, arch: str, shapes: _Shapes) -> np.ndarray:
    """One tensor as float32, read only when it is written, so that one tensor at a time is in memory."""
    array = tensor.handle.get_tensor(tensor.hf_name).to(torch.float32).numpy()
    if arch in _PERMUTED_QK:
        if tensor.gguf_name.startswith("blk.") and ".attn_q." in tensor.gguf_name:
            array = _permute_rope_pairs(array, shapes.heads)
        elif tensor.gguf_name.startswith("blk.") and ".attn_k." in tensor.gguf_name:
            array = _permute_rope_pairs(array, shapes.kv_heads)
    return array


def _shapes(plan: list[_Tensor], config: dict) -> _Shapes:
    """Hyperparameters from the weights, checked against config.json (a mismatch means a broken directory)."""
    by_name = {t.gguf_name: t.shape for t in plan}
    layers = sorted({int(m.group(1)) for name in by_name if (m := re.match(r"blk\.(\d+)\.", name))})
    if not layers or layers != list(range(len(layers))):
        raise PrunekitError("the weights' decoder blocks are not numbered 0..N-1: not a loadable checkpoint")

    def per_layer(part: str, axis: int) -> int:
        sizes = {by_name[f"blk.{i}.{part}.weight"][axis] for i in layers if f"blk.{i}.{part}.weight" in by_name}
        if len(sizes) != 1:
            raise PrunekitError(f"the blocks' {part} weights differ in shape ({sorted(sizes)}): GGUF export "
                                "needs every block the same shape (prunekit's structured pruning keeps them so)")
        return sizes.pop()

    vocab, hidden = by_name["token_embd.weight"]
    heads = int(config.get("num_attention_heads", 0))
    head_dim = int(config.get("head_dim") or (hidden // heads if heads else 0))
    if head_dim <= 0:
        raise PrunekitError("config.json gives neither num_attention_heads nor head_dim")
    shapes = _Shapes(blocks=len(layers), hidden=hidden, ffn=per_layer("ffn_up", 0),
                     heads=per_layer("attn_q", 0) // head_dim, kv_heads=per_layer("attn_k", 0) // head_dim,
                     head_dim=head_dim, vocab=vocab)
    expected = {"num_hidden_layers": shapes.blocks, "hidden_size": shapes.hidden,
                "intermediate_size": shapes.ffn, "num_attention_heads": shapes.heads,
                "num_key_value_heads": shapes.kv_heads, "vocab_size": shapes.vocab}
    for key, actual in expected.items():
        if key in config and config[key] is not None and int(config[key]) != actual:
            raise PrunekitError(f"config.json says {key} = {config[key]} but the weights have {actual}: the "
                                "directory's config and weights disagree")
    return shapes


# ------------------------------------------------------------------------------------------------------ metadata


def _rope_theta(config: dict) -> float | None:
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    params = params.get("full_attention", params) if isinstance(params, dict) else {}
    theta = params.get("rope_theta", config.get("rope_theta"))
    return float(theta) if theta is not None else None


def _rope_scaling(writer: gguf.GGUFWriter, config: dict) -> None:

    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = params.get("rope_type", params.get("type")) if isinstance(params, dict) else None
    if rope_type in (None, "default"):
        return
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(params["factor"]))
        return
    raise PrunekitError(f"GGUF export does not handle rope_type {rope_type!r} yet (default and linear only)")


def _file_type(kind: str) -> int:

    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
            "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[kind]


def _write_hyperparameters(writer: gguf.GGUFWriter, config: dict, shapes: _Shapes, kind: str, name: str) -> list[str]:
    notes = []
    writer.add_type("model")
    writer.add_name(name)
    writer.add_block_count(shapes.blocks)
    if (context := config.get("max_position_embeddings")) is not None:
        writer.add_context_length(int(context))
    writer.add_embedding_length(shapes.hidden)
    writer.add_feed_forward_length(shapes.ffn)
    writer.add_head_count(shapes.heads)
    writer.add_head_count_kv(shapes.kv_heads)
    if config.get("head_dim") is not None:  # as llama.cpp's converter: only when the config states it
        writer.add_key_length(shapes.head_dim)
        writer.add_value_length(shapes.head_dim)
    writer.add_rope_dimension_count(shapes.head_dim)  # transformers reads a llama's head_dim from this key
    if (theta := _rope_theta(config)) is not None:
        writer.add_rope_freq_base(theta)
    _rope_scaling(writer, config)
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(shapes.vocab)
    writer.add_file_type(_file_type(kind))
    writer.add_quantization_version(_quant_version())
    window = config.get("sliding_window")
    if config.get("model_type") == "mistral" and window and window < int(config.get("max_position_embeddings", 0)):
        notes.append(f"sliding_window {window} is not stored: llama.cpp's llama architecture attends to the "
                     "whole context, so outputs differ past that many tokens")
    return notes


def _quant_version() -> int:

    return int(gguf.GGML_QUANT_VERSION)


# ----------------------------------------------------------------------------------------------------- tokenizer


def _bpe_merges(model: dict) -> list[str]:
    """Merges as "a b" strings; tokenizer.json stores either that or [a, b] pairs."""
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]


def _reference_pre_tokenizers() -> dict[str, PreTokenizer]:
    """Pre-tokenizers llama.cpp knows by name, built with the `tokenizers` library: GPT-2's byte-level regex,
    SmolLM's (digits split one by one first), and every Split regex transformers' GGUF reader knows."""

    def byte_level(use_regex: bool) -> PreTokenizer:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)

    references: dict[str, PreTokenizer] = {
        "gpt-2": byte_level(True),
        "smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level(True)]),
    }
    try:  # transformers' table of llama.cpp pre-tokenizer names and their regexes (private: may move)
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
    except ImportError:
        return references
    by_regex: dict[str, list[str]] = {}
    for pre_name, pattern in GGUF_PRE_TOKENIZER_SPLITS.items():
        by_regex.setdefault(pattern, []).append(pre_name)
    for pattern, names in by_regex.items():
        chosen = next((n for n in _PREFERRED_PRE if n in names), names[0])
        references[chosen] = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(pattern), behavior="isolated"), byte_level(False)])
    return references


def _pieces(pre_tokenizer: PreTokenizer, text: str) -> list[str]:
    return [piece for piece, _ in pre_tokenizer.pre_tokenize_str(text)]


def identify_pre_tokenizer(tokenizer_file: Path) -> str:
    """llama.cpp's name for the pre-tokenizer of `tokenizer_file`: the reference that cuts a probe text into the
    same pieces (independent of the vocabulary), or "default" with a warning."""

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    text = tokenizer.normalizer.normalize_str(_PROBE) if tokenizer.normalizer is not None else _PROBE
    if tokenizer.pre_tokenizer is not None:
        own = _pieces(tokenizer.pre_tokenizer, text)
        for pre_name, reference in _reference_pre_tokenizers().items():
            if _pieces(reference, text) == own:
                return pre_name
    warnings.warn(f"the pre-tokenizer of {tokenizer_file} matches none llama.cpp knows by name: writing "
                  "tokenizer.ggml.pre = 'default', so llama.cpp may split some text differently", stacklevel=2)
    return "default"


def _read_vocab(model_dir: Path, vocab_size: int) -> _Vocab:
    from transformers import AutoTokenizer

    path = model_dir / "tokenizer.json"
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError:
        raise PrunekitError(f"{model_dir} has no tokenizer.json: GGUF export needs the fast tokenizer's file") \
            from None
    except (OSError, ValueError) as e:
        raise PrunekitError(f"{path} is not readable JSON ({e})") from None
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise PrunekitError(f"{path} is not a byte-level BPE tokenizer (model {model.get('type')}): GGUF export "
                            "writes GPT-2 style tokenizers only for now")
    by_id: dict[int, str] = {int(i): t for t, i in model["vocab"].items()}
    types = {i: int(gguf.TokenType.NORMAL) for i in by_id}
    for added in spec.get("added_tokens", []):
        i = int(added["id"])
        by_id[i] = added["content"]
        types[i] = int(gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED)
    if max(by_id) >= vocab_size:
        raise PrunekitError(f"the tokenizer has token id {max(by_id)} but the embedding only {vocab_size} rows: "
                            "the tokenizer and the weights do not belong together")
    # Rows the tokenizer never produces (embeddings padded to a round size) get placeholder names, as llama.cpp's
    # converter writes them; llama.cpp needs one token per embedding row.
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    token_types = [types.get(i, int(gguf.TokenType.UNUSED)) for i in range(vocab_size)]

    hf = AutoTokenizer.from_pretrained(model_dir)
    special = {name: getattr(hf, f"{name}_token_id") for name in ("bos", "eos", "unk", "pad")}
    encoded = hf("a", add_special_tokens=True)["input_ids"]
    return _Vocab(tokens=tokens, types=token_types, merges=_bpe_merges(model), pre=identify_pre_tokenizer(path),
                  special_ids={k: int(v) for k, v in special.items() if v is not None},
                  add_bos=bool(encoded) and special["bos"] is not None and encoded[0] == special["bos"],
                  add_eos=bool(encoded) and special["eos"] is not None and encoded[-1] == special["eos"],
                  chat_template=hf.chat_template if isinstance(hf.chat_template, str) else None)


def _write_vocab(writer: gguf.GGUFWriter, vocab: _Vocab) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "unk": writer.add_unk_token_id,
              "pad": writer.add_pad_token_id}
    for name, token_id in vocab.special_ids.items():
        adders[name](token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


# ------------------------------------------------------------------------------------------------------- writing


def _nbytes(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> int:

    return int(np.prod(gguf.quants.quant_shape_to_byte_shape(shape, qtype)))


def _encode(array: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:

    return gguf.quants.quantize(array, qtype)


def _tensor_data(plan: list[_Tensor], arch: str, shapes: _Shapes, progress: bool) -> Iterator[np.ndarray]:
    from prunekit.progress import progress_bar

    with progress_bar() as bar:
        task = bar.add_task("writing GGUF tensors", total=len(plan), visible=progress)
        for tensor in plan:
            yield _encode(_load(tensor, arch, shapes), tensor.qtype)
            bar.advance(task)


def export_gguf(model_dir: Path | str, out: Path | str, type: str = "f16", overwrite: bool = False,
                progress: bool = True) -> ExportResult:
    """Write the model directory `model_dir` as the GGUF file `out` (atomically: a temporary sibling renamed into
    place). `type`: f32 (exact), f16, or q8_0 (2-D weights; norms and biases stay f32)."""

    from prunekit.outputs import atomic_file, check_output

    if type not in TYPES:
        raise PrunekitError(f"unknown GGUF type {type!r}: use {', '.join(TYPES)}")
    model_dir, out = Path(model_dir).expanduser(), Path(out).expanduser()
    config = _read_config(model_dir)
    arch = _architecture(config)
    check_output(out, overwrite, [model_dir], kind="file")
    tied = bool(config.get("tie_word_embeddings", True))
    with ExitStack() as stack:
        plan = _plan_tensors(model_dir, arch, tied, type, stack)
        shapes = _shapes(plan, config)
        vocab = _read_vocab(model_dir, shapes.vocab)
        name = str(config.get("_name_or_path") or config.get("_model_name_or_path") or model_dir.name)
        with atomic_file(out, overwrite, [model_dir]) as tmp:
            writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[arch]])
            notes = _write_hyperparameters(writer, config, shapes, type, Path(name).name or model_dir.name)
            _write_vocab(writer, vocab)
            for tensor in plan:
                writer.add_tensor_info(tensor.gguf_name, tensor.shape, np.dtype(np.float32),
                                       _nbytes(tensor.shape, tensor.qtype), raw_dtype=tensor.qtype)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for data in _tensor_data(plan, arch, shapes, progress):
                writer.write_tensor_data(data)
            writer.close()
            size = tmp.stat().st_size
    return ExportResult(path=out, architecture=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[arch]], type=type,
                        tensors=len(plan), bytes=size, pre_tokenizer=vocab.pre, vocab_size=shapes.vocab,
                        notes=notes)
