"""The data side of DivideMix/InstanceGM: one object serving every loader mode the co-training loop needs.

Modes (README Datasets, the original ``run(mode)`` factories):

========================  =========================================  ===============================
method                    samples                                    yields
========================  =========================================  ===============================
``warmup_loader``         all training samples, train augmentation   ``(x, noisy_y, idx)``
``eval_train_loader``     all training samples, test transform       ``(x, noisy_y, idx)``
``labeled_loader``        given indices, their clean prob., 2 views  ``(x1, x2, noisy_y, w, idx)``
``unlabeled_loader``      given indices, 2 views                     ``(u1, u2, noisy_y, idx)``
``test_loader``           clean test set, test transform             ``(x, y)``
``val_loader``            clean validation set (or None), test       ``(x, y)``
``vae_batches``           endless: random distinct samples (of all,  ``(x, noisy_y, idx)``
                          or of the given ``indices``), train aug.
========================  =========================================  ===============================

Images come out as float tensors in [0, 1] on the module's device (never normalised: the continuous
Bernoulli likelihood needs [0, 1] targets); labels and weights on the device too; ``idx`` (positions in the
training set) stays on the CPU. Two pipelines produce them:

* ``device``: the whole uint8 training set lives on the device and random crop (zero padding) + horizontal
  flip are applied to a whole batch at once (:func:`device_augment`); no DataLoader, no worker processes.
* ``pil``: the original per-sample path, torchvision transforms on PIL images in DataLoader workers.

Both draw their randomness from the module's own ``torch.Generator`` (saved in checkpoints), so a run is
reproducible and resumable: the ``pil`` pipeline seeds each sample's transform from a seed drawn from that
generator, so its output depends neither on the number of workers nor on the global RNG. The augmentation
distribution is the same in both pipelines (tested).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from .transforms import (  # noqa: F401  (re-exported: the public names of the data side live here too)
    AugSpec,
    apply_augment,
    device_augment,
    draw_augment_params,
    pil_test_transform,
    pil_train_transform,
    to_float,
)

_SEED_RANGE = 2**62  # per-pass base seeds for the per-sample PIL transforms


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is missing or incomplete; the message names the expected layout and where to get it."""


class DataConfigError(ValueError):
    """A data setting the run cannot use (dataset name, --num_class, noise file, subset); the one-line
    message says what to pass instead."""


class _ArrayViews(Dataset):
    """Per-sample PIL path over an in-memory uint8 (N, H, W, C) array.

    Keys are ``(position, seed)`` pairs from :class:`_KeySampler` / :class:`_RandomBatchSampler`: ``position``
    indexes ``indices``; ``seed`` (None for the deterministic test transform) seeds torch's CPU RNG, which
    torchvision's random transforms use, for this one sample only.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: Tensor,
        indices: Tensor,
        transform,
        views: int,
        weights: Tensor | None = None,
    ):
        self.images, self.labels, self.indices = images, labels, indices
        self.transform, self.views, self.weights = transform, views, weights

    def __len__(self) -> int:
        return len(self.indices)

    def load_image(self, idx: int) -> Image.Image:
        """The PIL image of training sample ``idx`` (file-based datasets override this)."""
        array = self.images[idx]
        return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)

    def __getitem__(self, key: tuple[int, int | None]):
        pos, seed = key
        idx = int(self.indices[pos])
        img = self.load_image(idx)
        if seed is None:
            out = [self.transform(img) for _ in range(self.views)]
        else:
            # DIVERGES(original): its worker RNGs were unseeded; here each sample's transform is seeded from
            # the module generator (via the sampler), so runs repeat and resume exactly, for any num_workers.
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seed)
                out = [self.transform(img) for _ in range(self.views)]
        out.append(self.labels[idx])
        if self.weights is not None:
            out.append(self.weights[pos])
        out.append(idx)
        return tuple(out)


class _KeySampler(Sampler):
    """One pass over ``n`` positions (shuffled or in order) as ``(position, seed)`` keys of ``_ArrayViews``.

    The shuffle and one base seed per pass come from the module generator, in the main process.
    """

    def __init__(self, n: int, generator: torch.Generator, *, shuffle: bool, seeded: bool, shard=None):
        self.n, self.generator, self.shuffle, self.seeded = n, generator, shuffle, seeded
        self.shard = shard  # the module's shard_order (multi-process), or None

    def __len__(self) -> int:
        return self.n if self.shard is None else len(self.shard(torch.arange(self.n), pad=self.shuffle))

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator) if self.shuffle else torch.arange(self.n)
        base = int(torch.randint(0, _SEED_RANGE, (1,), generator=self.generator)) if self.seeded else None
        keys = [(int(pos), None if base is None else base + k) for k, pos in enumerate(order)]
        if self.shard is not None:  # same global order on every rank; each keeps its own slice
            keys = [keys[int(k)] for k in self.shard(torch.arange(len(keys)), pad=self.shuffle)]
        yield from keys


class _RandomBatchSampler(Sampler):
    """Endless batches of ``batch_size`` distinct random positions in [0, n) (with per-sample seeds): what
    the original got by creating a new shuffled DataLoader iterator every step and keeping its first batch
    (docs/design.md: The generative step; README Differences #19), without the rebuild."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, rank: int = 0, world_size: int = 1):
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.rank, self.world_size = rank, world_size

    def __iter__(self):
        while True:
            # Multi-process: one draw of world_size * batch distinct samples, each rank its own slice.
            pos = torch.randperm(self.n, generator=self.generator)[: self.batch_size * self.world_size].tolist()
            base = int(torch.randint(0, _SEED_RANGE, (1,), generator=self.generator))
            keys = [(p, base + k) for k, p in enumerate(pos)]
            yield keys[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]


class _OnDevice:
    """Wrap a DataLoader so every tensor of a batch arrives on ``device`` (indices stay on the CPU).

    Re-iterable (each pass is a new epoch of the DataLoader); ``keep_index=False`` drops the trailing index.
    """

    def __init__(self, loader: DataLoader, device: torch.device, keep_index: bool = True):
        self.loader, self.device, self.keep_index = loader, device, keep_index

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            *tensors, idx = batch
            tensors = tuple(t.to(self.device, non_blocking=True) for t in tensors)
            yield (*tensors, idx) if self.keep_index else tensors


class _TensorLoader:
    """Batches of an index order gathered from a device-resident uint8 tensor (the ``device`` pipeline).

    Iterating draws a fresh shuffle (if ``shuffle``) and fresh augmentations from the module generator, like
    a DataLoader with ``shuffle=True`` does each epoch.
    """

    def __init__(
        self,
        module: InMemoryDataModule,
        images: Tensor,
        labels: Tensor,
        indices: Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        augment: bool,
        views: int,
        weights: Tensor | None = None,
        with_index: bool = True,
    ):
        self.m, self.images, self.indices = module, images, indices
        self.labels = labels.to(images.device)
        self.batch_size, self.shuffle, self.augment, self.views = batch_size, shuffle, augment, views
        self.weights, self.with_index = weights, with_index

    def __len__(self) -> int:
        return math.ceil(len(self.m.shard_order(torch.arange(len(self.indices)), pad=self.shuffle)) / self.batch_size)

    def __iter__(self) -> Iterator[tuple]:
        gen, dev = self.m.aug_generator, self.images.device
        n = len(self.indices)
        order = torch.randperm(n, generator=self.m.generator) if self.shuffle else torch.arange(n)
        order = self.m.shard_order(order, pad=self.shuffle)
        for start in range(0, len(order), self.batch_size):
            pos = order[start : start + self.batch_size]
            idx = self.indices[pos]
            idx_dev = idx.to(dev, non_blocking=True)
            raw = self.images[idx_dev]  # (b, C, H, W) uint8
            if self.augment:
                views = [to_float(device_augment(raw, self.m.aug, gen)) for _ in range(self.views)]
            else:
                views = [to_float(raw)]
            out = [*views, self.labels[idx_dev]]
            if self.weights is not None:
                out.append(self.weights[pos].to(dev, non_blocking=True))
            if self.with_index:
                out.append(idx)
            yield tuple(out)


class NoisyDataModule:
    """Interface of every dataset (see the module docstring for the modes).

    Subclasses set ``name``, ``num_classes``, ``image_size``, ``noisy_labels`` (int64, CPU, one per
    training sample), ``clean_labels`` (same, or None when the truth is unknown), ``noise_info`` and
    implement the loaders.
    """

    name: str = ""
    num_classes: int = 0
    image_size: int = 32
    noisy_labels: Tensor
    clean_labels: Tensor | None = None
    noise_info: dict

    @property
    def num_train(self) -> int:
        return len(self.noisy_labels)

    @property
    def is_clean(self) -> Tensor | None:
        """Boolean mask of training samples whose given label is correct (None when unknown)."""
        return None if self.clean_labels is None else self.noisy_labels == self.clean_labels

    def warmup_loader(self, batch_size: int):
        raise NotImplementedError

    def eval_train_loader(self, batch_size: int):
        raise NotImplementedError

    def labeled_loader(self, indices: Tensor, prob: Tensor, batch_size: int):
        raise NotImplementedError

    def unlabeled_loader(self, indices: Tensor, batch_size: int):
        raise NotImplementedError

    def test_loader(self, batch_size: int):
        raise NotImplementedError

    def val_loader(self, batch_size: int):
        """Clean validation set for model selection, if the dataset has one."""
        return None

    def vae_batches(self, batch_size: int, indices: Tensor | None = None) -> Iterator[tuple]:
        """Endless random batches of distinct samples for the generative step; ``indices``: draw only from these
        (Clothing1M's fixed warm-up subset), else from the whole training set."""
        raise NotImplementedError

    def sample_images(self, count: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """A few (test-transform) training images with their noisy and (if known) clean labels, for logs."""
        raise NotImplementedError

    # Randomness of the data side (shuffles, augmentation, subsets): saved with every checkpoint.
    generator: torch.Generator
    # Multi-process runs: every rank draws the same shuffles/subsets from ``generator`` and keeps its own
    # shard; augmentations come from a per-rank generator so the ranks' crops are independent.
    rank: int = 0
    world_size: int = 1

    @property
    def aug_generator(self) -> torch.Generator:
        return getattr(self, "_aug_generator", None) or self.generator

    def set_distributed(self, rank: int, world_size: int, seed: int) -> None:
        self.rank, self.world_size = rank, world_size
        if world_size > 1:
            self._aug_generator = torch.Generator().manual_seed(seed * 1_000_003 + rank)

    def shard_order(self, order: Tensor, pad: bool) -> Tensor:
        """This rank's part of a global sample order (DistributedSampler semantics): with ``pad`` (training
        loaders) the order wraps around so every rank gets the same number of samples, hence of steps;
        evaluation shards are not padded (their results are gathered)."""
        if self.world_size == 1:
            return order
        if pad and len(order) % self.world_size:
            extra = self.world_size - len(order) % self.world_size
            order = torch.cat([order, order.repeat(extra // max(len(order), 1) + 1)[:extra]])
        return order[self.rank :: self.world_size]

    def state_dict(self) -> dict:
        state = {"generator": self.generator.get_state()}
        if self.aug_generator is not self.generator:
            state["aug_generator"] = self.aug_generator.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        if "aug_generator" in state and self.aug_generator is not self.generator:
            self.aug_generator.set_state(state["aug_generator"])

    def identity(self) -> dict[str, str]:
        """Digests of what the run trains on, stored in every checkpoint so a resume on other data is refused.

        ``train_labels``: the training labels in index order (a noise file rewritten in place, another subset or
        another label file changes it). ``train_files`` (datasets read from files, e.g. image folders): each
        training file's path below ``data_root`` and its size, in index order, so added, removed or renamed
        images, which move every index to another file, are seen. Sizes, not modification times: a copy of the
        folder on another node (a requeued job) is the same data.
        """
        digest = {"train_labels": hashlib.sha256(self.noisy_labels.numpy().astype("<i8").tobytes()).hexdigest()[:16]}
        paths = getattr(self, "train_paths", None)
        if paths:
            root = getattr(self, "data_root", "") or os.path.commonpath(paths)
            listing = hashlib.sha256()
            for path in paths:
                try:
                    size = os.stat(path).st_size
                except OSError:
                    size = -1  # gone since it was decoded: it still counts as a change of the listing
                listing.update(f"{os.path.relpath(path, root)}\t{size}\n".encode())
            digest["train_files"] = listing.hexdigest()[:16]
        return digest

    def resume(self, state: dict, seed: int) -> None:
        """Continue from a checkpoint's data state (after :meth:`set_distributed`).

        The shared generator (shuffles, subsets) is the checkpoint's on every rank. A checkpoint holds rank 0's
        augmentation stream only, so in a multi-process run each rank starts a stream of its own from ``seed``
        (which the caller varies per resume): restoring rank 0's everywhere would give every rank the same crops.
        """
        self.load_state_dict(state)
        if self.world_size > 1:
            self.set_distributed(self.rank, self.world_size, seed)


def _long(labels) -> Tensor | None:
    return None if labels is None else torch.as_tensor(np.asarray(labels), dtype=torch.long)


class InMemoryDataModule(NoisyDataModule):
    """A dataset that fits in memory as one uint8 array (CIFAR, Fashion-MNIST, 32×32 Red, 64×64 Animal-10N).

    ``train_images``/``test_images`` are uint8 (N, H, W, C) numpy arrays; labels are int arrays.
    """

    def __init__(
        self,
        name: str,
        train_images: np.ndarray,
        noisy_labels: np.ndarray,
        test_images: np.ndarray,
        test_labels: np.ndarray,
        num_classes: int,
        *,
        clean_labels: np.ndarray | None = None,
        aug: AugSpec = AugSpec(),  # noqa: B008  (frozen dataclass: immutable)
        pipeline: str = "device",
        device: torch.device | str = "cpu",
        num_workers: int = 0,
        seed: int = 0,
        val_images: np.ndarray | None = None,
        val_labels: np.ndarray | None = None,
        noise_info: dict | None = None,
    ):
        if pipeline not in ("device", "pil"):
            raise ValueError(f"pipeline {pipeline!r}: choose 'device' or 'pil'")
        for what, images in (("train", train_images), ("test", test_images), ("val", val_images)):
            if images is not None and (images.ndim != 4 or images.dtype != np.uint8):
                raise ValueError(f"{what} images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
        if len(train_images) != len(noisy_labels):
            raise ValueError(f"{len(train_images)} training images but {len(noisy_labels)} labels")
        if len(test_images) != len(test_labels):
            raise ValueError(f"{len(test_images)} test images but {len(test_labels)} labels")
        self.name, self.num_classes, self.aug, self.pipeline = name, num_classes, aug, pipeline
        self.device = torch.device(device)
        self.num_workers = num_workers
        self.image_size = int(train_images.shape[1])
        self.noisy_labels = _long(noisy_labels)
        self.clean_labels = _long(clean_labels)
        self.test_labels = _long(test_labels)
        self.val_labels = _long(val_labels)
        self.noise_info = dict(noise_info or {})
        self.generator = torch.Generator().manual_seed(seed)
        self._np_train, self._np_test, self._np_val = train_images, test_images, val_images
        self._all = torch.arange(len(train_images))
        if pipeline == "device":
            # NHWC -> NCHW once; the whole set stays on the device as uint8 (CIFAR-10: 150 MB).
            def put(a):
                return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).to(self.device)

            self._train = put(train_images)
            self._test = put(test_images)
            self._val = None if val_images is None else put(val_images)
        self._labels_dev = self.noisy_labels.to(self.device)

    # ---------------- helpers ----------------
    def _tensor(
        self,
        which: str,
        indices: Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        augment: bool,
        views: int = 1,
        weights: Tensor | None = None,
        labels: Tensor | None = None,
        with_index: bool = True,
    ):
        images = {"train": self._train, "test": self._test, "val": self._val}[which]
        return _TensorLoader(
            self,
            images,
            self._labels_dev if labels is None else labels,
            indices,
            batch_size,
            shuffle=shuffle,
            augment=augment,
            views=views,
            weights=weights,
            with_index=with_index,
        )

    def _pil(
        self,
        images: np.ndarray,
        labels: Tensor,
        indices: Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        augment: bool,
        views: int = 1,
        weights: Tensor | None = None,
        with_index: bool = True,
    ):
        tf = pil_train_transform(self.image_size, self.aug) if augment else pil_test_transform()
        ds = _ArrayViews(images, labels, indices, tf, views, weights)
        loader = DataLoader(
            ds,
            batch_size=batch_size,
            sampler=_KeySampler(
                len(ds),
                self.generator,
                shuffle=shuffle,
                seeded=augment,
                shard=self.shard_order if self.world_size > 1 else None,
            ),
            num_workers=self.num_workers,
            generator=self.generator,  # worker base seeds: keeps the global RNG untouched
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        return _OnDevice(loader, self.device, keep_index=with_index)

    def _loader(
        self,
        indices: Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        augment: bool,
        views: int = 1,
        weights: Tensor | None = None,
    ):
        if self.pipeline == "device":
            return self._tensor(
                "train", indices, batch_size, shuffle=shuffle, augment=augment, views=views, weights=weights
            )
        return self._pil(
            self._np_train,
            self.noisy_labels,
            indices,
            batch_size,
            shuffle=shuffle,
            augment=augment,
            views=views,
            weights=weights,
        )

    # ---------------- modes ----------------
    def warmup_loader(self, batch_size: int):
        return self._loader(self._all, batch_size, shuffle=True, augment=True)

    def eval_train_loader(self, batch_size: int):
        return self._loader(self._all, batch_size, shuffle=False, augment=False)

    def labeled_loader(self, indices: Tensor, prob: Tensor, batch_size: int):
        """``prob``: the clean probability of each of ``indices`` (or of every training sample)."""
        indices = torch.as_tensor(indices).long().cpu()
        w = torch.as_tensor(prob, dtype=torch.float32).cpu()
        if len(w) != len(indices):
            if len(w) != self.num_train:
                raise ValueError(f"{len(w)} probabilities for {len(indices)} labeled indices")
            w = w[indices]
        return self._loader(indices, batch_size, shuffle=True, augment=True, views=2, weights=w)

    def unlabeled_loader(self, indices: Tensor, batch_size: int):
        indices = torch.as_tensor(indices).long().cpu()
        return self._loader(indices, batch_size, shuffle=True, augment=True, views=2)

    def _eval_set(self, which: str, batch_size: int):
        labels = self.test_labels if which == "test" else self.val_labels
        images = self._np_test if which == "test" else self._np_val
        idx = torch.arange(len(labels))
        if self.pipeline == "device":
            return self._tensor(which, idx, batch_size, shuffle=False, augment=False, labels=labels, with_index=False)
        return self._pil(images, labels, idx, batch_size, shuffle=False, augment=False, with_index=False)

    def test_loader(self, batch_size: int):
        return self._eval_set("test", batch_size)

    def val_loader(self, batch_size: int):
        return None if self.val_labels is None else self._eval_set("val", batch_size)

    def vae_batches(self, batch_size: int, indices: Tensor | None = None) -> Iterator[tuple]:
        """Endless fresh batches of ``batch_size`` distinct random training samples (from ``indices``, default
        all), train augmentation. One generator for the whole run: no loader is built per step."""
        pool = self._all if indices is None else torch.as_tensor(indices).long().cpu()
        batch_size = min(batch_size, max(len(pool) // self.world_size, 1))
        if self.pipeline == "device":
            while True:
                # Multi-process: one draw of world_size * batch distinct samples, each rank its own slice.
                perm = torch.randperm(len(pool), generator=self.generator)[: batch_size * self.world_size]
                idx = pool[perm[self.rank * batch_size : (self.rank + 1) * batch_size]]
                idx_dev = idx.to(self.device, non_blocking=True)
                x = to_float(device_augment(self._train[idx_dev], self.aug, self.aug_generator))
                yield x, self._labels_dev[idx_dev], idx
        else:
            ds = _ArrayViews(self._np_train, self.noisy_labels, pool, pil_train_transform(self.image_size, self.aug), 1)
            loader = DataLoader(
                ds,
                batch_sampler=_RandomBatchSampler(len(pool), batch_size, self.generator, self.rank, self.world_size),
                num_workers=self.num_workers,
                generator=self.generator,
                pin_memory=self.device.type == "cuda",
            )
            yield from _OnDevice(loader, self.device)

    def sample_images(self, count: int) -> tuple[Tensor, Tensor, Tensor | None]:
        count = min(count, self.num_train)
        images = torch.from_numpy(np.ascontiguousarray(self._np_train[:count].transpose(0, 3, 1, 2)))
        clean = None if self.clean_labels is None else self.clean_labels[:count]
        return to_float(images), self.noisy_labels[:count], clean


def check_subset_size(size: int, available: int, strict: bool = True) -> None:
    """``--train_subset`` larger than the training set is an error (``strict``; smoke runs cap it silently)."""
    if strict and size > available:
        raise DataConfigError(
            f"--train_subset {size}: the training set has only {available} samples; "
            f"pass at most {available} (or 0 for all of them)"
        )


def select_subset(labels: np.ndarray, size: int, num_classes: int, balanced: bool, strict: bool = True) -> np.ndarray:
    """Indices of a training subset: the first ``size`` samples, or the first size/K of each class."""
    check_subset_size(size, len(labels), strict)
    if size <= 0 or size >= len(labels):
        return np.arange(len(labels))
    if not balanced:
        return np.arange(size)
    per_class = size // num_classes
    if per_class == 0:
        raise DataConfigError(
            f"--train_subset {size} --balanced_subset: no room for {num_classes} classes; "
            f"pass at least --train_subset {num_classes}"
        )
    labels = np.asarray(labels)
    picks = [np.flatnonzero(labels == c)[:per_class] for c in range(num_classes)]
    return np.sort(np.concatenate(picks))
