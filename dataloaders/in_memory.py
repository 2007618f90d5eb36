"""From uint8 arrays to a ready :class:`InMemoryDataModule`: the steps every in-memory dataset shares.

A dataset reader (``cifar.py``, ``fashion_mnist.py``, ...) returns an :class:`ArrayDataset`; then
:func:`build_in_memory` checks ``--num_class``, makes the noisy labels on the FULL training set
(``noise.py``), takes ``--train_subset`` (which keeps those full-set noisy labels), picks the pipeline and
builds the module.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .base import AugSpec, DataConfigError, InMemoryDataModule, select_subset
from .noise import label_digest, make_noisy_labels

log = logging.getLogger("dataloaders")


@dataclass
class ArrayDataset:
    """A dataset as loaded from disk, before noise and subsetting. Images are uint8 (N, H, W, C)."""

    name: str  # registry name, also the prefix of generated noise files
    num_classes: int
    train_images: np.ndarray
    train_labels: np.ndarray  # clean labels, or the given (real) noisy ones when labels_are_clean is False
    test_images: np.ndarray
    test_labels: np.ndarray  # clean
    labels_are_clean: bool = True  # False: real noisy labels (Animal-10N, Red Mini-ImageNet), truth unknown
    superclasses: np.ndarray | None = None  # fine -> coarse class map (CIFAR-100), for asymmetric noise
    noise_images: np.ndarray | None = None  # what the instance-noise generator sees (default: train_images)
    noise_cache_dir: str | None = None  # default folder of generated noise files (default: cfg.data_path)
    val_images: np.ndarray | None = None
    val_labels: np.ndarray | None = None
    classes: tuple[str, ...] | None = None  # class names in label order (predict's given_class/predicted_class)
    aug: AugSpec = field(default_factory=AugSpec)


def check_num_classes(cfg, name: str, num_classes: int) -> None:
    """``--num_class`` must match the dataset.

    DIVERGES(original): it took ``--num_class`` on trust (README Differences #17: CIFAR-100 needs
    ``--num_class 100`` passed by hand); here a mismatch stops the run before any noise is generated.
    """
    if cfg.num_classes != num_classes:
        raise DataConfigError(
            f"--num_class {cfg.num_classes} but {name} has {num_classes} classes: pass --num_class {num_classes}"
        )


def resolve_pipeline(cfg) -> str:
    """``auto`` -> ``device`` (batched augmentation on the device) for in-memory datasets."""
    return "device" if cfg.data_pipeline == "auto" else cfg.data_pipeline


def _label_file(path_str: str, num_samples: int, num_classes: int) -> np.ndarray:
    """A user's label file for a real-noise dataset: one label in [0, K) per training sample, in index order."""
    import tools

    path = Path(path_str).expanduser()
    if not path.is_file():
        raise DataConfigError(f"--noise_file {path_str}: no such file")
    try:
        labels = tools.load_label_file(path)
    except ValueError as err:
        raise DataConfigError(str(err)) from err
    if labels.shape != (num_samples,) or (labels.size and (labels.min() < 0 or labels.max() >= num_classes)):
        raise DataConfigError(
            f"--noise_file {path_str} holds {labels.size} labels; the training set needs {num_samples}, each in "
            f"[0, {num_classes}): pass the file predict --relabel wrote for this run"
        )
    return np.asarray(labels, dtype=np.int64)


def build_in_memory(cfg, device: torch.device | str, data: ArrayDataset) -> InMemoryDataModule:
    check_num_classes(cfg, data.name, data.num_classes)
    train_labels = np.asarray(data.train_labels, dtype=np.int64)
    if data.labels_are_clean:
        clean = train_labels
        noisy, info = make_noisy_labels(
            cfg,
            data.name,
            data.train_images if data.noise_images is None else data.noise_images,
            clean,
            data.num_classes,
            cache_dir=data.noise_cache_dir or cfg.data_path,
            superclasses=data.superclasses,
        )
    else:
        if cfg.noise_mode != "real":
            raise DataConfigError(
                f"--noise_mode {cfg.noise_mode}: {data.name} has real noisy labels; pass --noise_mode real"
            )
        clean, noisy, path = None, train_labels, None
        if cfg.noise_file:  # corrected labels (predict --relabel) in place of the dataset's own
            noisy, path = _label_file(cfg.noise_file, len(train_labels), data.num_classes), cfg.noise_file
        sha, sha_of = label_digest(None, noisy)
        info = {
            "mode": "real",
            "rate": None,
            "seed": None,
            "file": path,
            "created": False,
            "sha256": sha,
            "sha256_of": sha_of,
        }

    keep = select_subset(  # by the dataset's own labels, so a relabelled run trains on the same images
        train_labels if clean is None else clean, cfg.train_subset, data.num_classes, cfg.balanced_subset, not cfg.smoke
    )
    images = data.train_images
    if len(keep) < len(noisy):  # the subset keeps the full-set noisy labels
        images, noisy, clean = images[keep], noisy[keep], None if clean is None else clean[keep]
        info["train_subset"] = len(keep)
        if clean is not None:
            info["subset_realised_rate"] = float(np.mean(noisy != clean))
        log.info(
            "training subset: %d of %d samples%s",
            len(keep),
            len(train_labels),
            " (class-balanced)" if cfg.balanced_subset else "",
        )
    if data.classes:
        info["classes"] = list(data.classes)
    test_images, test_labels = data.test_images, data.test_labels
    if 0 < cfg.test_subset < len(test_labels):
        test_images, test_labels = test_images[: cfg.test_subset], test_labels[: cfg.test_subset]
        info["test_subset"] = cfg.test_subset
    module = InMemoryDataModule(
        data.name,
        images,
        noisy,
        test_images,
        test_labels,
        data.num_classes,
        clean_labels=clean,
        aug=data.aug,
        pipeline=resolve_pipeline(cfg),
        device=device,
        num_workers=cfg.num_workers,
        seed=cfg.seed,
        val_images=data.val_images,
        val_labels=data.val_labels,
        noise_info=info,
    )
    module.dataset_indices = keep  # training index -> index in the dataset's own training file (predict)
    return module
