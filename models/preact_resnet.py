"""Pre-activation ResNet for 32x32 inputs (CIFAR-10/100, Red Mini-ImageNet).

Follows DivideMix's ``PreResNet.py`` as used by InstanceGM (docs/design.md: The classifiers):
a 3x3 stem with BN + ReLU, four
stages of ``PreActBlock``, no BN/ReLU after the last stage, a fixed 4x4 average pool and one linear layer.
``width`` scales the channel plan (64, 128, 256, 512 at the original ``width=64``) so CPU tests and smoke
runs can use a narrow network; every other detail is the original's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PreActBlock", "PreActResNet", "preact_resnet18", "preact_resnet34"]


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class PreActBlock(nn.Module):
    """Pre-activation basic block: ``conv2(relu(bn2(conv1(o)))) + shortcut(o)`` with ``o = relu(bn1(x))``."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        # Projection is a bare 1x1 conv (no BN); otherwise an empty Sequential, i.e. the identity.
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        # NOTE(original): the shortcut (identity included) takes the pre-activated tensor relu(bn1(x)), not x,
        # DivideMix PreResNet.py PreActBlock.forward. He et al.'s pre-activation block would add x itself.
        shortcut = self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut  # no ReLU after the addition


class PreActResNet(nn.Module):
    """PreAct ResNet; expects 32x32 inputs so that the last stage yields a 4x4 map for ``avg_pool2d(4)``."""

    def __init__(
        self,
        block: type[PreActBlock],
        num_blocks: tuple[int, int, int, int],
        num_classes: int,
        width: int = 64,
    ) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be a positive integer, got {width}")
        self.in_planes = width
        self.conv1 = _conv3x3(3, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(block, width, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 2 * width, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, num_blocks[3], stride=2)
        self.linear = nn.Linear(8 * width * block.expansion, num_classes)

    def _make_layer(self, block: type[PreActBlock], planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for block_stride in [stride] + [1] * (num_blocks - 1):
            layers.append(block(self.in_planes, planes, block_stride))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        # NOTE(original): no BN/ReLU after the last stage, and a fixed 4x4 pool (not adaptive), DivideMix
        # PreResNet.py ResNet.forward; a 32x32 input gives a 4x4 map here, so this is a global average.
        out = F.avg_pool2d(out, 4)
        out = out.flatten(1)  # (N, 8 * width)
        return self.linear(out)


def preact_resnet18(num_classes: int, width: int = 64) -> PreActResNet:
    """PreAct ResNet-18 ([2, 2, 2, 2] blocks); 11.17 M parameters at ``width=64``, ``num_classes=10``."""
    return PreActResNet(PreActBlock, (2, 2, 2, 2), num_classes, width=width)


def preact_resnet34(num_classes: int, width: int = 64) -> PreActResNet:
    """PreAct ResNet-34 ([3, 4, 6, 3] blocks)."""
    return PreActResNet(PreActBlock, (3, 4, 6, 3), num_classes, width=width)
