"""Decode a dataset's image files once into one uint8 array, cached on disk and keyed by the files themselves.

Used by the file-based datasets that fit in memory (Animal-10N at 64x64, Red Mini-ImageNet resized to 32x32,
image folders at ``--vae_size``).
The original re-decoded the whole folder for every loader it built, several times per epoch (README Differences #16);
here the images are decoded once, saved as ``<name>-<key>.npy`` and memory-mapped on later runs.

* Key: sha256 of the cache format version, the decoding parameters and, for every file in order, its path
  relative to the dataset root, size and modification time (``stat`` only: no image is read to check the
  cache). Adding, removing, renaming, reordering or rewriting a file gives a new key, hence a re-decode.
* Place: ``<root>/instancegm_cache/``, or ``~/.cache/instancegm/images/<root hash>/`` (``$XDG_CACHE_HOME``
  respected) when the data folder is read-only. An older cache of the same name in that folder is deleted
  when a new one is written.
* ``reuse=False`` (``--saved false``) decodes again and overwrites the cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from .base import DatasetNotFoundError

log = logging.getLogger("dataloaders")

CACHE_VERSION = 1  # bump when the decoding changes: every old cache then misses
CACHE_FOLDER = "instancegm_cache"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # ImageFolder's


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def user_image_cache(root: Path) -> Path:
    """The fallback cache folder of a read-only dataset root (one sub-folder per root)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return Path(base) / "instancegm" / "images" / digest


def listing_key(files: Sequence[Path], root: Path, params: str) -> str:
    """The cache key of ``files`` (in order): format version, ``params`` and each file's path, size, mtime."""
    digest = hashlib.sha256(f"instancegm-images/{CACHE_VERSION}|{params}\n".encode())
    for path in files:
        try:
            st = path.stat()
        except OSError as err:
            raise DatasetNotFoundError(f"{path} is listed but cannot be read ({err.strerror})") from None
        digest.update(f"{path.relative_to(root).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


MAX_LISTED_BAD_FILES = 20  # unreadable files named in the one error message; the rest are counted


def to_rgb(img: Image.Image, path: Path) -> Image.Image:
    """``img`` as 8-bit RGB. 16-bit and 32-bit integer and float grayscale images are rescaled to 0-255 first
    (PIL's ``convert`` clips them: a 16-bit PNG turns almost white, a 0-1 float TIFF black):

    * ``I;16`` (16-bit): value / 257, so 65535 -> 255.
    * ``I`` (32-bit integer, how many 16-bit files open): kept when at most 255, else / 257 up to 65535.
    * ``F`` (float): x 255 when at most 1.0 (a 0-1 image), kept when at most 255.

    Anything else out of range (negative, not finite, above 65535 / 255) is refused: the scale is unknown."""
    if img.mode not in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return img.convert("RGB")
    pixels = np.asarray(img, dtype=np.float64)
    top = float(pixels.max()) if pixels.size else 0.0
    if not np.isfinite(pixels).all() or (pixels.size and pixels.min() < 0):
        scale = None
    elif img.mode.startswith("I;16"):
        scale = 255.0 / 65535.0
    elif img.mode == "I":
        scale = 1.0 if top <= 255 else 255.0 / 65535.0 if top <= 65535 else None
    else:
        scale = 255.0 if top <= 1.0 else 1.0 if top <= 255 else None
    if scale is None:
        raise DatasetNotFoundError(
            f"{path} is a {img.mode}-mode image with values from {pixels.min():g} to {top:g}, outside the ranges "
            "this code rescales (0-1 or 0-255 float, 0-65535 integer); convert it to 8-bit"
        )
    gray = np.clip(np.rint(pixels * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def decode_image(path: Path, size: int, resize: bool) -> np.ndarray:
    """One image as uint8 (size, size, 3) RGB: resized (bilinear, as torchvision's ``Resize((size, size))`` on
    a PIL image), or checked to be size x size already."""
    try:
        with Image.open(path) as img:
            img = to_rgb(img, path)
    except (OSError, UnidentifiedImageError) as err:
        raise DatasetNotFoundError(f"{path} is not a readable image ({err}); replace it from the download") from None
    if resize:
        img = img.resize((size, size), Image.BILINEAR)
    elif img.size != (size, size):
        raise DatasetNotFoundError(f"{path} is {img.size[0]}x{img.size[1]}; this dataset's images are {size}x{size}")
    return np.asarray(img, dtype=np.uint8)


Decoder = Callable[[Path], np.ndarray]


def decode_images(
    files: Sequence[Path], size: int, resize: bool, threads: int | None = None, decode: Decoder | None = None
) -> np.ndarray:
    """All ``files`` as one uint8 (N, size, size, 3) array, decoded by a few threads (PIL releases the GIL).

    ``decode``: one file -> uint8 (size, size, 3) (default :func:`decode_image`). Every file is tried; the
    unreadable ones are named together in one error."""
    out = np.empty((len(files), size, size, 3), dtype=np.uint8)
    threads = threads or min(8, os.cpu_count() or 1)
    decode = decode or (lambda path: decode_image(path, size, resize))

    def fill(i: int) -> str | None:
        try:
            out[i] = decode(files[i])
        except DatasetNotFoundError as err:
            return str(err)
        return None

    bad = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        done = pool.map(fill, range(len(files)), chunksize=256)
        for error in tqdm(done, total=len(files), desc="decoding", leave=False, disable=None, mininterval=2.0):
            if error is not None:
                bad.append(error)
    if bad:
        shown = "; ".join(bad[:MAX_LISTED_BAD_FILES])
        more = f"; and {len(bad) - MAX_LISTED_BAD_FILES} more" if len(bad) > MAX_LISTED_BAD_FILES else ""
        raise DatasetNotFoundError(f"{len(bad)} of {len(files)} images cannot be used: {shown}{more}")
    return out


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, array)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _load(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached array, memory-mapped read-only, or None when the file is unusable."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as err:
        log.warning("image cache %s is unreadable (%s); decoding again", path, err)
        return None
    if array.dtype != np.uint8 or array.shape != shape:
        log.warning(
            "image cache %s holds %s %s, expected uint8 %s; decoding again", path, array.dtype, array.shape, shape
        )
        return None
    return array


def cached_images(
    files: Sequence[Path],
    root: Path,
    name: str,
    size: int,
    *,
    resize: bool,
    reuse: bool = True,
    decode: Decoder | None = None,
    decoder_name: str = "",
) -> tuple[np.ndarray, Path, bool]:
    """The decoded ``files`` as uint8 (N, size, size, 3), through the cache.

    Returns ``(images, cache_file, decoded)``; ``decoded`` is False when the cache was reused. ``name`` tells
    the caches of one root apart (``animal10n-training``, ``red-clean_validation``, ...). ``decode`` replaces
    :func:`decode_image`; ``decoder_name`` (part of the key) must change whenever what it returns changes.
    """
    root = Path(root)
    decoder = f"|decoder={decoder_name}" if decoder_name else ""  # none: the keys caches already written have
    key = listing_key(files, root, f"{name}|size={size}|resize={resize}{decoder}")
    filename = f"{name}-{key}.npy"
    shape = (len(files), size, size, 3)
    folders = [root / CACHE_FOLDER, user_image_cache(root)]
    if reuse:
        for folder in folders:
            if (folder / filename).is_file():
                images = _load(folder / filename, shape)
                if images is not None:
                    log.info("%s: %d decoded images from the cache %s", name, len(files), folder / filename)
                    return images, folder / filename, False
    folder = next((f for f in folders if _writable(f)), None)
    log.info(
        "%s: decoding %d images once%s",
        name,
        len(files),
        "" if folder is None else f" (cached in {folder / filename}; --saved false decodes again)",
    )
    images = decode_images(files, size, resize, decode=decode)
    if folder is None:
        log.warning("%s: neither %s nor %s is writable; the decoded images are not cached", name, *folders)
        return images, folders[0] / filename, True
    for stale in folder.glob(f"{name}-*.npy"):
        if stale.name != filename:
            stale.unlink(missing_ok=True)
    _save_atomic(folder / filename, images)
    return images, folder / filename, True
