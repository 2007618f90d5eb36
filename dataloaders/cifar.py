"""CIFAR-10 / CIFAR-100 from the python-pickle files (README Datasets, the original ``dataloader_cifar.py``).

Two layouts under ``--data_path`` are accepted:

* the official tarball extracted as is: ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch}``
  (``<root>/cifar-100-python/{train,test}``). When torchvision's md5 check passes (the real files), the
  arrays come from ``torchvision.datasets.CIFAR10/CIFAR100``;
* the original code's flat layout, the same files directly in the folder: ``<root>/data_batch_1..5``,
  ``<root>/test_batch`` (``<root>/train``, ``<root>/test``) (README Differences #17: the original download script
  does not extract). Read with :func:`read_batch`, as is any official-layout folder that fails the md5 check.

Images: ``data`` is N x 3072 uint8, channel-planar (1024 R, 1024 G, 1024 B, rows of 32) -> N x 32 x 32 x 3.
Labels: ``labels`` (CIFAR-10) / ``fine_labels`` (CIFAR-100); CIFAR-100's ``coarse_labels`` give the
fine -> coarse map used by asymmetric noise.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .base import DatasetNotFoundError
from .in_memory import ArrayDataset, build_in_memory


@dataclass(frozen=True)
class CifarFiles:
    title: str
    folder: str  # the official tarball's top folder
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_key: str
    tarball: str
    script: str  # the repository's download command
    pattern: str  # the file names, for messages

    def layout(self, root: Path) -> str:
        return (
            f"{root / self.folder}/{self.pattern} (official tarball, extracted) "
            f"or {root}/{self.pattern} (original layout)"
        )


CIFAR = {
    10: CifarFiles(
        "CIFAR-10",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "labels",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "bash cifar10.sh",
        "{data_batch_1..5,test_batch}",
    ),
    100: CifarFiles(
        "CIFAR-100",
        "cifar-100-python",
        ("train",),
        ("test",),
        "fine_labels",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "bash cifar10.sh cifar100",
        "{train,test}",
    ),
}


# CIFAR-10's label order (its batches.meta); CIFAR-100's 100 names are left to its meta file.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def read_batch(path: Path) -> dict:
    """One CIFAR python-pickle file as a dict with str keys (files written by Python 2 or 3)."""
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        return {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError, IndexError) as err:
        raise DatasetNotFoundError(
            f"{path} is not a CIFAR python-pickle file ({type(err).__name__}); extract the official tarball again"
        ) from err


def planar_to_hwc(data) -> np.ndarray:
    """N x 3072 channel-planar uint8 -> N x 32 x 32 x 3."""
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetNotFoundError(f"CIFAR data must be N x 3072 uint8, got shape {data.shape}")
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _read_split(folder: Path, names: tuple[str, ...], label_key: str):
    entries = [read_batch(folder / name) for name in names]
    for name, entry in zip(names, entries):
        if "data" not in entry or label_key not in entry:
            raise DatasetNotFoundError(f"{folder / name} has no '{label_key}' / 'data' entry: not a CIFAR file")
    images = np.concatenate([planar_to_hwc(e["data"]) for e in entries])
    labels = np.concatenate([np.asarray(e[label_key], dtype=np.int64) for e in entries])
    coarse = [e.get("coarse_labels") for e in entries]
    coarse = None if any(c is None for c in coarse) else np.concatenate([np.asarray(c, dtype=np.int64) for c in coarse])
    return images, labels, coarse


def fine_to_coarse(fine: np.ndarray, coarse: np.ndarray, num_classes: int) -> np.ndarray:
    """The (K,) map fine class -> superclass; classes absent from ``fine`` map to -1."""
    mapping = np.full(num_classes, -1, dtype=np.int64)
    mapping[fine] = coarse
    if not np.array_equal(mapping[fine], coarse):
        raise DatasetNotFoundError("CIFAR-100 coarse_labels are inconsistent: one fine class has two superclasses")
    return mapping


def _torchvision_arrays(root: Path, num_classes: int):
    """(train_x, train_y, test_x, test_y) through torchvision, or None when its md5 check fails."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if num_classes == 10 else datasets.CIFAR100
    try:
        train, test = cls(str(root), train=True), cls(str(root), train=False)
    except RuntimeError:  # "Dataset not found or corrupted": not the official files
        return None
    # torchvision's .data is a transposed (non-contiguous) view; the pipelines want plain N x 32 x 32 x 3.
    return (
        np.ascontiguousarray(train.data),
        np.asarray(train.targets, dtype=np.int64),
        np.ascontiguousarray(test.data),
        np.asarray(test.targets, dtype=np.int64),
    )


def find_cifar(root: str | Path, num_classes: int) -> Path:
    """The folder holding the CIFAR files (official or flat layout) or a one-line DatasetNotFoundError."""
    spec, root = CIFAR[num_classes], Path(root).expanduser()
    # DIVERGES(original): it read only the flat layout (README Datasets); the extracted tarball works as is too.
    for folder in (root / spec.folder, root):
        if all((folder / name).is_file() for name in spec.train + spec.test):
            return folder
    tarball = root / Path(spec.tarball).name
    hint = (
        f"found {tarball}: extract it with `tar -xzf {tarball} -C {root}`"
        if tarball.is_file()
        else f"get it with `{spec.script}` or extract {spec.tarball} into --data_path"
    )
    # Offline, a first try still works on Debian's Fashion-MNIST package.
    hint += "; without it, `python instanceGM.py --dataset fashionmnist --smoke` checks the setup on Fashion-MNIST"
    raise DatasetNotFoundError(f"{spec.title} not found under --data_path {root}: expected {spec.layout(root)}; {hint}")


def load_cifar(root: str | Path, num_classes: int) -> ArrayDataset:
    """CIFAR-10 (``num_classes=10``) or CIFAR-100 (100) as uint8 arrays, from either layout."""
    spec, root = CIFAR[num_classes], Path(root).expanduser()
    folder = find_cifar(root, num_classes)
    arrays = _torchvision_arrays(root, num_classes) if folder == root / spec.folder else None
    superclasses = None
    if arrays is None:
        train_x, train_y, train_coarse = _read_split(folder, spec.train, spec.label_key)
        test_x, test_y, _ = _read_split(folder, spec.test, spec.label_key)
        if num_classes == 100 and train_coarse is not None:
            superclasses = fine_to_coarse(train_y, train_coarse, num_classes)
    else:
        train_x, train_y, test_x, test_y = arrays
        if num_classes == 100:  # torchvision keeps only the fine labels; the small test file has every class
            test = read_batch(folder / spec.test[0])
            superclasses = fine_to_coarse(test_y, np.asarray(test["coarse_labels"], dtype=np.int64), num_classes)
    return ArrayDataset(
        name=f"cifar{num_classes}",
        num_classes=num_classes,
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        superclasses=superclasses,
        noise_cache_dir=str(root),
        classes=CIFAR10_CLASSES if num_classes == 10 else None,
    )


def build_cifar10(cfg, device: torch.device | str = "cpu"):
    return build_in_memory(cfg, device, load_cifar(cfg.data_path, 10))


def build_cifar100(cfg, device: torch.device | str = "cpu"):
    return build_in_memory(cfg, device, load_cifar(cfg.data_path, 100))
