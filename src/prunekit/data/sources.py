"""Labelled datasets for data pruning: one in-memory container and loaders for arrays, torch and HF datasets,
image folders, the offline CIFAR-10 test set and scikit-learn's digits.

Everything is loaded whole into one float32 tensor: the datasets data pruning is studied on fit in memory, and
training dynamics need every example scored every epoch, so random access must be cheap. Images are stored as
[N, C, H, W], scaled to [0, 1] and then normalised per channel; the mean and std used are kept on the container so
that consumers needing raw pixels (the MobileNet embedder) can undo the normalisation.
"""

from __future__ import annotations

import base64
import io
import json
import os
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunekit.assets.cache import cache_dir
from prunekit.assets.fetch import copy_member, fetch_package
from prunekit.assets.registry import BIGBENCH
from prunekit.errors import PrunekitError
from prunekit.files import first_line

CIFAR10_MEMBER = "bigbench-1.0.0/bigbench/benchmark_tasks/cifar10_classification/base64/task.json"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# The usual CIFAR-10 statistics (of the training set), so our normalisation matches common practice.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPEC_HELP = "cifar10-test, digits, an image folder, a .npz file with x and y, or hf:NAME[:CONFIG][@SPLIT]"


@dataclass
class LabelledData:
    """A dataset held in memory. `mean`/`std` are the per-channel normalisation of images (None for features)."""

    ids: list[str]
    inputs: torch.Tensor
    labels: torch.Tensor | None
    classes: list[str]
    name: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        _validate(self)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def is_image(self) -> bool:
        return self.inputs.dim() == 4

    def subset(self, index: torch.Tensor | Sequence[int]) -> LabelledData:
        """The examples at `index` (integer positions or a boolean mask), in that order."""
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            if index.numel() != len(self):
                raise PrunekitError(f"a mask of {index.numel()} entries cannot select from {len(self)} examples")
            index = index.nonzero().flatten()
        index = index.long().flatten()
        if index.numel() and (index.min() < 0 or index.max() >= len(self)):
            raise PrunekitError(f"subset index out of range for {len(self)} examples")
        labels = None if self.labels is None else self.labels[index]
        return replace(self, ids=[self.ids[i] for i in index.tolist()], inputs=self.inputs[index], labels=labels)

    def split(self, eval_size: int | float, seed: int) -> tuple[LabelledData, LabelledData]:
        """(train, eval) after a seeded shuffle; `eval_size` is a count or a fraction of the examples."""
        n_eval = round(eval_size * len(self)) if isinstance(eval_size, float) else int(eval_size)
        if not 0 < n_eval < len(self):
            raise PrunekitError(f"eval size {eval_size} leaves no train or no eval examples out of {len(self)}")
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        return self.subset(order[n_eval:]), self.subset(order[:n_eval])


def _validate(data: LabelledData) -> None:
    n = len(data.ids)
    if data.inputs.shape[0] != n:
        raise PrunekitError(f"dataset {data.name!r}: {data.inputs.shape[0]} inputs but {n} ids")
    if len(set(data.ids)) != n:
        duplicate = next(i for i, c in Counter(data.ids).items() if c > 1)
        raise PrunekitError(f"dataset {data.name!r}: example ids are not unique ({duplicate!r} repeats)")
    if data.labels is None:
        return
    if data.labels.shape != (n,):
        raise PrunekitError(f"dataset {data.name!r}: {tuple(data.labels.shape)} labels for {n} examples")
    if n and (data.labels.min() < 0 or data.labels.max() >= len(data.classes)):
        raise PrunekitError(f"dataset {data.name!r}: labels must lie in 0..{len(data.classes) - 1} (one per class)")


def from_arrays(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor | Sequence[int] | None = None,
    ids: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    name: str = "arrays",
) -> LabelledData:
    """A dataset from arrays. uint8 inputs are taken as images ([N, H, W], [N, H, W, C] or [N, C, H, W]) and
    normalised per channel by their own statistics; float inputs are used as they are (features or images)."""
    inputs = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    mean = std = None
    if inputs.dtype == torch.uint8:
        inputs, mean, std = normalise_images(_channels_first(inputs))
    elif inputs.is_floating_point() or inputs.dtype in (torch.int16, torch.int32, torch.int64):
        inputs = inputs.float()
    else:
        raise PrunekitError(f"inputs of dtype {inputs.dtype} are not supported: pass floats or uint8 images")
    if inputs.dim() < 2:
        raise PrunekitError(f"inputs need a leading example axis and features, got shape {tuple(inputs.shape)}")
    labels = None if y is None else _labels(y)
    if labels is not None and labels.numel() != inputs.shape[0]:
        raise PrunekitError(f"{inputs.shape[0]} inputs but {labels.numel()} labels")
    if classes is None:
        classes = [str(c) for c in range(int(labels.max()) + 1 if labels is not None and labels.numel() else 0)]
    return LabelledData(
        ids=list(ids) if ids is not None else default_ids(name, inputs.shape[0]),
        inputs=inputs,
        labels=labels,
        classes=list(classes),
        name=name,
        mean=mean,
        std=std,
    )


def default_ids(name: str, n: int) -> list[str]:
    width = max(5, len(str(n - 1)))
    return [f"{name}-{i:0{width}d}" for i in range(n)]


def _labels(y: np.ndarray | torch.Tensor | Sequence[int]) -> torch.Tensor:
    labels = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise PrunekitError(f"labels must be integer class indices, got dtype {labels.dtype}")
    return labels.long().flatten()


def _channels_first(images: torch.Tensor) -> torch.Tensor:
    if images.dim() == 3:  # grayscale [N, H, W]
        return images.unsqueeze(1)
    if images.dim() != 4:
        raise PrunekitError(f"uint8 images must be [N, H, W], [N, H, W, C] or [N, C, H, W], got {tuple(images.shape)}")
    if images.shape[-1] in (1, 3, 4) and images.shape[1] not in (1, 3, 4):
        return images.permute(0, 3, 1, 2).contiguous()
    return images


def normalise_images(
    images: torch.Tensor,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> tuple[torch.Tensor, tuple[float, ...], tuple[float, ...]]:
    """uint8 [N, C, H, W] to float32 in [0, 1], then normalised per channel (by the data's own statistics unless
    `mean` and `std` are given). Returns the images and the mean and std used."""
    x = images.float().div_(255)
    if mean is None or std is None:
        mean = x.mean(dim=(0, 2, 3)).tolist()
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()
    shape = (1, -1, 1, 1)
    x.sub_(torch.tensor(mean).view(shape)).div_(torch.tensor(std).view(shape))
    return x, tuple(float(m) for m in mean), tuple(float(s) for s in std)


def from_torch(dataset: torch.utils.data.Dataset, name: str = "torch") -> LabelledData:
    """A dataset from a map-style torch Dataset yielding (input, label) pairs; inputs may be tensors, arrays or PIL
    images (uint8 images are normalised as in `from_arrays`). Class names come from `dataset.classes` if present."""
    try:
        pairs = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
    except TypeError:
        raise PrunekitError("from_torch needs a map-style dataset with __len__ and __getitem__") from None
    if not pairs:
        raise PrunekitError("the torch dataset is empty")
    if not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in pairs):
        raise PrunekitError("the torch dataset must yield (input, label) pairs")
    xs = [_as_array(x) for x, _ in pairs]
    if len({x.shape for x in xs}) > 1:
        raise PrunekitError(f"the torch dataset's inputs differ in shape ({xs[0].shape} vs others): resize them first")
    labels = [int(torch.as_tensor(y).item()) for _, y in pairs]
    classes = getattr(dataset, "classes", None)
    return from_arrays(np.stack(xs), labels, classes=list(classes) if classes else None, name=name)


def _as_array(x: Any) -> np.ndarray:  # noqa: ANN401 - a dataset may yield any array-like
    if isinstance(x, torch.Tensor):
        return x.numpy()
    if hasattr(x, "convert") and hasattr(x, "size"):  # a PIL image
        return np.asarray(x.convert("RGB"))
    return np.asarray(x)


def from_hf(
    dataset_or_path: Any,  # noqa: ANN401 - a datasets.Dataset, DatasetDict, or a folder path
    input_column: str = "image",
    label_column: str = "label",
    split: str = "train",
) -> LabelledData:
    """A dataset from Hugging Face `datasets`: a Dataset/DatasetDict object or a `save_to_disk` folder. The input
    column holds images (decoded with PIL) or numeric feature vectors; text columns are not supported here."""
    dataset, name = _open_hf(dataset_or_path, split)
    for column in (input_column, label_column):
        if column not in dataset.column_names:
            raise PrunekitError(
                f"dataset {name!r} has no column {column!r}; its columns are {', '.join(dataset.column_names)}"
            )
    values = dataset[input_column]
    if values and isinstance(values[0], str):
        raise PrunekitError(
            f"column {input_column!r} holds text, which from_hf does not load: embed the texts with "
            "prunekit.data.embed.text_embeddings and pass the vectors to from_arrays"
        )
    if values and hasattr(values[0], "convert"):
        return _hf_images(values, dataset, label_column, name)
    x = np.asarray(values)
    if x.dtype == object:
        raise PrunekitError(f"column {input_column!r} holds inputs of differing shapes: resize or pad them first")
    labels, classes = _hf_labels(dataset, label_column)
    return from_arrays(x, labels, classes=classes, name=name)


def _open_hf(dataset_or_path: Any, split: str) -> tuple[Any, str]:  # noqa: ANN401 - duck-typed datasets objects
    try:
        import datasets
    except ImportError:
        raise PrunekitError("HF datasets need the datasets package: pip install 'prunekit[datasets]'") from None
    if isinstance(dataset_or_path, (str, Path)):
        path = Path(dataset_or_path).expanduser()
        if not path.is_dir():
            raise PrunekitError(f"{path} is not a folder written by datasets' save_to_disk")
        try:
            dataset_or_path = datasets.load_from_disk(str(path))
        except Exception as e:  # noqa: BLE001 - any unreadable folder is the user's to fix
            raise PrunekitError(f"could not load dataset folder {path}: {str(e).splitlines()[0]}") from None
        name = path.name
    else:
        name = getattr(getattr(dataset_or_path, "info", None), "dataset_name", None) or "hf"
    if isinstance(dataset_or_path, datasets.DatasetDict):
        if split not in dataset_or_path:
            raise PrunekitError(f"dataset {name!r} has no split {split!r}; its splits are {', '.join(dataset_or_path)}")
        dataset_or_path = dataset_or_path[split]
    if not isinstance(dataset_or_path, datasets.Dataset):
        raise PrunekitError(f"expected a datasets.Dataset or DatasetDict, got {type(dataset_or_path).__name__}")
    return dataset_or_path, name


def _hf_labels(dataset: Any, column: str) -> tuple[list[int], list[str] | None]:  # noqa: ANN401
    values = dataset[column]
    if any(v is None for v in values):
        raise PrunekitError(f"column {column!r} has missing labels")
    names = getattr(dataset.features.get(column), "names", None)
    if values and isinstance(values[0], str):  # string labels: classes in sorted order
        names = sorted(set(values))
        index = {c: i for i, c in enumerate(names)}
        values = [index[v] for v in values]
    return values, names


def _hf_images(images: list, dataset: Any, label_column: str, name: str) -> LabelledData:  # noqa: ANN401
    labels, classes = _hf_labels(dataset, label_column)
    x, mean, std = normalise_images(_stack_images([_rgb(im) for im in images], size=None))
    return LabelledData(
        ids=default_ids(name, len(labels)),
        inputs=x,
        labels=torch.tensor(labels, dtype=torch.long),
        classes=classes or [str(c) for c in range(max(labels) + 1)],
        name=name,
        mean=mean,
        std=std,
    )


def _rgb(image: Any) -> Any:  # noqa: ANN401 - a PIL image
    return image if image.mode == "RGB" else image.convert("RGB")


def _stack_images(images: list, size: int | tuple[int, int] | None) -> torch.Tensor:
    """PIL images to uint8 [N, 3, H, W]; all are resized to `size` (H, W) if given, else to the most common size
    when they differ."""
    from PIL import Image

    if size is None:
        size = Counter(im.size[::-1] for im in images).most_common(1)[0][0]
    elif isinstance(size, int):
        size = (size, size)
    height, width = size
    arrays = [
        np.asarray(im if im.size == (width, height) else im.resize((width, height), Image.Resampling.BILINEAR))
        for im in images
    ]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def from_image_folder(path: str | Path, size: int | tuple[int, int] | None = None) -> LabelledData:
    """Images in class subfolders (`path/CLASS/*.png|jpg`, as torchvision's ImageFolder), classes sorted by name.
    All images are resized to `size` if given, else to their most common size when sizes differ. Ids are the
    files' paths relative to `path`."""
    from PIL import Image, UnidentifiedImageError

    root = Path(path).expanduser()
    if not root.is_dir():
        raise PrunekitError(f"image folder {root} not found")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = [
        (f, label)
        for label, c in enumerate(classes)
        for f in sorted((root / c).rglob("*"))
        if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
    ]
    if not files:
        raise PrunekitError(f"no {'/'.join(IMAGE_SUFFIXES)} images in class subfolders of {root}")
    images = []
    for f, _ in files:
        try:
            with Image.open(f) as im:
                images.append(_rgb(im))
                images[-1].load()
        except (UnidentifiedImageError, OSError) as e:
            raise PrunekitError(f"cannot read image {f}: {e}") from None
    x, mean, std = normalise_images(_stack_images(images, size))
    return LabelledData(
        ids=[f.relative_to(root).as_posix() for f, _ in files],
        inputs=x,
        labels=torch.tensor([label for _, label in files], dtype=torch.long),
        classes=classes,
        name=root.name,
        mean=mean,
        std=std,
    )


def cifar10_test() -> LabelledData:
    """The CIFAR-10 test set (10,000 32x32 images, 1,000 per class, sorted by class; shuffle before splitting),
    from the BIG-bench sdist. Decoded once into a compact .npz in the cache."""
    path = cache_dir() / "data" / "cifar10_test.npz"
    if not path.exists():
        _write_npz(path, *_decode_cifar10())
    try:
        with np.load(path, allow_pickle=False) as f:
            images, labels = f["images"], f["labels"]
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise PrunekitError(f"the cached {path} is damaged ({first_line(e)}): delete it and rerun") from None
    x, mean, std = normalise_images(torch.from_numpy(images), CIFAR10_MEAN, CIFAR10_STD)
    return LabelledData(
        ids=[f"cifar10-test-{i:05d}" for i in range(len(labels))],
        inputs=x,
        labels=torch.from_numpy(labels).long(),
        classes=list(CIFAR10_CLASSES),
        name="cifar10-test",
        mean=mean,
        std=std,
    )


def _decode_cifar10() -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, 3, 32, 32] and int64 labels from the task's examples: a base64 PNG `input` and
    one-hot `target_scores` keyed by class name."""
    from PIL import Image

    buffer = io.BytesIO()
    copy_member(fetch_package(BIGBENCH), CIFAR10_MEMBER, buffer)
    examples = json.loads(buffer.getvalue())["examples"]
    index = {c: i for i, c in enumerate(CIFAR10_CLASSES)}
    images = np.empty((len(examples), 3, 32, 32), dtype=np.uint8)
    labels = np.empty(len(examples), dtype=np.int64)
    for i, example in enumerate(examples):
        with Image.open(io.BytesIO(base64.b64decode(example["input"]))) as im:
            images[i] = np.asarray(im.convert("RGB")).transpose(2, 0, 1)
        scores = example["target_scores"]
        labels[i] = index[max(scores, key=scores.get)]
    return images, labels


def _write_npz(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(tmp, "wb") as f:  # a file object, so numpy does not append its own suffix
            np.savez(f, images=images, labels=labels)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def digits(as_images: bool = False) -> LabelledData:
    """scikit-learn's 1,797 handwritten digits (8x8, 10 classes). By default flat features [N, 64] scaled to
    [0, 1], for the MLP; with `as_images`, [N, 1, 8, 8] normalised like other images."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = bunch.images.astype(np.float32) / 16.0
    if as_images:
        images = torch.from_numpy(np.round(pixels * 255).astype(np.uint8)).unsqueeze(1)
        x, mean, std = normalise_images(images)
    else:
        x, mean, std = torch.from_numpy(pixels.reshape(len(pixels), -1)), None, None
    return LabelledData(
        ids=[f"digits-{i:05d}" for i in range(len(x))],
        inputs=x,
        labels=torch.from_numpy(bunch.target).long(),
        classes=[str(c) for c in range(10)],
        name="digits",
        mean=mean,
        std=std,
    )


def from_npz(path: str | Path) -> LabelledData:
    """A .npz with `x` and `y`, and optionally `ids` (strings) and `classes` (strings); read without pickle."""
    path = Path(path).expanduser()
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # empty, truncated or damaged archives
        raise PrunekitError(f"cannot read {path} as an .npz of plain arrays: {first_line(e)}") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise PrunekitError(f"{path} lacks array {' and '.join(missing)}: it holds {', '.join(arrays) or 'nothing'}")
    ids = [str(i) for i in arrays["ids"]] if "ids" in arrays else None
    classes = [str(c) for c in arrays["classes"]] if "classes" in arrays else None
    return from_arrays(arrays["x"], arrays["y"], ids=ids, classes=classes, name=path.stem)


def load_dataset_spec(spec: str, input_column: str = "image", label_column: str = "label") -> LabelledData:
    """The dataset a CLI argument names: cifar10-test, digits, an image folder, a .npz with x and y, or
    hf:NAME[:CONFIG][@SPLIT] (a hub dataset or a save_to_disk folder; split defaults to train)."""
    if spec == "cifar10-test":
        return cifar10_test()
    if spec == "digits":
        return digits()
    if spec.startswith("hf:"):
        return _hf_spec(spec[3:], input_column, label_column)
    path = Path(spec).expanduser()
    if path.is_dir():
        return from_image_folder(path)
    if path.suffix == ".npz" and path.is_file():
        return from_npz(path)
    raise PrunekitError(f"dataset {spec!r} not found: pass {SPEC_HELP}")


def _hf_spec(spec: str, input_column: str, label_column: str) -> LabelledData:
    name, _, split = spec.partition("@")
    name, _, config = name.partition(":")
    split = split or "train"
    if Path(name).expanduser().is_dir():
        return from_hf(name, input_column, label_column, split)
    try:
        import datasets
    except ImportError:
        raise PrunekitError("hf: datasets need the datasets package: pip install 'prunekit[datasets]'") from None
    try:
        dataset = datasets.load_dataset(name, config or None, split=split)
    except Exception as e:  # noqa: BLE001 - any failure of the hub or the files is the user's to fix
        raise PrunekitError(f"could not load dataset {spec!r}: {str(e).splitlines()[0]}") from None
    return from_hf(dataset, input_column, label_column, split)
