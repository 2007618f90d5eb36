"""Clothing1M (Xiao et al., CVPR 2015) with DivideMix's per-epoch class-balanced subsets, docs/design.md: Clothing1M
(the original ``dataloader_clothing1M.py``, DivideMix's with the normalisation removed).

Layout under ``<root>`` = ``--data_path``: the five annotation files of the release,

* ``noisy_label_kv.txt`` / ``clean_label_kv.txt``: ``images/<a>/<b>/<file>.jpg <label>`` per line;
* ``noisy_train_key_list.txt``: the training keys (labels from the noisy file);
* ``clean_val_key_list.txt`` / ``clean_test_key_list.txt``: validation and test keys (clean labels);

and the images: the ``images/`` prefix of a key is stripped and the rest appended to the root (the original's
layout: the *contents* of the release's ``images/`` folder directly in the root). ``<root>/images/<a>/<b>/...``
(the folder kept as is) is accepted too.

The data cannot live in memory (1M images, 224x224): images are read per sample with PIL in DataLoader workers
(``--num_workers``). Modes, with B = ``--batch_size`` and the subsets drawn by DivideMix's rule (shuffle the
keys, keep a key while its class has fewer than n/14 picks and fewer than n are picked):

* warm-up: a fresh subset of ``num_batches * 2B`` images (the engine's batch is 2B), train transform; it is
  remembered as ``last_warmup_indices`` (the original's VAE batches all come from net2's epoch-0 subset);
* eval_train: a fresh subset of ``num_batches * B`` images at every call (so each net is divided on its own
  subset), test transform, yielding global sample indices that labeled/unlabeled loaders take back;
* validation / test: the clean lists, test transform; the engine keeps the best-validation weights.

Transforms: train ``Resize(256) -> RandomCrop(224) -> RandomHorizontalFlip -> ToTensor``, test
``Resize(256) -> CenterCrop(224) -> ToTensor``; no normalisation (README Differences #11).

Quick runs: ``--train_subset N`` keeps the first N training keys, ``--test_subset N`` the first N validation
and test keys.

Known truth: training keys that also appear in ``clean_label_kv.txt`` have a verified label;
``partial_clean_labels`` holds it (-1 elsewhere) and ``noise_info`` reports their noise rate. ``clean_labels``
stays None, because the engine's split statistics need the truth of every sample.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .base import (
    DataConfigError,
    DatasetNotFoundError,
    NoisyDataModule,
    _ArrayViews,
    _KeySampler,
    _OnDevice,
    _RandomBatchSampler,
    check_subset_size,
)

log = logging.getLogger("dataloaders")

NUM_CLASSES = 14
URL = "https://github.com/Cysu/noisy_label"
ANNOTATIONS = (
    "noisy_label_kv.txt",
    "clean_label_kv.txt",
    "noisy_train_key_list.txt",
    "clean_val_key_list.txt",
    "clean_test_key_list.txt",
)
PREFIX = "images/"
UNKNOWN = -1


def _layout(root: Path) -> str:
    return (
        f"{', '.join(ANNOTATIONS)} in {root} and the images at {root}/<a>/<b>/<file>.jpg (the contents of the "
        "release's images/ folder); request the dataset from the authors via " + URL
    )


def read_kv(path: Path) -> dict[str, int]:
    """``<key> <label>`` lines -> {key: label}."""
    tokens = path.read_text().split()
    if len(tokens) % 2 or not all(t.isdigit() for t in tokens[1::2]):
        raise DatasetNotFoundError(f"{path}: expected '<key> <label>' on every line")
    return dict(zip(tokens[0::2], map(int, tokens[1::2])))


def read_keys(path: Path) -> list[str]:
    return path.read_text().split()


def _labels_of(keys: list[str], table: dict[str, int], keys_file: str, table_file: str) -> np.ndarray:
    labels = np.fromiter((table.get(k, UNKNOWN) for k in keys), dtype=np.int64, count=len(keys))
    missing = np.flatnonzero(labels == UNKNOWN)
    if len(missing):
        raise DatasetNotFoundError(
            f"{len(missing)} keys of {keys_file} have no label in {table_file} (first: {keys[missing[0]]})"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DatasetNotFoundError(f"{table_file} has labels outside 0..{NUM_CLASSES - 1}")
    return labels


def image_base(root: Path, first_key: str) -> Path:
    """Where the stripped keys live: the root (original layout) or ``<root>/images`` (release folder kept)."""
    rel = first_key[len(PREFIX) :] if first_key.startswith(PREFIX) else first_key
    for base in (root, root / "images"):
        if (base / rel).is_file():
            return base
    raise DatasetNotFoundError(
        f"Clothing1M image {root / rel} not found (nor {root / 'images' / rel}): expected " + _layout(root)
    )


def _strip(keys: list[str]) -> np.ndarray:
    """Keys without the ``images/`` prefix, as one fixed-width bytes array (no per-string objects to copy
    into every DataLoader worker)."""
    # NOTE(original): it cut the first 7 characters of every key unconditionally.
    return np.array([k[len(PREFIX) :] if k.startswith(PREFIX) else k for k in keys], dtype=np.bytes_)


def class_balanced_subset(labels: Tensor, num_samples: int, num_classes: int, generator: torch.Generator) -> Tensor:
    """DivideMix's Clothing1M subset: shuffle, then keep a sample while its class has fewer than
    ``num_samples / num_classes`` picks and fewer than ``num_samples`` are picked. Indices in shuffled order.

    DIVERGES(original): the shuffle comes from the module's torch generator (saved in checkpoints), not from
    Python's global ``random``; the rule is the same.
    """
    perm = torch.randperm(len(labels), generator=generator)
    shuffled = labels[perm]
    rank = torch.empty(len(labels), dtype=torch.long)  # how many of its class come before it in the shuffle
    for c in range(num_classes):
        where = (shuffled == c).nonzero().squeeze(1)
        rank[where] = torch.arange(len(where))
    return perm[rank < num_samples / num_classes][:num_samples]


def train_transform():
    from torchvision import transforms as T

    return T.Compose([T.Resize(256), T.RandomCrop(224), T.RandomHorizontalFlip(), T.ToTensor()])


def eval_transform():
    from torchvision import transforms as T

    return T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])


class _FileViews(_ArrayViews):
    """``base._ArrayViews`` whose images are read from files: ``keys[idx]`` is a path relative to ``base``."""

    def __init__(
        self,
        base: Path,
        keys: np.ndarray,
        labels: Tensor,
        indices: Tensor,
        transform,
        views: int,
        weights: Tensor | None = None,
    ):
        super().__init__(keys, labels, indices, transform, views, weights)
        self.base, self.keys = base, keys

    def load_image(self, idx: int) -> Image.Image:
        path = self.base / self.keys[idx].decode()
        try:
            with Image.open(path) as f:
                return f.convert("RGB")
        except (OSError, UnidentifiedImageError) as err:
            raise DatasetNotFoundError(f"Clothing1M image {path} is missing or unreadable ({err})") from None


class Clothing1MDataModule(NoisyDataModule):
    """File-based Clothing1M with DivideMix's subsets (see the module docstring)."""

    name = "clothing1m"
    num_classes = NUM_CLASSES
    image_size = 224

    def __init__(
        self,
        root: str | Path,
        *,
        batch_size: int,
        num_batches: int,
        device: torch.device | str = "cpu",
        num_workers: int = 0,
        seed: int = 0,
        train_subset: int = 0,
        test_subset: int = 0,
        strict_subset: bool = True,  # False (smoke runs): a train_subset above the set's size means all
    ):
        root = Path(root).expanduser()
        missing = [name for name in ANNOTATIONS if not (root / name).is_file()]
        if missing:
            what = "not found" if len(missing) == len(ANNOTATIONS) else f"incomplete ({', '.join(missing)} missing)"
            raise DatasetNotFoundError(f"Clothing1M {what} under --data_path {root}: expected " + _layout(root))
        noisy_kv, clean_kv = read_kv(root / ANNOTATIONS[0]), read_kv(root / ANNOTATIONS[1])
        train_keys = read_keys(root / ANNOTATIONS[2])
        check_subset_size(train_subset, len(train_keys), strict_subset)
        if 0 < train_subset < len(train_keys):
            train_keys = train_keys[:train_subset]  # for quick runs: the first N keys of the list
        val_keys, test_keys = read_keys(root / ANNOTATIONS[3]), read_keys(root / ANNOTATIONS[4])
        if test_subset > 0:
            val_keys, test_keys = val_keys[:test_subset], test_keys[:test_subset]
        if not (train_keys and val_keys and test_keys):
            raise DatasetNotFoundError(f"Clothing1M: an empty key list in {root}; expected " + _layout(root))
        self.base = image_base(root, train_keys[0])
        self.batch_size, self.num_batches = batch_size, num_batches
        self.device, self.num_workers = torch.device(device), num_workers
        self.generator = torch.Generator().manual_seed(seed)

        self.noisy_labels = torch.as_tensor(_labels_of(train_keys, noisy_kv, ANNOTATIONS[2], ANNOTATIONS[0]))
        self.val_labels = torch.as_tensor(_labels_of(val_keys, clean_kv, ANNOTATIONS[3], ANNOTATIONS[1]))
        self.test_labels = torch.as_tensor(_labels_of(test_keys, clean_kv, ANNOTATIONS[4], ANNOTATIONS[1]))
        self._train, self._val, self._test = _strip(train_keys), _strip(val_keys), _strip(test_keys)
        self._all = torch.arange(len(train_keys))
        self.last_warmup_indices: Tensor | None = None

        truth = np.fromiter((clean_kv.get(k, UNKNOWN) for k in train_keys), dtype=np.int64, count=len(train_keys))
        self.partial_clean_labels = torch.as_tensor(truth)  # verified label of the training keys, -1 if none
        known = truth != UNKNOWN
        noisy = self.noisy_labels.numpy()
        self.noise_info = {
            "mode": "real",
            "rate": None,
            "num_train_keys": len(train_keys),
            "known_truth": int(known.sum()),
            "known_truth_noise_rate": float(np.mean(noisy[known] != truth[known])) if known.any() else None,
        }
        if train_subset:
            self.noise_info["train_subset"] = len(train_keys)
        log.info(
            "Clothing1M: %d training keys (%d with a verified label), %d validation, %d test images",
            len(train_keys),
            int(known.sum()),
            len(val_keys),
            len(test_keys),
        )

    # ---------------- helpers ----------------
    def _shards(self) -> int:
        return getattr(self, "world_size", 1)

    def _key_sampler(self, n: int, *, shuffle: bool, seeded: bool) -> _KeySampler:
        # Multi-process runs: the same global order on every rank, each keeping its shard (base.shard_order).
        shard = {"shard": self.shard_order} if self._shards() > 1 else {}
        return _KeySampler(n, self.generator, shuffle=shuffle, seeded=seeded, **shard)

    def _dataloader(self, dataset: Dataset, **kwargs) -> DataLoader:
        return DataLoader(
            dataset,
            num_workers=self.num_workers,
            generator=self.generator,  # worker base seeds: keeps the global RNG untouched
            pin_memory=self.device.type == "cuda",
            **kwargs,
        )

    def _loader(self, indices: Tensor, batch_size: int, *, augment: bool, views: int = 1, weights=None):
        tf = train_transform() if augment else eval_transform()
        ds = _FileViews(self.base, self._train, self.noisy_labels, indices, tf, views, weights)
        # Training modes shuffle (as the original's loaders); eval_train keeps the subset's (random) order.
        sampler = self._key_sampler(len(ds), shuffle=augment, seeded=augment)
        return _OnDevice(self._dataloader(ds, batch_size=batch_size, sampler=sampler), self.device)

    def _eval_set(self, keys: np.ndarray, labels: Tensor, batch_size: int):
        ds = _FileViews(self.base, keys, labels, torch.arange(len(labels)), eval_transform(), 1)
        sampler = self._key_sampler(len(ds), shuffle=False, seeded=False)
        return _OnDevice(self._dataloader(ds, batch_size=batch_size, sampler=sampler), self.device, keep_index=False)

    def balanced_subset(self, num_samples: int) -> Tensor:
        return class_balanced_subset(self.noisy_labels, num_samples, NUM_CLASSES, self.generator)

    # ---------------- modes ----------------
    def warmup_loader(self, batch_size: int):
        """A fresh class-balanced subset of ``num_batches * batch_size`` images (batch_size = 2B: 64,000)."""
        subset = self.balanced_subset(self.num_batches * batch_size)
        self.last_warmup_indices = subset
        return self._loader(subset, batch_size, augment=True)

    def eval_train_loader(self, batch_size: int):
        """A fresh class-balanced subset of ``num_batches * B`` images (32,000), whatever the eval batch size."""
        subset = self.balanced_subset(self.num_batches * self.batch_size)
        return self._loader(subset, batch_size, augment=False)

    def labeled_loader(self, indices: Tensor, prob: Tensor, batch_size: int):
        indices = torch.as_tensor(indices).long().cpu()
        w = torch.as_tensor(prob, dtype=torch.float32).cpu()
        if len(w) != len(indices):
            if len(w) != self.num_train:
                raise ValueError(f"{len(w)} probabilities for {len(indices)} labeled indices")
            w = w[indices]
        return self._loader(indices, batch_size, augment=True, views=2, weights=w)

    def unlabeled_loader(self, indices: Tensor, batch_size: int):
        return self._loader(torch.as_tensor(indices).long().cpu(), batch_size, augment=True, views=2)

    def test_loader(self, batch_size: int):
        return self._eval_set(self._test, self.test_labels, batch_size)

    def val_loader(self, batch_size: int):
        return self._eval_set(self._val, self.val_labels, batch_size)

    def vae_batches(self, batch_size: int, indices: Tensor | None = None) -> Iterator[tuple]:
        """Endless batches of ``batch_size`` distinct random training samples of ``indices`` (default: all),
        train transform, from one persistent DataLoader (the original built a loader per step,
        README Differences #19)."""
        pool = self._all if indices is None else torch.as_tensor(indices).long().cpu()
        ds = _FileViews(self.base, self._train, self.noisy_labels, pool, train_transform(), 1)
        if self._shards() > 1:  # one draw of world_size * batch distinct samples, each rank its own slice
            batch_size = min(batch_size, max(len(pool) // self._shards(), 1))
            sampler = _RandomBatchSampler(len(pool), batch_size, self.generator, self.rank, self._shards())
        else:
            sampler = _RandomBatchSampler(len(pool), min(batch_size, len(pool)), self.generator)
        yield from _OnDevice(self._dataloader(ds, batch_sampler=sampler), self.device)

    def sample_images(self, count: int) -> tuple[Tensor, Tensor, Tensor | None]:
        count = min(count, self.num_train)
        ds = _FileViews(self.base, self._train, self.noisy_labels, torch.arange(count), eval_transform(), 1)
        images = torch.stack([ds[(i, None)][0] for i in range(count)])
        return images, self.noisy_labels[:count], None


def build_clothing1m(cfg, device: torch.device | str = "cpu") -> Clothing1MDataModule:
    if cfg.noise_mode != "real":
        raise DataConfigError(
            f"--noise_mode {cfg.noise_mode}: Clothing1M has real noisy labels; pass --noise_mode real"
        )
    if cfg.data_pipeline == "device":
        raise DataConfigError("--data_pipeline device: Clothing1M is read per sample from files; use auto or pil")
    return Clothing1MDataModule(
        cfg.data_path,
        batch_size=cfg.batch_size,
        num_batches=cfg.num_batches,
        device=device,
        num_workers=cfg.num_workers,
        seed=cfg.seed,
        train_subset=cfg.train_subset,
        strict_subset=not cfg.smoke,
        test_subset=cfg.test_subset,
    )
