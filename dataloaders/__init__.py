"""Datasets by name: ``build_data(cfg, device) -> NoisyDataModule``.

Each dataset is one entry of :data:`DATASETS`, a function ``build_xxx(cfg, device) -> NoisyDataModule``.
In-memory datasets read their files into an :class:`~dataloaders.in_memory.ArrayDataset` and hand it to
:func:`~dataloaders.in_memory.build_in_memory` (class-count check, noisy labels on the full training set,
``--train_subset``, pipeline choice). Importing this package reads no data and touches no device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .animal10n import build_animal10n
from .base import DataConfigError, DatasetNotFoundError, InMemoryDataModule, NoisyDataModule
from .cifar import build_cifar10, build_cifar100
from .clothing1m import build_clothing1m
from .fashion_mnist import build_fashion_mnist
from .imagefolder import build_imagefolder
from .in_memory import check_num_classes
from .red_mini import build_red_mini
from .transforms import DATASET_STATS

__all__ = [
    "DATASETS",
    "DATASET_STATS",
    "DataConfigError",
    "DatasetNotFoundError",
    "InMemoryDataModule",
    "NoisyDataModule",
    "build_data",
]

DATASETS: dict[str, Callable[..., NoisyDataModule]] = {
    "cifar10": build_cifar10,
    "cifar100": build_cifar100,
    "fashionmnist": build_fashion_mnist,
    "imagefolder": build_imagefolder,  # your own images in class folders (DIR/train/<class>/..., DIR/test/...)
    "animal10n": build_animal10n,
    "red_mini": build_red_mini,
    "red_blue": build_red_mini,  # the original's name for Red Mini-ImageNet
    "clothing1m": build_clothing1m,
}


def _canonical(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def build_data(cfg, device: torch.device | str = "cpu") -> NoisyDataModule:
    """The data module of ``cfg.dataset`` (spelling-insensitive: ``fashion-mnist`` = ``fashionmnist``)."""
    names = {_canonical(k): k for k in DATASETS}
    key = names.get(_canonical(cfg.dataset))
    if key is None:
        raise DataConfigError(f"--dataset {cfg.dataset!r}: known datasets are {', '.join(DATASETS)}")
    data = DATASETS[key](cfg, torch.device(device))
    check_num_classes(cfg, key, data.num_classes)
    return data
