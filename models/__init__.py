"""Classifiers and generative models of InstanceGM, chosen by name (classifiers) or image size (VAE).

    net = build_classifier("preact_resnet18", num_classes=10)
    vae = build_vae(image_size=32, num_classes=10, z_dim=25)
    out = vae(x, net)  # VAEOutput(x_hat, noisy_logits, mu, log_var, logits, y_hat)

Importing this package builds nothing and loads no weights.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Callable

import torch
from torch import nn

from .encoders import VAE_ARCHS, NoisyLabelClassifier, VAEArch, XDecoder, ZEncoder
from .preact_resnet import PreActBlock, PreActResNet, preact_resnet18, preact_resnet34
from .torchvision_nets import PretrainedWeightsMissing, imagenet_resnet50_path, resnet50, vgg19_bn
from .vae import InstanceGMVAE, VAEOutput, reparameterize, supported_image_sizes

__all__ = [
    "CLASSIFIERS",
    "VAE_ARCHS",
    "InstanceGMVAE",
    "Normalize",
    "NoisyLabelClassifier",
    "PreActBlock",
    "PreActResNet",
    "PretrainedWeightsMissing",
    "VAEArch",
    "VAEOutput",
    "XDecoder",
    "ZEncoder",
    "build_classifier",
    "build_vae",
    "classifier_names",
    "imagenet_resnet50_path",
    "preact_resnet18",
    "preact_resnet34",
    "reparameterize",
    "resnet50",
    "supported_image_sizes",
    "vgg19_bn",
]

CLASSIFIERS: dict[str, Callable[..., nn.Module]] = {
    "preact_resnet18": preact_resnet18,  # CIFAR-10/100, Red Mini-ImageNet (32x32)
    "preact_resnet34": preact_resnet34,
    "vgg19_bn": vgg19_bn,  # Animal-10N (64x64)
    "resnet50": resnet50,  # Clothing1M (224x224), ImageNet-pretrained in the original
}
_HAS_WIDTH = frozenset({"preact_resnet18", "preact_resnet34"})
_HAS_PRETRAINED = frozenset({"resnet50"})
_DEFAULT_WIDTH = 64


def classifier_names() -> list[str]:
    return sorted(CLASSIFIERS)


class Normalize(nn.Module):
    """Fixed per-channel ``(x - mean) / std``; mean and std are buffers, not parameters."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean and std need the same number of channels, got {len(mean)} and {len(std)}")
        # Shaped (1, C, 1, 1) to broadcast over (N, C, H, W).
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def build_classifier(
    name: str,
    num_classes: int,
    *,
    width: int = _DEFAULT_WIDTH,
    pretrained: bool = False,
    weights_path: str | None = None,
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> nn.Module:
    """Build a clean-label classifier by registry name (see ``classifier_names()``).

    ``width`` applies to the PreAct ResNets only; ``pretrained`` / ``weights_path`` to ``resnet50`` only.
    ``normalize=(mean, std)`` prepends a fixed ``Normalize`` so the classifier sees normalised inputs while
    the VAE keeps the [0, 1] images; the result is then ``Sequential(normalize=..., net=...)``.
    """
    if name not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {name!r}; available: {', '.join(classifier_names())}")
    kwargs: dict[str, Any] = {}
    if name in _HAS_WIDTH:
        kwargs["width"] = width
    elif width != _DEFAULT_WIDTH:
        raise ValueError(f"width is only configurable for {sorted(_HAS_WIDTH)}, not {name!r}")
    if name in _HAS_PRETRAINED:
        kwargs.update(pretrained=pretrained, weights_path=weights_path)
    elif pretrained or weights_path is not None:
        raise ValueError(f"pretrained weights are only supported for {sorted(_HAS_PRETRAINED)}, not {name!r}")
    net = CLASSIFIERS[name](num_classes, **kwargs)
    if normalize is None:
        # NOTE(original): classifiers see un-normalised [0, 1] inputs (README Differences #11), even the
        # ImageNet-pretrained ResNet-50 of Clothing1M.
        return net
    # DIVERGES(original): opt-in input normalisation for the classifier only; the VAE still models [0, 1] x.
    mean, std = normalize
    return nn.Sequential(OrderedDict(normalize=Normalize(mean, std), net=net))


def build_vae(image_size: int, num_classes: int, z_dim: int, **switches: Any) -> InstanceGMVAE:
    """Build the generative model for ``image_size`` (32, 64 or 224); ``switches`` go to ``InstanceGMVAE``."""
    return InstanceGMVAE(image_size, num_classes, z_dim, **switches)
