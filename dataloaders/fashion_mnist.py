"""Fashion-MNIST (Xiao et al. 2017) from its idx files, served in CIFAR's shape.

Not in the InstanceGM paper; CausalNL and Xia et al. report instance-dependent noise on it, and Debian ships
it (``apt-get install dataset-fashion-mnist`` -> ``/usr/share/datasets/fashion-mnist/``), so it is the real
dataset this project can train on anywhere.

Accepted layouts (gzip-compressed or not): the four files ``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` directly in
``--data_path``, in ``<data_path>/FashionMNIST/raw`` (torchvision's root), or in the Debian folder (the
default, and the fallback when the configuration's default ``--data_path`` has none of them; a path the user
chose that holds none of them is an error).

The 28x28 grayscale images are zero-padded to 32x32 (2 pixels each side) and replicated to 3 channels:
uint8 N x 32 x 32 x 3, so every 32x32 model and augmentation applies unchanged.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
from pathlib import Path

import numpy as np
import torch

from .base import DatasetNotFoundError
from .in_memory import ArrayDataset, build_in_memory
from .noise import user_cache_dir

log = logging.getLogger("dataloaders")

DEBIAN_PATH = Path("/usr/share/datasets/fashion-mnist")
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
NUM_CLASSES = 10
PAD = 2  # 28 + 2 * 2 = 32


# Label order of the dataset (Xiao et al. 2017).
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def read_idx(path: Path) -> np.ndarray:
    """An idx file of unsigned bytes (magic 0x0000 08 D, then D big-endian int32 sizes), gzip or plain."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise DatasetNotFoundError(f"{path} is unreadable ({err}); reinstall the Fashion-MNIST files") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetNotFoundError(f"{path} is not an idx file of unsigned bytes")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DatasetNotFoundError(f"{path} holds {data.size} values but its header says {dims}")
    return data.reshape(dims)


def _locate(folder: Path) -> list[Path] | None:
    """The four files in ``folder`` (each ``.gz`` or plain), or None if any is missing."""
    found = []
    for name in FILES:
        candidates = [folder / f"{name}.gz", folder / name]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found


def find_fashion_mnist(data_path: str | Path | None, fallback: bool | None = None) -> list[Path]:
    """Paths of the four idx files: in ``data_path`` or its ``FashionMNIST/raw``; the Debian folder when
    ``fallback`` (default: only when no ``data_path`` is given -- an explicit path without the files is an error).
    """
    folders = []
    if data_path:
        root = Path(data_path).expanduser()
        folders += [root, root / "FashionMNIST" / "raw"]
    if fallback or (fallback is None and not data_path):
        folders.append(DEBIAN_PATH)
    for folder in folders:
        files = _locate(folder)
        if files is not None:
            if data_path and folder == DEBIAN_PATH and Path(data_path).expanduser() != DEBIAN_PATH:
                log.info("Fashion-MNIST: not in the default --data_path %s; using Debian's %s", data_path, folder)
            return files
    raise DatasetNotFoundError(
        f"Fashion-MNIST not found in {', '.join(map(str, dict.fromkeys(folders)))}: expected "
        f"{', '.join(FILES)} (each .gz or not) in --data_path or in <data_path>/FashionMNIST/raw; "
        f"install them with `apt-get install dataset-fashion-mnist` (into {DEBIAN_PATH})"
    )


def pad_to_rgb32(images: np.ndarray) -> np.ndarray:
    """N x 28 x 28 uint8 -> N x 32 x 32 x 3: zero border of 2 pixels, gray replicated to RGB."""
    padded = np.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD)))
    return np.ascontiguousarray(np.repeat(padded[..., None], 3, axis=-1))


def load_fashion_mnist(data_path: str | Path | None = None, fallback: bool | None = None) -> ArrayDataset:
    files = find_fashion_mnist(data_path, fallback)
    train_x, train_y, test_x, test_y = (read_idx(p) for p in files)
    for images, labels, path in ((train_x, train_y, files[0]), (test_x, test_y, files[2])):
        if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) != len(labels):
            raise DatasetNotFoundError(f"{path}: expected N x 28 x 28 images matching its label file")
    folder = files[0].parent
    return ArrayDataset(
        name="fashionmnist",
        num_classes=NUM_CLASSES,
        train_images=pad_to_rgb32(train_x),
        train_labels=train_y.astype(np.int64),
        test_images=pad_to_rgb32(test_x),
        test_labels=test_y.astype(np.int64),
        # Instance-dependent noise sees the 28x28x1 pixels (784 features, as CausalNL's and Xia et al.'s
        # FMNIST), not the padded RGB copy: the border adds nothing and the channels would only repeat.
        noise_images=train_x[..., None],
        classes=CLASSES,
        # Generated labels never go into the system folder.
        noise_cache_dir=str(user_cache_dir() if folder == DEBIAN_PATH else folder),
    )


def build_fashion_mnist(cfg, device: torch.device | str = "cpu"):
    # The Debian folder stands in only for a path the user did not choose (the configuration's default).
    default = {f.name: f.default for f in dataclasses.fields(cfg)}.get("data_path")
    return build_in_memory(cfg, device, load_fashion_mnist(cfg.data_path, fallback=cfg.data_path in ("", default)))
