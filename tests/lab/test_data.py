"""Data loaders: Fashion-MNIST splits from the Debian package, CIFAR-10 and ImageFolder from local trees."""

import os
import pickle

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
from PIL import Image

from haste.preprocess import InputSpec, preprocess
from haste_lab.data import FASHION_MNIST_DIR, cifar10, fashion_mnist, image_folder
from haste_lab.data.fashion_mnist import CALIBRATION_SIZE

CIFAR_SPEC = InputSpec(mode="RGB", mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))


def write_cifar10(root, per_batch: int = 4, seed: int = 0):
    """A tiny ``cifar-10-batches-py`` (the pickled python version) under ``root``: five training
    batches and a test batch of ``per_batch`` random images each, and the label names."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {
            "data": rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8),
            "labels": [int(v) for v in rng.integers(0, 10, per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    labels = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": labels}))
    return root


@pytest.fixture
def generated_cifar10(tmp_path, monkeypatch):
    """A generated CIFAR-10 root; torchvision's md5 check of the real files is relaxed to existence."""
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    return write_cifar10(tmp_path)


def write_image_folder(root, classes=("cat", "dog"), per_class: int = 2, size=(40, 30)):
    """``root/<class>/<i>.png`` with random RGB images."""
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_image_folder_scales_16_bit_grayscale(tmp_path):
    """A 16-bit grayscale file (value * 257) reads as its 8-bit original, not clipped to white."""
    pixels = np.random.default_rng(1).integers(0, 256, (30, 40), dtype=np.uint8)
    for name, image in (
        ("eight", Image.fromarray(pixels)),
        ("sixteen", Image.fromarray(pixels.astype(np.uint16) * 257)),
    ):
        (tmp_path / name / "x").mkdir(parents=True)
        image.save(tmp_path / name / "x" / "0.png")
    spec = InputSpec(mode="L", resize=28, crop=28, pad=2)
    eight, sixteen = (
        image_folder(tmp_path / name, transform=lambda im: preprocess(im, spec))[0][0] for name in ("eight", "sixteen")
    )
    assert torch.equal(eight, sixteen)


def test_fashion_mnist_splits():
    test_x, test_y = fashion_mnist("test")
    calib_x, calib_y = fashion_mnist("calibration")
    train_x, train_y = fashion_mnist("train")
    full_x, _ = fashion_mnist("train-full")
    assert test_x.shape == (10000, 28, 28) and test_x.dtype == torch.uint8
    assert calib_x.shape == (CALIBRATION_SIZE, 28, 28) and len(calib_y) == CALIBRATION_SIZE
    assert len(train_x) + len(calib_x) == len(full_x) == 60000
    # the calibration split is the held-out tail of the training set, disjoint from training
    assert torch.equal(full_x[-CALIBRATION_SIZE:], calib_x)
    assert torch.equal(full_x[: len(train_x)], train_x)
    assert set(test_y.tolist()) == set(range(10)) and test_y.dtype == torch.int64


def test_fashion_mnist_errors(tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        fashion_mnist("validation")
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist") as info:
        fashion_mnist("test", tmp_path)
    assert str(tmp_path) in str(info.value)


def test_fashion_mnist_from_a_copied_directory(tmp_path):
    for name in os.listdir(FASHION_MNIST_DIR):
        if name.startswith("t10k"):
            (tmp_path / name).write_bytes((FASHION_MNIST_DIR / name).read_bytes())
    x, y = fashion_mnist("test", tmp_path)
    ref_x, ref_y = fashion_mnist("test")
    assert torch.equal(x, ref_x) and torch.equal(y, ref_y)


def test_cifar10_from_a_generated_folder(generated_cifar10):
    test = cifar10(generated_cifar10, "test", transform=lambda image: preprocess(image, CIFAR_SPEC))
    train = cifar10(generated_cifar10, "train")
    assert len(test) == 4 and len(train) == 20
    x, y = test[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= y < 10
    assert train.classes[3] == "cat"
    with pytest.raises(ValueError, match="split must be train or test"):
        cifar10(generated_cifar10, "calibration")


def test_cifar10_missing_names_the_expected_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        cifar10(tmp_path, "test")


def test_image_folder_tree(tmp_path):
    root = write_image_folder(tmp_path / "tree")
    spec = InputSpec(mode="RGB", resize=36, crop=32)
    ds = image_folder(root, transform=lambda image: preprocess(image, spec))
    assert ds.classes == ["cat", "dog"] and len(ds) == 4
    x, y = ds[3]
    assert x.shape == (3, 32, 32) and y == 1
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_folder(tmp_path / "missing")
