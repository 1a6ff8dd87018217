"""Labelled-data loaders and the pretrained embedders (the latter only where their packages are already cached)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prunekit.assets.cache import cache_dir
from prunekit.assets.registry import Package
from prunekit.data import sources
from prunekit.data.sources import LabelledData, from_arrays, from_image_folder, load_dataset_spec
from prunekit.errors import PrunekitError


def test_from_arrays_features_defaults() -> None:
    data = from_arrays(np.random.rand(5, 3), [0, 1, 2, 1, 0])
    assert data.inputs.dtype == torch.float32 and data.inputs.shape == (5, 3)
    assert data.labels.dtype == torch.int64
    assert data.classes == ["0", "1", "2"]
    assert data.ids == [f"arrays-{i:05d}" for i in range(5)]
    assert data.mean is None and not data.is_image


def test_from_arrays_uint8_channels_last_images_are_normalised() -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(6, 8, 8, 3), dtype=np.uint8)
    data = from_arrays(images, torch.arange(6) % 2, classes=["a", "b"])
    assert data.inputs.shape == (6, 3, 8, 8) and data.is_image
    assert torch.allclose(data.inputs.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    restored = data.inputs * torch.tensor(data.std).view(1, 3, 1, 1) + torch.tensor(data.mean).view(1, 3, 1, 1)
    assert torch.allclose(restored * 255, torch.from_numpy(images).permute(0, 3, 1, 2).float(), atol=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(x=np.zeros((3, 2)), y=[0, 1]), "3 inputs but 2 labels"),
        (dict(x=np.zeros((2, 2)), y=[0, 1], ids=["a", "a"]), "not unique"),
        (dict(x=np.zeros((2, 2)), y=[0, 2], classes=["a", "b"]), "labels must lie in 0..1"),
        (dict(x=np.zeros((2, 2)), y=[0.5, 1.0]), "integer class indices"),
        (dict(x=np.zeros((2, 2)), y=[0, -1]), "labels must lie"),
        (dict(x=np.zeros(4), y=[0, 1, 0, 1]), "leading example axis"),
    ],
)
def test_from_arrays_rejects_bad_input(kwargs: dict, message: str) -> None:
    with pytest.raises(PrunekitError, match=message):
        from_arrays(**kwargs)


def test_unlabelled_data_is_allowed() -> None:
    data = from_arrays(torch.zeros(4, 2), classes=["x", "y"])
    assert data.labels is None and data.subset([1, 2]).labels is None


def test_subset_and_split() -> None:
    data = from_arrays(torch.arange(20, dtype=torch.float32).view(10, 2), torch.arange(10) % 3)
    sub = data.subset(torch.tensor([3, 1]))
    assert sub.ids == [data.ids[3], data.ids[1]] and sub.inputs[0, 0] == 6 and sub.labels.tolist() == [0, 1]
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[2, 5]] = True
    assert data.subset(mask).ids == [data.ids[2], data.ids[5]]
    with pytest.raises(PrunekitError, match="out of range"):
        data.subset([10])
    train, held = data.split(0.3, seed=1)
    assert len(train) == 7 and len(held) == 3 and not set(train.ids) & set(held.ids)
    again, _ = data.split(3, seed=1)
    assert again.ids == train.ids
    assert data.split(3, seed=2)[0].ids != train.ids
    with pytest.raises(PrunekitError, match="eval size"):
        data.split(10, seed=0)


def test_from_torch_dataset() -> None:
    class Pairs(torch.utils.data.Dataset):
        classes = ["neg", "pos"]

        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return torch.full((3,), float(i)), i % 2

    data = sources.from_torch(Pairs())
    assert data.inputs.shape == (4, 3) and data.labels.tolist() == [0, 1, 0, 1] and data.classes == ["neg", "pos"]
    with pytest.raises(PrunekitError, match=r"\(input, label\) pairs"):
        sources.from_torch(torch.utils.data.TensorDataset(torch.zeros(2, 3)))


def _write_image_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for c, n in (("cat", 3), ("dog", 2)):
        (root / c).mkdir(parents=True)
        for i in range(n):
            size = (10, 12) if (c, i) == ("dog", 1) else (8, 8)
            pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.{'jpg' if i == 2 else 'png'}")
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def test_image_folder(tmp_path: Path) -> None:
    data = from_image_folder(_write_image_folder(tmp_path / "pets"))
    assert data.classes == ["cat", "dog"] and data.labels.tolist() == [0, 0, 0, 1, 1]
    assert data.ids == ["cat/0.png", "cat/1.png", "cat/2.jpg", "dog/0.png", "dog/1.png"]
    assert data.inputs.shape == (5, 3, 8, 8)  # the odd-sized image is resized to the common size
    assert from_image_folder(tmp_path / "pets", size=16).inputs.shape == (5, 3, 16, 16)
    assert load_dataset_spec(str(tmp_path / "pets")).ids == data.ids


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(PrunekitError, match="not found"):
        from_image_folder(tmp_path / "missing")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(PrunekitError, match="no .png"):
        from_image_folder(tmp_path / "empty")
    root = _write_image_folder(tmp_path / "broken")
    (root / "dog" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(PrunekitError, match="cannot read image"):
        from_image_folder(root)


def test_digits_features_and_images() -> None:
    data = sources.digits()
    assert data.inputs.shape == (1797, 64) and 0 <= data.inputs.min() and data.inputs.max() <= 1
    assert torch.bincount(data.labels).tolist()[:3] == [178, 182, 177]
    images = sources.digits(as_images=True)
    assert images.inputs.shape == (1797, 1, 8, 8) and images.ids == data.ids and images.mean is not None
    assert load_dataset_spec("digits").ids == data.ids


def test_npz_spec(tmp_path: Path) -> None:
    path = tmp_path / "toy.npz"
    np.savez(path, x=np.ones((3, 2), np.float32), y=np.array([1, 0, 1]), ids=np.array(["a", "b", "c"]))
    data = load_dataset_spec(str(path))
    assert data.ids == ["a", "b", "c"] and data.labels.tolist() == [1, 0, 1] and data.name == "toy"
    np.savez(tmp_path / "nolabels.npz", x=np.ones((3, 2)))
    with pytest.raises(PrunekitError, match="lacks array y"):
        load_dataset_spec(str(tmp_path / "nolabels.npz"))
    np.savez(tmp_path / "objects.npz", x=np.array([[1], "a"], dtype=object), y=np.array([0, 1]))
    with pytest.raises(PrunekitError, match="without pickle|plain arrays"):
        load_dataset_spec(str(tmp_path / "objects.npz"))
    with pytest.raises(PrunekitError, match="not found: pass cifar10-test"):
        load_dataset_spec(str(tmp_path / "nothing.npz"))


def test_hf_images_features_and_text(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)) for _ in range(4)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["no", "yes"])})
    ds = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 1, 0]}, features=features)
    data = sources.from_hf(ds, "image", "label")
    assert data.inputs.shape == (4, 3, 6, 6) and data.classes == ["no", "yes"] and data.labels.tolist() == [0, 1, 1, 0]

    datasets.DatasetDict({"train": ds}).save_to_disk(tmp_path / "saved")
    assert load_dataset_spec(f"hf:{tmp_path / 'saved'}@train").labels.tolist() == [0, 1, 1, 0]
    with pytest.raises(PrunekitError, match="no split 'test'"):
        load_dataset_spec(f"hf:{tmp_path / 'saved'}@test")

    vectors = datasets.Dataset.from_dict({"x": [[0.0, 1.0], [1.0, 0.0]], "y": ["b", "a"]})
    data = sources.from_hf(vectors, "x", "y")
    assert data.inputs.shape == (2, 2) and data.classes == ["a", "b"] and data.labels.tolist() == [1, 0]

    texts = datasets.Dataset.from_dict({"text": ["hi", "yo"], "label": [0, 1]})
    with pytest.raises(PrunekitError, match="holds text"):
        sources.from_hf(texts, "text", "label")
    with pytest.raises(PrunekitError, match="no column 'image'"):
        sources.from_hf(texts, "image", "label")


def test_labelled_data_validates_directly() -> None:
    with pytest.raises(PrunekitError, match="2 inputs but 3 ids"):
        LabelledData(ids=["a", "b", "c"], inputs=torch.zeros(2, 1), labels=None, classes=[], name="t")


@pytest.mark.real
def test_cifar10_test_set() -> None:
    data = sources.cifar10_test()
    assert data.inputs.shape == (10_000, 3, 32, 32) and data.inputs.dtype == torch.float32
    assert torch.bincount(data.labels).tolist() == [1000] * 10
    assert bool((data.labels[:-1] <= data.labels[1:]).all())  # sorted by class
    assert data.ids[42] == "cifar10-test-00042" and data.classes[3] == "cat"
    assert data.inputs.mean().abs() < 0.1 and 0.9 < data.inputs.std() < 1.1
    with np.load(cache_dir() / "data" / "cifar10_test.npz", allow_pickle=False) as f:
        assert f["images"].dtype == np.uint8


# ----- embeddings: real weights, only when their packages are already in the cache -----


def _cached(package: Package) -> bool:
    return (cache_dir() / "packages" / f"{package.name}-{package.version}" / "VERIFIED").exists()


def test_mobilenet_architecture_matches_torchvision_keys() -> None:
    from prunekit.data.embed import MobileNetV2

    state = MobileNetV2().state_dict()
    assert sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k) == 3_504_872
    for key in ("features.0.0.weight", "features.1.conv.0.0.weight", "features.1.conv.2.running_var",
                "features.2.conv.3.weight", "features.18.1.bias", "classifier.1.weight"):
        assert key in state


@pytest.mark.real
def test_mobilenet_weights_and_image_embeddings() -> None:
    from prunekit.data import embed

    data = sources.cifar10_test().subset(torch.arange(0, 10_000, 50))  # 200 images, 20 per class
    vectors = embed.image_embeddings(data)
    assert vectors.shape == (200, 1280) and bool(torch.isfinite(vectors).all()) and bool((vectors >= 0).all())
    # Nearest neighbours in ImageNet feature space share the class far more often than chance (10%).
    unit = torch.nn.functional.normalize(vectors, dim=1)
    similarity = unit @ unit.T - 2 * torch.eye(200)
    assert (data.labels[similarity.argmax(1)] == data.labels).float().mean() > 0.4


@pytest.mark.real
def test_mobilenet_classifies_a_cat_photo() -> None:
    skimage_data = pytest.importorskip("skimage.data")
    from prunekit.data import embed

    if not _cached(embed.MOBILENET_PACKAGE):
        pytest.skip("MobileNetV2 weights are not cached")
    photo = torch.from_numpy(skimage_data.chelsea().copy()).permute(2, 0, 1)[None]
    data = from_arrays(photo.float() / 255, [0], classes=["cat"])
    with torch.no_grad():
        top = embed.mobilenet_v2()(embed.imagenet_input(data.inputs, data, 224)).argmax(1).item()
    assert 281 <= top <= 285  # ImageNet's domestic cats: tabby, tiger, Persian, Siamese, Egyptian


@pytest.mark.real
def test_text_embeddings() -> None:
    from prunekit.data import embed

    if not _cached(embed.MINILM_PACKAGE):
        pytest.skip("all-MiniLM-L6-v2 is not cached (prunekit fetches it on first use)")
    texts = ["A cat sits on the mat.", "The stock market fell sharply today.", "A kitten is sitting on a rug."]
    vectors = embed.text_embeddings(texts)
    assert vectors.shape == (3, 384) and torch.allclose(vectors.norm(dim=1), torch.ones(3), atol=1e-5)
    assert vectors[0] @ vectors[2] > vectors[0] @ vectors[1] + 0.3
    assert torch.allclose(embed.text_embeddings(texts[2:])[0], vectors[2], atol=1e-5)  # batching does not matter
