"""torchvision backbones: VGG-19-BN (Animal-10N) and ResNet-50 (Clothing1M), docs/design.md: The classifiers.

Both are torchvision's own models with the last classification layer replaced by a freshly initialised
``nn.Linear`` of the right width, as the original scripts do. ImageNet weights for ResNet-50 are read from a
local file only (the torchvision hub cache or an explicit path): nothing here ever touches the network.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torchvision.models import ResNet50_Weights
from torchvision.models import resnet50 as _tv_resnet50
from torchvision.models import vgg19_bn as _tv_vgg19_bn

__all__ = ["PretrainedWeightsMissing", "imagenet_resnet50_path", "resnet50", "vgg19_bn"]

_RESNET50_WEIGHTS = ResNet50_Weights.IMAGENET1K_V1  # the original's `resnet50(pretrained=True)`


class PretrainedWeightsMissing(FileNotFoundError):
    """The ImageNet ResNet-50 weight file is not in the local torchvision hub cache."""


def imagenet_resnet50_path() -> str:
    """Where torchvision would cache the IMAGENET1K_V1 ResNet-50 weights: ``<hub dir>/checkpoints/<file>``."""
    filename = os.path.basename(_RESNET50_WEIGHTS.url)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def vgg19_bn(num_classes: int) -> nn.Module:
    """torchvision VGG-19-BN, random init, last classifier layer replaced by ``Linear(4096, num_classes)``.

    Works at 64x64 (Animal-10N): the 2x2 map after the last pool is upsampled to 7x7 by the model's own
    ``AdaptiveAvgPool2d((7, 7))``.
    """
    net = _tv_vgg19_bn(weights=None)
    # The new layer gets PyTorch's default Linear init, not torchvision VGG's N(0, 0.01), as in the original.
    net.classifier[6] = nn.Linear(net.classifier[6].in_features, num_classes)
    return net


def _load_backbone_state(net: nn.Module, path: str) -> None:
    """Load an ImageNet ResNet-50 state dict into ``net``, ignoring ``fc`` (it is replaced afterwards)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = {k: v.shape for k, v in net.state_dict().items() if not k.startswith("fc.")}
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    mismatched = sorted(k for k in expected.keys() & state.keys() if state[k].shape != expected[k])
    if missing or unexpected or mismatched:
        raise RuntimeError(
            f"{path} is not a torchvision ResNet-50 state dict: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, wrong shape {mismatched[:3]} (first 3 of each)"
        )
    net.load_state_dict(state, strict=False)  # only fc.* is absent, checked above


def resnet50(num_classes: int, pretrained: bool = False, weights_path: str | None = None) -> nn.Module:
    """torchvision ResNet-50 with ``fc`` replaced by ``Linear(2048, num_classes)``.

    ``weights_path``: load that ImageNet state dict file (implies pretrained). Otherwise, if ``pretrained``,
    load the IMAGENET1K_V1 file from torchvision's hub cache (see ``imagenet_resnet50_path``), raising
    ``PretrainedWeightsMissing`` if it is not there. Never downloads.
    """
    if weights_path is None and pretrained:
        weights_path = imagenet_resnet50_path()
        if not os.path.isfile(weights_path):
            # One line: the exact target path, where to get the file, and the way out.
            raise PretrainedWeightsMissing(
                f"ImageNet ResNet-50 weights not found at {weights_path}; on a machine with internet "
                f"download {_RESNET50_WEIGHTS.url} and copy it to that path (or pass its location as "
                "--weights_path), or train from scratch with --no-pretrained."
            )
    net = _tv_resnet50(weights=None)
    if weights_path is not None:
        _load_backbone_state(net, weights_path)
    # Replaced after loading, as the original does (`model.fc = nn.Linear(2048, 14)` after pretrained init).
    net.fc = nn.Linear(net.fc.in_features, num_classes)
    return net
