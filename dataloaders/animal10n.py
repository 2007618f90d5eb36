"""Animal-10N (Song et al., ICML 2019): 50,000 training and 5,000 test 64x64 images of 10 animals, real label
noise (about 8%), README Datasets (the original ``dataloader_animal10N.py``).

Two layouts of ``<root>/training`` and ``<root>/testing`` are accepted (``<root>`` = ``--data_path``, or the
one folder up to two levels below it that holds both, as an extracted archive may nest them):

* the official release, flat: ``training/<label>_<id>.jpg``, the label being the integer before the first
  underscore (e.g. ``3_01234.jpg`` is class 3);
* class sub-folders, as the original's ``ImageFolder`` needs: ``training/<class>/<file>``; the sorted folder
  names give the label order (folders ``0`` ... ``9`` keep the official numbering).

The training labels are the (noisy) given ones, truth unknown; the test labels count as clean. Images are
decoded once into a uint8 cache (:mod:`dataloaders.image_cache`); ``--saved false`` decodes again. Train
augmentation: ``RandomCrop(64)`` without padding (the identity on 64x64 images) + horizontal flip.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .base import AugSpec, DatasetNotFoundError
from .image_cache import cached_images, is_image
from .in_memory import ArrayDataset, build_in_memory

log = logging.getLogger("dataloaders")

NUM_CLASSES = 10
IMAGE_SIZE = 64
URL = "https://dm.kaist.ac.kr/datasets/animal-10n/"
SPLITS = ("training", "testing")


def _missing(root: Path, what: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"Animal-10N {what} under --data_path {root}: expected {root}/training/ and {root}/testing/ holding "
        f"<label>_<id>.jpg files (the official release, extracted) or one sub-folder per class; "
        f"request the dataset at {URL}"
    )


def _walk(folder: Path) -> list[Path]:
    """Image files below ``folder`` in ImageFolder's order (sorted names, sub-folders recursively)."""
    return sorted((p for p in folder.rglob("*") if p.is_file() and is_image(p)), key=lambda p: p.as_posix())


def class_folders(folder: Path) -> list[str]:
    """The class sub-folders of a split (hidden ones skipped), sorted; empty for the flat layout."""
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def list_split(folder: Path, classes: list[str] | None) -> tuple[list[Path], np.ndarray]:
    """Files and labels of one split. ``classes``: the training split's class folders (None: flat layout)."""
    if classes is not None:
        found = class_folders(folder)
        extra = sorted(set(found) - set(classes))
        if extra:
            raise DatasetNotFoundError(f"{folder} has class folders {extra} that {folder.parent}/training lacks")
        files, labels = [], []
        for label, name in enumerate(classes):
            if (folder / name).is_dir():
                found_files = _walk(folder / name)
                files += found_files
                labels += [label] * len(found_files)
        return files, np.asarray(labels, dtype=np.int64)
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_image(p))
    labels = []
    for path in files:
        head = path.name.split("_", 1)[0]
        if "_" not in path.name or not head.isdigit() or int(head) >= NUM_CLASSES:
            raise DatasetNotFoundError(
                f"{path}: flat Animal-10N files are named <label>_<id>.jpg with a label in 0..{NUM_CLASSES - 1}; "
                "put other files in one sub-folder per class"
            )
        labels.append(int(head))
    return files, np.asarray(labels, dtype=np.int64)


def _subfolders(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []


def find_root(data_path: str | Path) -> Path:
    """The folder holding ``training/`` and ``testing/``: ``--data_path`` itself, or the one such folder up to
    two levels below it (an archive extracted with its own top folders, e.g. ``raw_image_ver/raw_image/``)."""
    base = Path(data_path).expanduser()
    level1 = _subfolders(base)
    candidates = [base, *level1, *(sub for folder in level1 for sub in _subfolders(folder))]
    found = [c for c in candidates if all((c / split).is_dir() for split in SPLITS)]
    if not found:
        raise _missing(base, "not found")
    if found[0] != base:
        log.info("Animal-10N: using %s (below --data_path %s)", found[0], base)
    return found[0]


def load_animal10n(data_path: str | Path, reuse_cache: bool = True) -> ArrayDataset:
    """Both splits as uint8 (N, 64, 64, 3) arrays with their labels, through the decoded-image cache."""
    root = find_root(data_path)
    # DIVERGES(original): it needed class folders (ImageFolder) and read them from --dataset, not --data_path.
    classes = class_folders(root / "training") or None
    arrays = {}
    for split in SPLITS:
        files, labels = list_split(root / split, classes)
        if not files:
            raise _missing(root, f"has no images in {split}/")
        images, _, _ = cached_images(files, root, f"animal10n-{split}", IMAGE_SIZE, resize=False, reuse=reuse_cache)
        arrays[split] = images, labels
    return ArrayDataset(
        name="animal10n",
        num_classes=NUM_CLASSES if classes is None else len(classes),
        train_images=arrays["training"][0],
        train_labels=arrays["training"][1],
        test_images=arrays["testing"][0],
        test_labels=arrays["testing"][1],
        labels_are_clean=False,
        # NOTE(original): RandomCrop(64) without padding is the identity on 64x64 images; only the flip remains.
        aug=AugSpec(crop_padding=0, flip=True),
    )


def build_animal10n(cfg, device: torch.device | str = "cpu"):
    return build_in_memory(cfg, device, load_animal10n(cfg.data_path, reuse_cache=cfg.saved))
