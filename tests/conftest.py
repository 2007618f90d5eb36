"""Shared test fixtures: tiny datasets written in the real on-disk formats, and a tiny in-memory data module.

Everything is CPU-only, deterministic and small (milliseconds to build).

Tests marked ``isolated`` run in a child pytest process: they reach native kernels that depend on the CPU's
features (channels-last convolutions, bf16 autocast), and a crash in such a kernel must fail that one test with its
reason, not kill the whole test run.
"""

from __future__ import annotations

import gzip
import os
import pickle
import re
import signal
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

# Debian's dataset-fashion-mnist: the real dataset of the end-to-end tests (`from conftest import needs_fmnist`).
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
needs_fmnist = pytest.mark.skipif(not FMNIST.exists(), reason="apt-get install dataset-fashion-mnist")

ISOLATED_CHILD = "INSTANCEGM_ISOLATED_TEST"  # set in the child process: run the test itself there
ISOLATED_TIMEOUT_S = 900  # a native kernel can also hang; the suite must still end


def _isolated_outcome(nodeid: str, rc: int | None, output: str) -> None:
    """Turn the child's exit into this test's outcome (pass, skip with the child's reason, or fail)."""
    tail = "\n".join(output.strip().splitlines()[-25:])
    if rc is None:
        pytest.fail(f"hung: no result after {ISOLATED_TIMEOUT_S} s in its own process\n{tail}", pytrace=False)
    if rc < 0:
        name = signal.Signals(-rc).name
        pytest.fail(f"native crash: the test's process was killed by {name} (rerun: python -m pytest {nodeid})\n"
                    f"{tail}", pytrace=False)  # fmt: skip
    if rc != 0:
        pytest.fail(f"failed in its own process (exit {rc})\n{tail}", pytrace=False)
    skipped = re.search(r"SKIPPED \[\d+\] [^:]+:\d+: (.*)", output)
    if skipped and not re.search(r"\b1 passed\b", output):
        pytest.skip(skipped.group(1))


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if pyfuncitem.get_closest_marker("isolated") is None or os.environ.get(ISOLATED_CHILD):
        return None  # run in this process
    rootdir = pyfuncitem.config.rootpath
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-o", "addopts=", pyfuncitem.nodeid]
    env = dict(os.environ, **{ISOLATED_CHILD: "1"})
    try:
        done = subprocess.run(cmd, cwd=rootdir, env=env, capture_output=True, text=True, timeout=ISOLATED_TIMEOUT_S)
        rc, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        rc, output = None, (err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes) else ""
    _isolated_outcome(pyfuncitem.nodeid, rc, output)
    return True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``cuda`` tests are skipped without a GPU; every other test runs on the CPU whether or not one is there."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


# One marked CIFAR pixel per channel of the first training image, (channel, row, col) -> value, so a
# transposition or channel mix-up moves it.
CIFAR_MARKERS = {(0, 1, 5): 255, (2, 30, 0): 200}


@dataclass
class TinySplit:
    """What a fixture wrote: the two layouts' roots and the arrays a correct reader must return."""

    official: Path  # <root>/<tarball folder>/...
    flat: Path  # the files directly in <root>
    train_images: np.ndarray  # (N, 32, 32, 3) uint8, HWC
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    fine_to_coarse: np.ndarray | None = None


def _planar(images_hwc: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(images_hwc.transpose(0, 3, 1, 2)).reshape(len(images_hwc), -1)


def _dump(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _cifar_images(rs: np.random.RandomState, n: int) -> np.ndarray:
    images = rs.randint(0, 200, size=(n, 32, 32, 3)).astype(np.uint8)
    images[0] = 0
    for (c, row, col), value in CIFAR_MARKERS.items():
        images[0, row, col, c] = value
    return images


@pytest.fixture
def tiny_cifar10(tmp_path) -> TinySplit:
    """CIFAR-10 python-pickle files, 5 x 20 training + 20 test images, in both layouts."""
    rs = np.random.RandomState(0)
    train_x, test_x = _cifar_images(rs, 100), rs.randint(0, 256, size=(20, 32, 32, 3)).astype(np.uint8)
    train_y, test_y = np.arange(100) % 10, (np.arange(20) * 3) % 10
    official, flat = tmp_path / "official", tmp_path / "flat"
    for folder in (official / "cifar-10-batches-py", flat):
        for i in range(5):
            part = slice(20 * i, 20 * (i + 1))
            batch = {
                "batch_label": f"training batch {i + 1} of 5",
                "labels": train_y[part].tolist(),
                "data": _planar(train_x[part]),
                "filenames": [f"img{j}.png" for j in range(20)],
            }
            _dump(folder / f"data_batch_{i + 1}", batch)
        _dump(folder / "test_batch", {"labels": test_y.tolist(), "data": _planar(test_x)})
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _dump(official / "cifar-10-batches-py" / "batches.meta", {"label_names": names, "num_vis": 3072})
    return TinySplit(official, flat, train_x, train_y, test_x, test_y)


@pytest.fixture
def tiny_cifar100(tmp_path) -> TinySplit:
    """CIFAR-100 ``train``/``test`` pickles (2 training and 1 test image per class), both layouts."""
    rs = np.random.RandomState(1)
    coarse_of = rs.permutation(100) // 5  # 20 superclasses of 5 fine classes, not consecutive
    train_x, test_x = _cifar_images(rs, 200), rs.randint(0, 256, size=(100, 32, 32, 3)).astype(np.uint8)
    train_y, test_y = np.arange(200) % 100, rs.permutation(100)
    official, flat = tmp_path / "official", tmp_path / "flat"
    for folder in (official / "cifar-100-python", flat):
        for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
            _dump(
                folder / name, {"fine_labels": y.tolist(), "coarse_labels": coarse_of[y].tolist(), "data": _planar(x)}
            )
    meta = {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": [f"s{i}" for i in range(20)]}
    _dump(official / "cifar-100-python" / "meta", meta)
    return TinySplit(official, flat, train_x, train_y, test_x, test_y, fine_to_coarse=coarse_of)


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    """An idx file of unsigned bytes: magic 0x00000800 + ndim, big-endian int32 sizes, then the data."""
    payload = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


@pytest.fixture
def tiny_fashion_mnist(tmp_path) -> TinySplit:
    """Fashion-MNIST idx files (30 train, 10 test, 28x28): gzipped in ``official``, plain in
    ``flat/FashionMNIST/raw`` (torchvision's root) -- ``official``/``flat`` here name the two roots."""
    rs = np.random.RandomState(2)
    train_x = rs.randint(1, 256, size=(30, 28, 28)).astype(np.uint8)
    train_x[0] = 0
    train_x[0, 3, 20] = 255  # marker: row 3, column 20 of the 28x28 image
    test_x = rs.randint(1, 256, size=(10, 28, 28)).astype(np.uint8)
    train_y, test_y = np.arange(30) % 10, np.arange(10)[::-1].copy()
    direct, torchvision_root = tmp_path / "fmnist", tmp_path / "tv"
    for folder, compress in ((direct, True), (torchvision_root / "FashionMNIST" / "raw", False)):
        write_idx(folder / "train-images-idx3-ubyte", train_x, compress)
        write_idx(folder / "train-labels-idx1-ubyte", train_y, compress)
        write_idx(folder / "t10k-images-idx3-ubyte", test_x, compress)
        write_idx(folder / "t10k-labels-idx1-ubyte", test_y, compress)
    return TinySplit(direct, torchvision_root, train_x, train_y, test_x, test_y)


# ---------------- a tiny noisy data module (generic: the engine tests use it too) ----------------
TINY_TRAIN, TINY_TEST, TINY_CLASSES, TINY_FLIPPED = 64, 20, 10, 16  # 16 / 64 = 25% wrong labels


def tiny_arrays(seed: int = 0) -> dict:
    """Random 32x32 RGB images, 10 classes; exactly TINY_FLIPPED training labels changed (known mask)."""
    rs = np.random.RandomState(seed)
    clean = np.arange(TINY_TRAIN) % TINY_CLASSES
    flipped = np.zeros(TINY_TRAIN, dtype=bool)
    flipped[rs.permutation(TINY_TRAIN)[:TINY_FLIPPED]] = True
    noisy = clean.copy()
    noisy[flipped] = (clean[flipped] + rs.randint(1, TINY_CLASSES, size=TINY_FLIPPED)) % TINY_CLASSES
    return dict(
        train_images=rs.randint(0, 256, size=(TINY_TRAIN, 32, 32, 3)).astype(np.uint8),
        noisy_labels=noisy,
        clean_labels=clean,
        test_images=rs.randint(0, 256, size=(TINY_TEST, 32, 32, 3)).astype(np.uint8),
        test_labels=np.arange(TINY_TEST) % TINY_CLASSES,
        flipped=flipped,
    )


@pytest.fixture
def make_tiny_module():
    """Factory: ``make_tiny_module(pipeline="device", seed=0, **InMemoryDataModule kwargs)``."""
    from dataloaders.base import InMemoryDataModule

    def make(pipeline: str = "device", seed: int = 0, **kwargs):
        a = tiny_arrays()
        return InMemoryDataModule(
            "tiny",
            a["train_images"],
            a["noisy_labels"],
            a["test_images"],
            a["test_labels"],
            TINY_CLASSES,
            clean_labels=a["clean_labels"],
            pipeline=pipeline,
            device="cpu",
            seed=seed,
            **kwargs,
        )

    return make


@pytest.fixture
def tiny_module(make_tiny_module):
    """64 random 32x32 images, 10 classes, 25% flipped labels (``module.is_clean`` is the mask), CPU."""
    return make_tiny_module()


@pytest.fixture
def interrupt_train_epoch(monkeypatch):
    """``interrupt(n)``: the n-th ``CoTrainer.train_epoch`` call raises KeyboardInterrupt (a killed run);
    ``restore()`` puts the real method back."""
    from training.trainer import CoTrainer

    original = CoTrainer.train_epoch
    calls = {"n": 0}

    class Control:
        @staticmethod
        def interrupt(at_call: int) -> None:
            def crashing(self, epoch, peer, other, split):
                calls["n"] += 1
                if calls["n"] == at_call:
                    raise KeyboardInterrupt
                return original(self, epoch, peer, other, split)

            monkeypatch.setattr(CoTrainer, "train_epoch", crashing)

        @staticmethod
        def restore() -> None:
            monkeypatch.setattr(CoTrainer, "train_epoch", original)

    return Control
