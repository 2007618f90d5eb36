"""Your own images: one sub-folder per class, the folder name being the given (possibly wrong) label.

    DIR/train/<class>/**/*.{png,jpg,jpeg,bmp,gif,webp,tif,tiff,ppm}    training images, noisy labels
    DIR/test/<class>/...                                               optional clean held-out set

or the class folders directly in ``DIR`` (then there is no test folder). Classes are the sorted sub-folder
names of the training folder (torchvision ``ImageFolder``'s rule); test classes must be among them.
``--num_class`` must equal the number of class folders.

* Labels: the folder is the label. With ``--noise_mode real`` (the ``imagefolder`` preset) it is the noisy
  label and the truth is unknown; with ``instance|sym|asym`` the folders are taken as clean and synthetic
  noise is added on top (to test the method on data you trust).
* Size: every image is decoded once, converted to RGB (16-bit and float grayscale rescaled to 0-255 first),
  centre-cropped to a square and resized to ``--vae_size`` pixels (32, 64 or 224, the sizes the generative
  model exists for) and kept in memory as uint8 (N, S, S, 3); a set that would take more than half of the
  machine's memory is refused with the options that make it fit. The PreAct ResNet needs 32; use
  ``--backbone vgg19_bn`` at 64 and ``--backbone resnet50`` at 224.
* Cache: the decoded arrays are saved in ``DIR/instancegm_cache/`` (or the user cache when ``DIR`` is
  read-only), keyed by the listing and each file's size and modification time (``dataloaders/image_cache.py``):
  the next start, resume or ``predict`` maps them instead of decoding; any added, removed or rewritten file
  decodes again; ``--saved false`` forces it. Unreadable files are named together in one error.
* Order: the files are listed in sorted order, then shuffled once with a fixed seed (independent of
  ``--seed``), so ``--train_subset N`` takes a random N and training index i is always the same file;
  ``train_paths`` on the data module maps indices back to files.
* No ``DIR/test``: a fixed random 5% of the training images is held out instead, with a warning: the
  "test" accuracy then measures agreement with the noisy labels of unseen images, not accuracy.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .base import AugSpec, DataConfigError, DatasetNotFoundError, InMemoryDataModule, select_subset
from .image_cache import CACHE_FOLDER, cached_images, decode_images, to_rgb
from .in_memory import ArrayDataset, build_in_memory, check_num_classes

log = logging.getLogger("dataloaders")

IMAGE_EXTENSIONS = frozenset({".bmp", ".gif", ".jpeg", ".jpg", ".png", ".ppm", ".tif", ".tiff", ".webp"})
HOLDOUT_FRACTION = 0.05  # share of the training images held out as a (noisy) test set when DIR/test is absent
ORDER_SEED = 0  # the one fixed shuffle of the file lists
MAX_MEMORY_FRACTION = 0.5  # refuse a decoded set larger than this share of physical memory
NOISE_MODES = ("real", "instance", "sym", "asym")


@dataclass
class ImageList:
    """Image files of one split, their class indices and the class names the indices refer to."""

    paths: list[Path]
    labels: np.ndarray  # int64 (N,)
    classes: list[str]

    def take(self, order: np.ndarray) -> ImageList:
        return ImageList([self.paths[i] for i in order], self.labels[order], self.classes)


def find_folders(root: str | Path) -> tuple[Path, Path | None]:
    """(training folder, test folder or None): ``root/train`` and ``root/test``, else ``root`` alone."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"--data_path {root}: no such folder; expected {root}/train/<class>/<images> "
            f"(and optionally {root}/test/<class>/<images>), or {root}/<class>/<images>"
        )
    if (root / "train").is_dir():
        test = root / "test"
        return root / "train", (test if test.is_dir() else None)
    return root, None


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != CACHE_FOLDER)


def list_images(folder: Path, classes: list[str] | None = None) -> ImageList:
    """Every image under ``folder/<class>/`` (recursively, sorted). ``classes``: the training classes, which
    a test folder's names must come from (the label is the index in that list)."""
    subdirs = class_folders(folder)
    if not subdirs:
        raise DatasetNotFoundError(
            f"{folder} has no class sub-folders: put each class's images in {folder}/<class name>/"
        )
    names = [d.name for d in subdirs]
    if classes is None:
        classes = names
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise DataConfigError(
            f"{folder} has class folders {unknown} that the training folder lacks (training classes: {classes})"
        )
    stray = [p for p in folder.iterdir() if _is_image(p)]
    if stray:
        log.warning("%s: ignoring %d images that are not in a class sub-folder", folder, len(stray))
    index = {name: i for i, name in enumerate(classes)}
    paths, labels = [], []
    for d in subdirs:
        files = sorted(p for p in d.rglob("*") if _is_image(p))
        if not files:
            raise DatasetNotFoundError(f"class folder {d} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        paths += files
        labels += [index[d.name]] * len(files)
    return ImageList(paths, np.asarray(labels, dtype=np.int64), list(classes))


def list_flat_images(folder: Path) -> list[Path]:
    """Every image under ``folder`` (recursively, sorted), for unlabelled prediction."""
    return sorted(p for p in Path(folder).rglob("*") if _is_image(p))


def load_image(path: Path, size: int) -> np.ndarray:
    """One image as uint8 (size, size, 3): EXIF orientation applied, RGB, centre square crop, resized."""
    try:
        with Image.open(path) as img:
            img = to_rgb(ImageOps.exif_transpose(img), path)
            img = ImageOps.fit(img, (size, size), method=Image.Resampling.BICUBIC)
            return np.asarray(img, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetNotFoundError(f"cannot read image {path} ({err}); remove or replace the file") from None


def load_images(paths: list[Path], size: int, workers: int = 0) -> np.ndarray:
    """Decode ``paths`` into one uint8 (N, size, size, 3) array, in threads (PIL releases the GIL); every
    unreadable file is named in one error."""
    return decode_images(paths, size, True, threads=workers or None, decode=lambda p: load_image(p, size))


DECODER = "imagefolder-exif-fit-bicubic-v1"  # load_image's recipe, in the cache key: change it with the recipe


def cached_folder_images(paths: list[Path], root: Path, name: str, size: int, reuse: bool) -> np.ndarray:
    """``load_images`` through the decoded-image cache (keyed by the listing, sizes and mtimes)."""
    images, _, _ = cached_images(
        paths, root, name, size, resize=True, reuse=reuse, decode=lambda p: load_image(p, size), decoder_name=DECODER
    )
    return images


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_fits_in_memory(num_images: int, size: int) -> None:
    need, total = num_images * size * size * 3, _physical_memory()
    if total and need > MAX_MEMORY_FRACTION * total:
        raise DataConfigError(
            f"{num_images} images at {size}x{size} need {need / 2**30:.1f} GiB as uint8, more than half of this "
            f"machine's {total / 2**30:.1f} GiB: use a smaller --vae_size, or --train_subset N --balanced_subset"
        )


def shuffled(images: ImageList) -> ImageList:
    """The fixed shuffle (ORDER_SEED) of a sorted file list."""
    return images.take(np.random.RandomState(ORDER_SEED).permutation(len(images.paths)))


def load_imagefolder(cfg) -> tuple[ArrayDataset, list[Path], list[Path], dict]:
    """The decoded dataset, the training and test files in index order, and facts for ``noise_info``."""
    if cfg.noise_mode not in NOISE_MODES:
        raise DataConfigError(f"--noise_mode {cfg.noise_mode}: imagefolder takes {', '.join(NOISE_MODES)}")
    size = int(cfg.vae_size)
    if cfg.backbone.startswith("preact") and size != 32:
        raise DataConfigError(
            f"--vae_size {size} with --backbone {cfg.backbone}: the PreAct ResNet takes 32x32 images; "
            "use --backbone vgg19_bn at 64 or --backbone resnet50 at 224"
        )
    train_dir, test_dir = find_folders(cfg.data_path)
    train = shuffled(list_images(train_dir))
    num_classes = len(train.classes)
    check_num_classes(cfg, f"{train_dir} ({len(train.classes)} class folders)", num_classes)  # before decoding
    info = {"classes": train.classes, "train_folder": str(train_dir), "image_size": size}
    if test_dir is not None:
        test = shuffled(list_images(test_dir, train.classes))
        info["test"] = f"folder {test_dir}"
    else:
        if len(train.paths) < 2:
            raise DatasetNotFoundError(f"{train_dir}: need at least 2 images to hold one out for testing")
        hold = max(1, math.ceil(HOLDOUT_FRACTION * len(train.paths)))
        cut = len(train.paths) - hold
        train, test = train.take(np.arange(cut)), train.take(np.arange(cut, cut + hold))
        noisy = cfg.noise_mode == "real"
        info["test"] = f"held out {hold} training images" + (" (noisy labels)" if noisy else "")
        log.warning(
            "imagefolder: no %s folder; holding out %d of the training images (%.0f%%) as the test set%s",
            Path(cfg.data_path) / "test",
            hold,
            100 * HOLDOUT_FRACTION,
            ". Its labels are the folders' (noisy) ones: test accuracy = agreement with noisy labels" if noisy else "",
        )
    keep = select_subset(train.labels, cfg.train_subset, num_classes, cfg.balanced_subset, not cfg.smoke)
    found = len(train.paths)
    if cfg.noise_mode == "real" and len(keep) < found:
        # Real labels need nothing from the full set: decode only the subset (build_in_memory's own subset
        # step then keeps everything). Synthetic noise is drawn on the full set first, as for CIFAR.
        train = train.take(keep)
        info["train_subset"] = len(keep)
    if 0 < cfg.test_subset < len(test.paths):
        test = test.take(np.arange(cfg.test_subset))
        info["test_subset"] = cfg.test_subset
    check_fits_in_memory(len(train.paths) + len(test.paths), size)
    log.info(
        "imagefolder: %d classes, %d training images in %s, %d test images; decoding %d at %dx%d",
        num_classes,
        found,
        train_dir,
        len(test.paths),
        len(train.paths) + len(test.paths),
        size,
        size,
    )
    root = Path(cfg.data_path).expanduser()
    reuse = bool(getattr(cfg, "saved", True))
    data = ArrayDataset(
        name="imagefolder",
        num_classes=num_classes,
        train_images=cached_folder_images(train.paths, root, "imagefolder-train", size, reuse),
        train_labels=train.labels,
        test_images=cached_folder_images(test.paths, root, "imagefolder-test", size, reuse),
        test_labels=test.labels,
        labels_are_clean=cfg.noise_mode != "real",
        noise_cache_dir=str(Path(cfg.data_path).expanduser()),
        aug=AugSpec(crop_padding=size // 8),  # CIFAR's 4 pixels at 32, scaled with the image
    )
    # Synthetic noise: build_in_memory takes the subset after drawing the noise; the same ``keep`` names its files.
    train_paths = train.paths if cfg.noise_mode == "real" else [train.paths[i] for i in keep]
    return data, train_paths, test.paths, info


def build_imagefolder(cfg, device: torch.device | str = "cpu") -> InMemoryDataModule:
    data, train_paths, test_paths, info = load_imagefolder(cfg)
    module = build_in_memory(cfg, device, data)
    module.noise_info.update(info)
    module.train_paths = [str(p) for p in train_paths]
    module.data_root = str(Path(cfg.data_path).expanduser())
    module.test_paths = [str(p) for p in test_paths]
    return module
