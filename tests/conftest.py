import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("HASTE_TEST_THREADS", "2")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def resnet18():
    """The fmnist-resnet18 reference model as trained (tests copy it before converting)."""
    from haste import zoo

    return zoo.load("fmnist-resnet18")


@pytest.fixture(scope="session")
def resnet18_images():
    """Nine Fashion-MNIST test images, preprocessed for fmnist-resnet18."""
    from haste import zoo
    from haste_lab.bench import _real_images

    return _real_images(zoo.card("fmnist-resnet18"), 9)[0]
