"""What ``python -m training.predict`` hands a user who wants to fix their labels: files and a picture.

* ``--relabel FILE.npy``: the corrected label vector (the given label, or the ensemble's prediction where the
  sample is flagged), one int64 label per sample of the set that ``--noise_file`` replaces, so a follow-up run
  with ``--noise_file FILE.npy`` (and the same data settings) trains on it directly;
* ``--drop FILE.npy``: the indices of the samples kept (not flagged), in the same index space as the CSV's
  ``index`` column;
* ``--pred_probs FILE.npy``: the ensemble's class probabilities, N x K float32, rows in index order, cleanlab's
  ``pred_probs`` layout;
* ``suspects.png``: the top-N suspects (lowest clean probability) as thumbnails, each captioned with its given
  -> predicted class and its clean probability.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

TILE = 96  # thumbnail side, pixels
CAPTION = 30  # two text lines under each thumbnail
PAD = 4
MAX_COLUMNS = 8


def corrected_labels(given: np.ndarray, predicted: np.ndarray, flagged: np.ndarray) -> np.ndarray:
    """The given labels with each flagged sample's label replaced by the prediction."""
    given, predicted, flagged = np.asarray(given), np.asarray(predicted), np.asarray(flagged, dtype=bool)
    return np.where(flagged, predicted, given).astype(np.int64)


def noise_file_vector(corrected: np.ndarray, dataset_index: np.ndarray | None, base: np.ndarray | None) -> np.ndarray:
    """The label vector ``--noise_file`` takes: one label per image of the dataset's training file.

    A ``--train_subset`` run scores only some images (``dataset_index``: their places in the file); the others keep
    the run's own labels ``base`` (its full noisy-label vector), which the follow-up run with the same subset never
    reads. ``base`` None is only possible when the run trained on the whole file.
    """
    corrected = np.asarray(corrected, dtype=np.int64)
    whole = dataset_index is None or np.array_equal(dataset_index, np.arange(len(corrected)))
    if whole and (base is None or len(base) == len(corrected)):
        return corrected
    if base is None:
        raise ValueError(
            "--relabel: this run trained on a subset and its full label file is unknown (r = 0?); "
            "rerun predict on a run without --train_subset, or use --drop"
        )
    full = np.asarray(base, dtype=np.int64).copy()
    full[np.asarray(dataset_index)] = corrected
    return full


def save_npy(path: str | Path, array: np.ndarray) -> Path:
    """``np.save`` to a ``.npy`` path (parents created); anything else is refused before scoring."""
    path = Path(path)
    check_npy(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array, allow_pickle=False)
    return path


def check_npy(path: str | Path) -> None:
    if Path(path).suffix != ".npy":
        raise ValueError(f"{path}: the file must end in .npy (it is written with numpy.save)")


def check_output_file(path: str | Path, flag: str) -> None:
    """Refuse, before any work, an output file that could not be written: a folder, or under a file or a folder
    without write permission (missing folders are created when it is written)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder: pass a file name, e.g. {path / 'predictions.csv'}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{flag} {path}: {parent} is a file, not a folder; pass another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: no permission to write in {parent}; pass another path")


def sheet_grid(n: int) -> tuple[int, int]:
    """(columns, rows) of a contact sheet of ``n`` tiles."""
    columns = max(1, min(n, MAX_COLUMNS))
    return columns, max(1, math.ceil(n / columns))


def contact_sheet(
    images: Sequence[np.ndarray],
    given: Sequence[str],
    predicted: Sequence[str],
    clean_prob: Sequence[float],
    path: str | Path,
    score_name: str = "p_clean",
) -> Path:
    """A PNG of thumbnails in reading order, each captioned ``given -> predicted`` and ``p_clean 0.03`` (or, for
    a set too small for the GMM, ``score_name`` ``p_given``).

    ``images``: uint8 (H, W, C) arrays (C = 1 or 3), most suspect first; tiles are TILE + CAPTION pixels high.
    """
    from PIL import Image, ImageDraw

    n = len(images)
    columns, rows = sheet_grid(n)
    width, height = TILE + 2 * PAD, TILE + CAPTION + 2 * PAD
    sheet = Image.new("RGB", (columns * width, rows * height), "white")
    draw = ImageDraw.Draw(sheet)
    for i, image in enumerate(images):
        x0, y0 = (i % columns) * width + PAD, (i // columns) * height + PAD
        pixels = np.asarray(image)
        if pixels.ndim == 3 and pixels.shape[2] == 1:
            pixels = pixels[:, :, 0]
        thumb = Image.fromarray(pixels.astype(np.uint8)).convert("RGB").resize((TILE, TILE), Image.NEAREST)
        sheet.paste(thumb, (x0, y0))
        draw.text((x0, y0 + TILE + 2), f"{given[i][:7]}->{predicted[i][:7]}", fill="black")
        draw.text((x0, y0 + TILE + 15), f"{score_name} {clean_prob[i]:.2f}", fill=(170, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
