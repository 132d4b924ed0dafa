"""Datasets for evaluation and training: Fashion-MNIST (Debian package), CIFAR-10 and ImageNet-style
folders (local copies only; nothing is downloaded)."""

from .fashion_mnist import FASHION_MNIST_DIR, FASHION_MNIST_LABELS, fashion_mnist
from .folders import cifar10, image_folder

__all__ = ["FASHION_MNIST_DIR", "FASHION_MNIST_LABELS", "fashion_mnist", "cifar10", "image_folder"]
