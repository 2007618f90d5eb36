"""Red Mini-ImageNet of "Controlled Noisy Web Labels" (Jiang et al., ICML 2020) in the FaMUS split-file layout,
README Datasets (the original ``dataloader_red.py``). 100 classes, images resized to 32x32 as in the paper.

Layout under ``<root>`` = ``<data_path>/mini-imagenet`` (or ``--data_path`` itself when it is that folder):

* ``split/red_noise_nl_<r>``: training list for noise level ``r`` (``--r`` 0.2, 0.4, 0.6, 0.8, written as
  Python prints the float), one ``<file> <label>`` per line; images at ``all_images/<file>``;
* ``split/clean_validation``: the clean test set, ``<file> <label>`` lines; images at
  ``validation/<label>/<file>`` (the original's layout) or, if that folder is absent, ``all_validation/<file>``.

Known truth (optional): when ``split/red_noise_nl_0.0`` (the noise-free list of the same release) exists, a
training line whose file is listed there gets that list's label as its clean label; a file absent from it is
a web image, which CNWL's red noise puts in a class only with a wrong label, so it counts as mislabelled
(clean label unknown, stored as -1). The run then reports the realised noise rate and the split's
precision/recall/AUC. Without that file the truth is unknown (noise_mode real).

Images are decoded, resized with ``Resize((32, 32))`` (deterministic, so caching the result equals the
original's per-access resize) and cached once (:mod:`dataloaders.image_cache`); then the CIFAR augmentation
(crop with padding 4 + flip) and every test image evaluated.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .base import AugSpec, DatasetNotFoundError, select_subset
from .image_cache import cached_images
from .in_memory import ArrayDataset, build_in_memory

log = logging.getLogger("dataloaders")

NUM_CLASSES = 100
IMAGE_SIZE = 32
URL = "https://google.github.io/controlled-noisy-web-labels/"
UNKNOWN = -1  # clean label of a web image: wrong by construction, true class unknown


def _missing(data_path: str | Path, what: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"Red Mini-ImageNet {what} (--data_path {data_path}): expected <data_path>/mini-imagenet/ holding "
        "split/red_noise_nl_<r>, split/clean_validation, all_images/ and validation/<label>/ (the FaMUS split "
        f"files); the images come from the Controlled Noisy Web Labels page {URL}"
    )


def find_root(data_path: str | Path) -> Path:
    """``<data_path>/mini-imagenet``, or ``data_path`` itself when it already is that folder."""
    base = Path(data_path).expanduser()
    for root in (base / "mini-imagenet", base):
        if (root / "split").is_dir():
            return root
    raise _missing(data_path, "not found")


def read_split(path: Path) -> tuple[list[str], np.ndarray]:
    """A split file: one ``<file> <label>`` per line (blank lines skipped)."""
    names, labels = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) >= NUM_CLASSES:
            raise DatasetNotFoundError(
                f"{path} line {number}: expected '<file> <label>' with a label in 0..{NUM_CLASSES - 1}, got {line!r}"
            )
        names.append(parts[0])
        labels.append(int(parts[1]))
    if not names:
        raise DatasetNotFoundError(f"{path} lists no images")
    return names, np.asarray(labels, dtype=np.int64)


def split_file(root: Path, rate: float) -> Path:
    """``split/red_noise_nl_<r>`` with r as Python prints it (``0.2``), as the original formats it."""
    path = root / "split" / f"red_noise_nl_{float(rate)}"
    if not path.is_file():
        levels = sorted(p.name.rsplit("_", 1)[-1] for p in (root / "split").glob("red_noise_nl_*"))
        raise DatasetNotFoundError(
            f"{path} not found: --r selects split/red_noise_nl_<r>; this folder has r in {levels or 'none'}"
        )
    return path


def validation_files(root: Path, names: list[str], labels: np.ndarray) -> list[Path]:
    if (root / "validation").is_dir():
        return [root / "validation" / str(label) / name for name, label in zip(names, labels)]
    if (root / "all_validation").is_dir():
        return [root / "all_validation" / name for name in names]
    raise DatasetNotFoundError(f"{root}: no validation/<label>/ (nor all_validation/) folder for the test images")


def clean_labels_from_nl0(root: Path, names: list[str]) -> np.ndarray | None:
    """Clean labels of the training files from ``split/red_noise_nl_0.0``, or None when it is absent."""
    path = root / "split" / "red_noise_nl_0.0"
    if not path.is_file():
        return None
    truth = dict(zip(*read_split(path)))
    return np.asarray([truth.get(name, UNKNOWN) for name in names], dtype=np.int64)


def load_red_mini(data_path: str | Path, rate: float, reuse_cache: bool = True) -> tuple[ArrayDataset, dict]:
    """The training split ``rate`` and the clean test set as 32x32 uint8 arrays, plus what is known of the
    truth: ``{"clean_labels": array or None, "split": file name}``."""
    root = find_root(data_path)
    if not (root / "split" / "clean_validation").is_file():
        raise _missing(data_path, f"incomplete: {root / 'split' / 'clean_validation'} is missing")
    train_split = split_file(root, rate)
    train_names, train_labels = read_split(train_split)
    test_names, test_labels = read_split(root / "split" / "clean_validation")
    train_files = [root / "all_images" / name for name in train_names]
    test_paths = validation_files(root, test_names, test_labels)
    # NOTE(original): Resize((32, 32)) of every image (README Datasets); deterministic, so it is done once, here.
    train_images, _, _ = cached_images(
        train_files, root, f"red-{train_split.name}", IMAGE_SIZE, resize=True, reuse=reuse_cache
    )
    test_images, _, _ = cached_images(
        test_paths, root, "red-clean_validation", IMAGE_SIZE, resize=True, reuse=reuse_cache
    )
    arrays = ArrayDataset(
        name="red_mini",
        num_classes=NUM_CLASSES,
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        labels_are_clean=False,
        aug=AugSpec(crop_padding=4, flip=True),
    )
    return arrays, {"clean_labels": clean_labels_from_nl0(root, train_names), "split": train_split.name}


def build_red_mini(cfg, device: torch.device | str = "cpu"):
    arrays, truth = load_red_mini(cfg.data_path, cfg.r, reuse_cache=cfg.saved)
    data = build_in_memory(cfg, device, arrays)
    # DIVERGES(original): its loaders dropped the last incomplete batch, so 16 training samples were never
    # evaluated and 8 test images never tested (README Differences #15); every sample counts here.
    data.noise_info.update(split=truth["split"], nominal_rate=float(cfg.r))
    clean = truth["clean_labels"]
    if clean is None:
        log.info("Red Mini-ImageNet: no split/red_noise_nl_0.0, so the true labels are unknown")
        return data
    noisy = np.asarray(arrays.train_labels)
    data.noise_info.update(clean_source="split/red_noise_nl_0.0", realised_rate=float(np.mean(noisy != clean)))
    # The same training subset build_in_memory took (it selects on the given labels when the truth is unknown).
    keep = select_subset(noisy, cfg.train_subset, NUM_CLASSES, cfg.balanced_subset, not cfg.smoke)
    data.clean_labels = torch.as_tensor(clean[keep])
    if len(keep) < len(noisy):
        data.noise_info["subset_realised_rate"] = float(np.mean(noisy[keep] != clean[keep]))
    return data
