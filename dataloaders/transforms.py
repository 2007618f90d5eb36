"""Train/test transforms of the in-memory datasets, in one place, and their normalisation statistics.

The original (README Datasets) trains CIFAR with ``RandomCrop(32, padding=4) -> RandomHorizontalFlip -> ToTensor``
and tests with ``ToTensor`` only. InstanceGM removed DivideMix's normalisation so that the continuous
Bernoulli target lies in [0, 1]; :data:`DATASET_STATS` keeps the statistics for the optional
``--normalize_inputs`` switch.

Two equivalent implementations of the train augmentation:

* :func:`device_augment`: a whole uint8 batch at once on its device (parameters from
  :func:`draw_augment_params`, applied by :func:`apply_augment`);
* :func:`pil_train_transform`: torchvision's per-sample transforms on PIL images (the original's path).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:  # torchvision is imported when a PIL pipeline is built, not with the package (2 s)
    from torchvision.transforms import Compose

# (mean, std) per channel of the images the networks see, in [0, 1] units.
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    # DivideMix's Train_cifar.py values (README Datasets).
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.507, 0.487, 0.441), (0.267, 0.256, 0.276)),
    # Fashion-MNIST as served here: 28x28 zero-padded to 32x32 and replicated to 3 channels. Computed on the
    # 60,000 training images of that padded form (the 28x28 values are mean 0.2860, std 0.3530).
    "fashionmnist": ((0.2190,) * 3, (0.3318,) * 3),
    # DivideMix's dataloader_clothing1M.py values (README Datasets).
    "clothing1m": ((0.6959, 0.6537, 0.6371), (0.3113, 0.3192, 0.3214)),
}


@dataclass(frozen=True)
class AugSpec:
    """Train augmentation of the in-memory datasets: RandomCrop(size, padding) then RandomHorizontalFlip."""

    crop_padding: int = 4  # zero padding before the random crop (0: the crop is the identity)
    flip: bool = True  # random horizontal flip with p = 0.5


def draw_augment_params(n: int, spec: AugSpec, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random parameters of ``n`` augmentations, on the CPU: crop offsets (2, n) (top, left) and flips (n,).

    Offsets are uniform in [0, 2p] per axis, as ``RandomCrop(H, padding=p).get_params`` draws them; a flip
    has probability 1/2. Without padding the offsets are 0, without flipping the flips are False.
    """
    p = spec.crop_padding
    offsets = torch.randint(0, 2 * p + 1, (2, n), generator=generator) if p > 0 else torch.zeros(2, n).long()
    flips = torch.rand(n, generator=generator) < 0.5 if spec.flip else torch.zeros(n, dtype=torch.bool)
    return offsets, flips


def apply_augment(images: Tensor, offsets: Tensor, flips: Tensor, spec: AugSpec) -> Tensor:
    """Crop the zero-padded batch (N, C, H, W) at ``offsets`` and mirror the images where ``flips``."""
    n, c, h, w = images.shape
    dev = images.device
    out = images
    p = spec.crop_padding
    if p > 0:
        offsets = offsets.to(dev, non_blocking=True)
        padded = F.pad(images, (p, p, p, p))  # (N, C, H+2p, W+2p), zeros as torchvision's fill=0
        rows = (offsets[0][:, None] + torch.arange(h, device=dev))[:, None, :, None]  # (N, 1, H, 1)
        cols = (offsets[1][:, None] + torch.arange(w, device=dev))[:, None, None, :]  # (N, 1, 1, W)
        batch = torch.arange(n, device=dev)[:, None, None, None]
        chan = torch.arange(c, device=dev)[None, :, None, None]
        out = padded[batch, chan, rows, cols]  # (N, C, H, W)
    if spec.flip:
        flips = flips.to(dev, non_blocking=True)
        out = torch.where(flips[:, None, None, None], out.flip(3), out)
    return out


def device_augment(images: Tensor, spec: AugSpec, generator: torch.Generator) -> Tensor:
    """Random crop with zero padding + horizontal flip of a uint8 batch (N, C, H, W), on its device.

    Same distribution as torchvision's ``RandomCrop(H, padding=p)`` + ``RandomHorizontalFlip()``,
    independently per image (tested). The random numbers come from the CPU ``generator`` (a few bytes per
    image), so results do not depend on the device.
    """
    offsets, flips = draw_augment_params(len(images), spec, generator)
    return apply_augment(images, offsets, flips, spec)


def to_float(images: Tensor) -> Tensor:
    """uint8 (N, C, H, W) -> float32 in [0, 1], what ``ToTensor`` gives."""
    return images.float().div_(255.0)


def pil_train_transform(size: int, spec: AugSpec) -> Compose:
    """The original per-sample train transform: RandomCrop(size, padding) -> HorizontalFlip -> ToTensor."""
    from torchvision import transforms as T

    ops: list = [T.RandomCrop(size, padding=spec.crop_padding)] if spec.crop_padding else []
    if spec.flip:
        ops.append(T.RandomHorizontalFlip())
    return T.Compose([*ops, T.ToTensor()])


def pil_test_transform() -> Compose:
    from torchvision import transforms as T

    return T.Compose([T.ToTensor()])
