"""The reference models: what each is (architecture, width, data, input spec, recipe) as data."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..preprocess import InputSpec

#: Fashion-MNIST images are 28x28 grayscale, zero-padded to 32x32 (the CIFAR resolution).
FMNIST_SPEC = InputSpec(mode="L", resize=28, crop=28, pad=2, mean=(0.2860,), std=(0.3530,))
#: Fashion-MNIST's ten classes, in label order.
FASHION_MNIST_LABELS = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


@dataclass(frozen=True)
class Recipe:
    """Training recipe of ``haste train``: SGD with Nesterov momentum, one-cycle learning rate,
    random 2-pixel shifts and horizontal flips, on the training split (calibration split held out)."""

    epochs: int = 8
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class Entry:
    name: str
    arch: str
    width: int
    dataset: str = "fashion-mnist"
    spec: InputSpec = FMNIST_SPEC
    labels: tuple[str, ...] = FASHION_MNIST_LABELS
    recipe: Recipe = field(default_factory=Recipe)


REGISTRY: dict[str, Entry] = {
    e.name: e
    for e in (
        Entry("fmnist-resnet18", "resnet18", width=16, recipe=Recipe(epochs=6)),
        # the ResNet34 reference: width 32 (half the paper's); the width-16 one measured first is kept
        Entry("fmnist-resnet34", "resnet34", width=32, recipe=Recipe(epochs=8)),
        Entry("fmnist-resnet34-w16", "resnet34", width=16, recipe=Recipe(epochs=8)),
        # the paper's width (64): 4x the multiply-adds of width 32, so half the epochs (91 min here); a research
        # model (does width leave HASTE more to merge?), not in the Docker image
        Entry("fmnist-resnet34-w64", "resnet34", width=64, recipe=Recipe(epochs=4)),
        # the width-16 ResNet34 trained 5x longer: does a longer-trained model leave HASTE more to merge?
        # (the paper's CIFAR-10 models were trained to convergence; ours for a few epochs) A research model
        Entry("fmnist-resnet34-w16-e40", "resnet34", width=16, recipe=Recipe(epochs=40)),
        Entry("fmnist-vgg16_bn", "vgg16_bn", width=16, recipe=Recipe(epochs=6, lr=0.05)),
    )
}


def entry(name: str) -> Entry:
    if name not in REGISTRY:
        raise ValueError(f"unknown reference model {name!r}; available: {', '.join(REGISTRY)}")
    return REGISTRY[name]
