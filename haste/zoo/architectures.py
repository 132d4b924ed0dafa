"""CIFAR-style reference architectures (3x3 stem, no max-pool) built from torchvision's blocks,
with a width multiplier so that they train on a small CPU."""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock
from torchvision.models.vgg import make_layers

RESNET_LAYERS = {"resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3]}
VGG_CFGS = {
    "vgg11_bn": [1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M"],
    "vgg16_bn": [1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M"],
    "vgg19_bn": [1, 1, "M", 2, 2, "M", 4, 4, 4, 4, "M", 8, 8, 8, 8, "M", 8, 8, 8, 8, "M"],
}


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs (He et al. CIFAR variant as in the HASTE paper): 3x3 stride-1 stem,
    no max-pool, four stages of torchvision BasicBlocks with widths w, 2w, 4w, 8w."""

    def __init__(self, layers: list[int], *, width: int = 64, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        stages, planes_in = [], width
        for i, blocks in enumerate(layers):
            planes, stride = width * 2**i, 1 if i == 0 else 2
            downsample = None
            if stride != 1 or planes_in != planes:
                downsample = nn.Sequential(
                    nn.Conv2d(planes_in, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
                )
            stage = [BasicBlock(planes_in, planes, stride, downsample)]
            stage += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            planes_in = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


class CifarVGG(nn.Module):
    """VGG-BN for 32x32 inputs: torchvision's ``make_layers`` with widths scaled by ``width`` / 64 and a
    single linear classifier (the usual CIFAR variant)."""

    def __init__(self, cfg: list, *, width: int = 64, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        scaled = [c if c == "M" else c * width for c in cfg]
        features = make_layers(scaled, batch_norm=True)
        if in_channels != 3:
            features[0] = nn.Conv2d(in_channels, scaled[0], 3, padding=1)
        self.features = features
        self.classifier = nn.Linear(scaled[-2], num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def build(arch: str, *, width: int, in_channels: int, num_classes: int) -> nn.Module:
    """Build a reference architecture by name: resnet18, resnet34, vgg11_bn, vgg16_bn, vgg19_bn."""
    if arch in RESNET_LAYERS:
        return CifarResNet(RESNET_LAYERS[arch], width=width, in_channels=in_channels, num_classes=num_classes)
    if arch in VGG_CFGS:
        return CifarVGG(VGG_CFGS[arch], width=width, in_channels=in_channels, num_classes=num_classes)
    raise ValueError(f"arch must be one of {', '.join([*RESNET_LAYERS, *VGG_CFGS])}; got {arch!r}")
