"""Data side: dataset readers on tiny files in the real formats, every loader mode of both pipelines, the
augmentation distribution, reproducibility, and the noisy-label plumbing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from scipy import stats

import dataloaders
import tools
from dataloaders import DATASET_STATS, build_data, cifar, fashion_mnist
from dataloaders import base as base_module
from dataloaders import noise as noise_module
from dataloaders.base import DataConfigError, DatasetNotFoundError, select_subset
from dataloaders.in_memory import build_in_memory
from dataloaders.transforms import (
    AugSpec,
    apply_augment,
    device_augment,
    draw_augment_params,
    pil_train_transform,
)
from tests.conftest import CIFAR_MARKERS, TINY_CLASSES, TINY_TRAIN, tiny_arrays
from training.config import Config

PIPELINES = ["device", "pil"]


def make_cfg(**changes) -> Config:
    base = dict(dataset="cifar10", num_classes=10, noise_mode="instance", r=0.0, num_workers=0, seed=0)
    return Config(**{**base, **changes})


def uint8(x: torch.Tensor) -> torch.Tensor:
    """Back from [0, 1] float to the uint8 pixels (exact: ToTensor divides by 255)."""
    return (x * 255).round().to(torch.uint8)


def augmented_versions(image_chw: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """All (2p+1)^2 crops x 2 flips of one uint8 image: what RandomCrop(padding) + flip can output."""
    h, w = image_chw.shape[1:]
    padded = torch.nn.functional.pad(image_chw, (padding,) * 4)
    crops = [padded[:, i : i + h, j : j + w] for i in range(2 * padding + 1) for j in range(2 * padding + 1)]
    crops = torch.stack(crops)
    return torch.cat([crops, crops.flip(3)])  # (2 (2p+1)^2, C, H, W)


def is_augmented_copy(view: torch.Tensor, image_hwc: np.ndarray) -> bool:
    candidates = augmented_versions(torch.from_numpy(image_hwc).permute(2, 0, 1))
    return bool((candidates == uint8(view)).flatten(1).all(1).any())


# =========================================== CIFAR readers ===========================================
@pytest.mark.parametrize("layout", ["official", "flat"])
def test_cifar10_reader_both_layouts(tiny_cifar10, layout):
    data = cifar.load_cifar(getattr(tiny_cifar10, layout), 10)
    assert data.name == "cifar10" and data.num_classes == 10
    assert data.train_images.shape == (100, 32, 32, 3) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (20, 32, 32, 3)
    np.testing.assert_array_equal(data.train_images, tiny_cifar10.train_images)
    np.testing.assert_array_equal(data.train_labels, tiny_cifar10.train_labels)
    np.testing.assert_array_equal(data.test_images, tiny_cifar10.test_images)
    np.testing.assert_array_equal(data.test_labels, tiny_cifar10.test_labels)
    for (c, row, col), value in CIFAR_MARKERS.items():  # channel-planar -> HWC at the right place
        assert data.train_images[0, row, col, c] == value
    assert data.train_images[0].sum() == sum(CIFAR_MARKERS.values())


def test_cifar_torchvision_branch_matches_reader(tiny_cifar10, tiny_cifar100, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # the fixtures pass as "real"

    def no_reader(*args, **kwargs):
        raise AssertionError("the official layout with a passing md5 check must go through torchvision")

    monkeypatch.setattr(cifar, "_read_split", no_reader)
    data = cifar.load_cifar(tiny_cifar10.official, 10)
    np.testing.assert_array_equal(data.train_images, tiny_cifar10.train_images)
    assert data.train_images.flags.c_contiguous
    np.testing.assert_array_equal(data.test_labels, tiny_cifar10.test_labels)
    data100 = cifar.load_cifar(tiny_cifar100.official, 100)
    np.testing.assert_array_equal(data100.train_labels, tiny_cifar100.train_labels)
    np.testing.assert_array_equal(data100.superclasses, tiny_cifar100.fine_to_coarse)


@pytest.mark.parametrize("layout", ["official", "flat"])
def test_cifar100_reader(tiny_cifar100, layout):
    data = cifar.load_cifar(getattr(tiny_cifar100, layout), 100)
    assert data.name == "cifar100" and data.train_images.shape == (200, 32, 32, 3)
    np.testing.assert_array_equal(data.train_labels, tiny_cifar100.train_labels)
    np.testing.assert_array_equal(data.test_labels, tiny_cifar100.test_labels)
    np.testing.assert_array_equal(data.train_images, tiny_cifar100.train_images)
    np.testing.assert_array_equal(data.superclasses, tiny_cifar100.fine_to_coarse)


def test_cifar_missing_data_message(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        build_data(make_cfg(data_path=str(tmp_path)))
    msg = str(err.value)
    assert "\n" not in msg
    assert f"{tmp_path}/cifar-10-batches-py/{{data_batch_1..5,test_batch}}" in msg
    assert f"{tmp_path}/{{data_batch_1..5,test_batch}}" in msg
    assert "bash cifar10.sh" in msg and "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg
    assert "python instanceGM.py --dataset fashionmnist --smoke" in msg  # what to try offline

    with pytest.raises(DatasetNotFoundError) as err:
        build_data(make_cfg(dataset="cifar100", num_classes=100, data_path=str(tmp_path)))
    msg = str(err.value)
    assert "\n" not in msg and "cifar-100-python/{train,test}" in msg
    assert "bash cifar10.sh cifar100" in msg and "cifar-100-python.tar.gz" in msg

    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")  # what the original download script leaves
    with pytest.raises(DatasetNotFoundError, match="tar -xzf"):
        cifar.load_cifar(tmp_path, 10)


def test_cifar_incomplete_or_corrupt(tiny_cifar10):
    (tiny_cifar10.official / "cifar-10-batches-py" / "test_batch").unlink()  # torchvision never sees it
    with pytest.raises(DatasetNotFoundError, match="CIFAR-10 not found"):
        cifar.load_cifar(tiny_cifar10.official, 10)
    (tiny_cifar10.flat / "data_batch_2").write_bytes(b"not a pickle")
    with pytest.raises(DatasetNotFoundError, match="data_batch_2 is not a CIFAR python-pickle file"):
        cifar.load_cifar(tiny_cifar10.flat, 10)


def test_class_count_mismatch(tiny_cifar100):
    with pytest.raises(DataConfigError) as err:
        build_data(make_cfg(dataset="cifar100", num_classes=10, data_path=str(tiny_cifar100.flat), r=0.4))
    assert str(err.value) == "--num_class 10 but cifar100 has 100 classes: pass --num_class 100"
    assert not list(tiny_cifar100.flat.glob("*.npy"))  # refused before generating any noise


def test_unknown_dataset_lists_names():
    with pytest.raises(DataConfigError, match="known datasets are cifar10, cifar100, fashionmnist"):
        build_data(make_cfg(dataset="svhn"))


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_cifar_module_orientation(tiny_cifar10, pipeline):
    data = build_data(make_cfg(data_path=str(tiny_cifar10.official), data_pipeline=pipeline))
    assert data.pipeline == pipeline and data.num_train == 100 and data.noise_info["file"] is None
    x, y, idx = next(iter(data.eval_train_loader(8)))
    assert x.shape == (8, 3, 32, 32) and idx.tolist() == list(range(8))
    for (c, row, col), value in CIFAR_MARKERS.items():
        assert x[0, c, row, col] == pytest.approx(value / 255)
    assert torch.equal(uint8(x[0]).sum(), torch.tensor(sum(CIFAR_MARKERS.values())))
    assert torch.equal(y, torch.as_tensor(tiny_cifar10.train_labels[:8]))


# =========================================== Fashion-MNIST ===========================================
@pytest.mark.parametrize("layout", ["official", "flat"])  # gz in the folder / plain in FashionMNIST/raw
def test_fashion_mnist_reader(tiny_fashion_mnist, layout, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_PATH", Path("/nonexistent/fashion-mnist"))
    data = fashion_mnist.load_fashion_mnist(getattr(tiny_fashion_mnist, layout))
    assert data.train_images.shape == (30, 32, 32, 3) and data.test_images.shape == (10, 32, 32, 3)
    assert data.train_images.dtype == np.uint8
    np.testing.assert_array_equal(data.train_labels, tiny_fashion_mnist.train_labels)
    np.testing.assert_array_equal(data.test_labels, tiny_fashion_mnist.test_labels)
    inner = data.train_images[:, 2:30, 2:30]
    np.testing.assert_array_equal(inner[..., 1], tiny_fashion_mnist.train_images)
    assert (inner == inner[..., :1]).all()  # gray replicated to 3 channels
    border = data.train_images.copy()
    border[:, 2:30, 2:30] = 0
    assert not border.any()  # 2-pixel zero border
    assert (data.train_images[0, 5, 22] == 255).all() and data.train_images[0].sum() == 3 * 255
    assert data.noise_images.shape == (30, 28, 28, 1)


def test_fashion_mnist_missing_message(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_PATH", tmp_path / "debian")
    with pytest.raises(DatasetNotFoundError) as err:
        build_data(make_cfg(dataset="fashionmnist", data_path=str(tmp_path / "none")))
    msg = str(err.value)
    assert "\n" not in msg and "apt-get install dataset-fashion-mnist" in msg
    assert "FashionMNIST/raw" in msg and "t10k-labels-idx1-ubyte" in msg and str(tmp_path / "none") in msg


def test_fashion_mnist_default_path_and_fallback(tiny_fashion_mnist, tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_PATH", tiny_fashion_mnist.official)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    empty = tmp_path / "empty"
    empty.mkdir()
    # none given / the configuration's default path without the files -> the Debian folder
    for data_path, fallback in (("", None), ("./cifar-10", True)):
        data = fashion_mnist.load_fashion_mnist(data_path, fallback)
        assert len(data.train_images) == 30
        assert data.noise_cache_dir == str(tmp_path / "cache" / "instancegm" / "noise")  # not the system dir
    # a folder the user chose that holds no data is an error naming what was expected there
    with pytest.raises(DatasetNotFoundError, match="train-images-idx3-ubyte") as err:
        build_data(make_cfg(dataset="fashionmnist", data_path=str(empty)))
    assert f"not found in {empty}, {empty / 'FashionMNIST' / 'raw'}: expected" in str(err.value)  # no fallback
    module = build_data(make_cfg(dataset="fashionmnist", data_path="", r=0.3))
    assert Path(module.noise_info["file"]).parent == tmp_path / "cache" / "instancegm" / "noise"


REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not (REAL_FMNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_real_debian_package():
    data = fashion_mnist.load_fashion_mnist(str(REAL_FMNIST))
    assert data.train_images.shape == (60000, 32, 32, 3) and data.test_images.shape == (10000, 32, 32, 3)
    assert np.bincount(data.train_labels).tolist() == [6000] * 10
    assert np.bincount(data.test_labels).tolist() == [1000] * 10
    border = data.test_images.copy()
    border[:, 2:30, 2:30] = 0
    assert not border.any()
    assert (data.test_images == data.test_images[..., :1]).all()
    assert data.train_images[:, 2:30, 2:30].any(axis=(1, 2, 3)).all()  # no blank image
    pixels = data.train_images[..., 0] / 255.0
    mean, std = DATASET_STATS["fashionmnist"]
    assert pixels.mean() == pytest.approx(mean[0], abs=1e-4) and pixels.std() == pytest.approx(std[0], abs=1e-4)


# =========================================== loader modes ===========================================
@pytest.fixture(params=PIPELINES)
def module(request, make_tiny_module):
    return make_tiny_module(request.param)


def test_tiny_module_fixture(tiny_module):
    arrays = tiny_arrays()
    assert tiny_module.num_train == TINY_TRAIN and tiny_module.num_classes == TINY_CLASSES
    assert torch.equal(~tiny_module.is_clean, torch.from_numpy(arrays["flipped"]))
    assert (~tiny_module.is_clean).float().mean() == 0.25


def check_images(x: torch.Tensor, n: int) -> None:
    assert x.shape == (n, 3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1


def test_warmup_loader(module):
    arrays = tiny_arrays()
    seen = []
    loader = module.warmup_loader(24)
    assert len(loader) == math.ceil(TINY_TRAIN / 24)
    for x, y, idx in loader:
        check_images(x, len(idx))
        assert torch.equal(y, module.noisy_labels[idx])
        assert all(is_augmented_copy(v, arrays["train_images"][i]) for v, i in zip(x, idx.tolist()))
        seen += idx.tolist()
    assert sorted(seen) == list(range(TINY_TRAIN)) and seen != list(range(TINY_TRAIN))  # all, shuffled


def test_eval_train_loader_in_dataset_order(module):
    arrays = tiny_arrays()
    batches = list(module.eval_train_loader(24))
    x = torch.cat([b[0] for b in batches])
    idx = torch.cat([b[2] for b in batches])
    assert torch.equal(idx, torch.arange(TINY_TRAIN))
    assert torch.equal(uint8(x), torch.from_numpy(arrays["train_images"]).permute(0, 3, 1, 2))
    assert torch.equal(torch.cat([b[1] for b in batches]), module.noisy_labels)


def test_labeled_loader_views_and_weights(module):
    arrays = tiny_arrays()
    indices = torch.arange(0, TINY_TRAIN, 3)
    prob = torch.rand(len(indices), generator=torch.Generator().manual_seed(0))
    weight_of = dict(zip(indices.tolist(), prob.tolist()))
    seen, views_differ = [], False
    for x1, x2, y, w, idx in module.labeled_loader(indices, prob, 8):
        check_images(x1, len(idx))
        check_images(x2, len(idx))
        assert w.dtype == torch.float32
        assert w.tolist() == pytest.approx([weight_of[i] for i in idx.tolist()])
        assert torch.equal(y, module.noisy_labels[idx])
        for a, b, i in zip(x1, x2, idx.tolist()):
            assert is_augmented_copy(a, arrays["train_images"][i]) and is_augmented_copy(b, arrays["train_images"][i])
        views_differ |= not torch.equal(x1, x2)
        seen += idx.tolist()
    assert sorted(seen) == indices.tolist() and views_differ
    # The clean probability of every training sample is accepted too.
    full = torch.zeros(TINY_TRAIN)
    full[indices] = prob
    for *_, w, idx in module.labeled_loader(indices, full, 8):
        assert w.tolist() == pytest.approx([weight_of[i] for i in idx.tolist()])
    with pytest.raises(ValueError, match="probabilities"):
        module.labeled_loader(indices, prob[:-1], 8)


def test_unlabeled_loader(module):
    arrays = tiny_arrays()
    indices = torch.tensor([1, 5, 9, 30, 63])
    seen = []
    for u1, u2, y, idx in module.unlabeled_loader(indices, 2):
        check_images(u1, len(idx))
        check_images(u2, len(idx))
        assert torch.equal(y, module.noisy_labels[idx])
        assert all(is_augmented_copy(u, arrays["train_images"][i]) for u, i in zip(u2, idx.tolist()))
        seen += idx.tolist()
    assert sorted(seen) == indices.tolist()


def test_test_loader_clean_labels_in_order(module):
    arrays = tiny_arrays()
    loader = module.test_loader(8)
    assert len(loader) == 3
    for _ in range(2):  # re-iterable, every epoch
        batches = list(loader)
        assert all(len(b) == 2 for b in batches)
        x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        assert torch.equal(y, torch.from_numpy(arrays["test_labels"]))
        assert torch.equal(uint8(x), torch.from_numpy(arrays["test_images"]).permute(0, 3, 1, 2))
    assert module.val_loader(8) is None


def test_vae_batches(module, monkeypatch):
    built = []
    real_loader = base_module.DataLoader

    def counting_loader(*args, **kwargs):
        if module.pipeline == "device":
            raise AssertionError("the device pipeline must not build a DataLoader")
        built.append(1)
        return real_loader(*args, **kwargs)

    monkeypatch.setattr(base_module, "DataLoader", counting_loader)
    arrays = tiny_arrays()
    stream = module.vae_batches(16)
    batches = [next(stream) for _ in range(6)]
    assert len(built) == (0 if module.pipeline == "device" else 1)  # one loader for the whole run
    for x, y, idx in batches:
        check_images(x, 16)
        assert len(set(idx.tolist())) == 16  # distinct samples within a batch
        assert torch.equal(y, module.noisy_labels[idx])
        assert all(is_augmented_copy(v, arrays["train_images"][i]) for v, i in zip(x, idx.tolist()))
    assert len({tuple(sorted(b[2].tolist())) for b in batches}) == 6  # a fresh draw every step
    pool = torch.tensor([2, 4, 6, 8, 10])
    x, y, idx = next(module.vae_batches(16, indices=pool))
    assert sorted(idx.tolist()) == pool.tolist()  # capped at the pool size, only pool members


def test_sample_images(tiny_module):
    images, noisy, clean = tiny_module.sample_images(5)
    assert images.shape == (5, 3, 32, 32)
    assert torch.equal(noisy, tiny_module.noisy_labels[:5]) and torch.equal(clean, tiny_module.clean_labels[:5])


# ===================================== augmentation distribution =====================================
MARKER_ROW, MARKER_COL = 10, 12


def marker_image() -> np.ndarray:
    """Black image with a 2-pixel marker (255 then 128 to its right): position gives the crop offset, the
    order of the two values the flip."""
    img = np.zeros((32, 32, 3), dtype=np.uint8)
    img[MARKER_ROW, MARKER_COL] = 255
    img[MARKER_ROW, MARKER_COL + 1] = 128
    return img


def offset_histogram(batch_uint8: torch.Tensor) -> np.ndarray:
    """(9, 9, 2) counts of (top offset, left offset, flip) recovered from the marker's position."""
    flat = batch_uint8[:, 0].flatten(1)
    a, b = (flat == 255).int().argmax(1), (flat == 128).int().argmax(1)
    assert ((flat == 255).sum(1) == 1).all() and ((flat == 128).sum(1) == 1).all()
    row, col_a, col_b = a // 32, a % 32, b % 32
    flipped = col_b < col_a
    top = MARKER_ROW + 4 - row
    left = torch.where(flipped, col_a - (31 - MARKER_COL - 4), MARKER_COL + 4 - col_a)
    hist = np.zeros((9, 9, 2), dtype=np.int64)
    np.add.at(hist, (top.numpy(), left.numpy(), flipped.long().numpy()), 1)
    return hist


def assert_uniform(hist: np.ndarray) -> None:
    n, cells = hist.sum(), hist.size
    expected = n / cells
    chi2 = ((hist - expected) ** 2 / expected).sum()
    assert (hist > 0).all(), "some offset/flip never drawn"
    assert chi2 < stats.chi2.ppf(1 - 1e-6, cells - 1), f"chi-square {chi2:.1f} for {cells - 1} dof"


def test_augmentation_distribution_device_vs_torchvision():
    draws = 162 * 40
    img = marker_image()
    spec = AugSpec()
    batch = torch.from_numpy(img).permute(2, 0, 1).expand(draws, 3, 32, 32).contiguous()
    device_out = device_augment(batch, spec, torch.Generator().manual_seed(0))
    assert_uniform(offset_histogram(device_out))

    torch.manual_seed(0)
    tf = pil_train_transform(32, spec)
    pil = Image.fromarray(img)
    tv_out = torch.stack([uint8(tf(pil)) for _ in range(draws)])
    assert_uniform(offset_histogram(tv_out))


def test_device_crop_equals_torchvision_crop():
    rs = np.random.RandomState(0)
    images = torch.from_numpy(rs.randint(0, 256, size=(24, 3, 32, 32)).astype(np.uint8))
    spec = AugSpec()
    offsets, flips = draw_augment_params(len(images), spec, torch.Generator().manual_seed(5))
    out = apply_augment(images, offsets, flips, spec)
    assert flips.any() and (~flips).any()
    for i in range(len(images)):
        pil = TF.pad(Image.fromarray(images[i].permute(1, 2, 0).numpy()), [4])  # RandomCrop's zero padding
        ref = TF.crop(pil, int(offsets[0, i]), int(offsets[1, i]), 32, 32)
        if flips[i]:
            ref = TF.hflip(ref)
        assert torch.equal(out[i], TF.pil_to_tensor(ref))
    again = device_augment(images, spec, torch.Generator().manual_seed(5))
    assert torch.equal(again, out)  # device_augment = draw_augment_params + apply_augment
    assert torch.equal(apply_augment(images, offsets, flips, AugSpec(crop_padding=0, flip=False)), images)


# ========================================= reproducibility =========================================
@pytest.mark.parametrize("pipeline", PIPELINES)
def test_same_seed_same_first_batch(make_tiny_module, pipeline):
    first = [next(iter(make_tiny_module(pipeline, seed=s).warmup_loader(16))) for s in (7, 7, 8)]
    torch.manual_seed(123)  # the global RNG plays no part
    again = next(iter(make_tiny_module(pipeline, seed=7).warmup_loader(16)))
    for a, b in zip(first[0], first[1]):
        assert torch.equal(a, b)
    for a, b in zip(first[0], again):
        assert torch.equal(a, b)
    assert not torch.equal(first[0][2], first[2][2])


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_generator_state_round_trip(make_tiny_module, pipeline):
    m = make_tiny_module(pipeline, seed=1)
    next(iter(m.warmup_loader(16)))  # move the state along
    state = m.state_dict()
    a = next(iter(m.labeled_loader(torch.arange(20), torch.ones(20), 8)))
    b = next(iter(m.labeled_loader(torch.arange(20), torch.ones(20), 8)))
    assert not torch.equal(a[0], b[0])
    other = make_tiny_module(pipeline, seed=99)
    other.load_state_dict(state)
    c = next(iter(other.labeled_loader(torch.arange(20), torch.ones(20), 8)))
    for u, v in zip(a, c):
        assert torch.equal(u, v)


def test_resumed_ranks_keep_augmentation_streams_of_their_own(make_tiny_module):
    ranks = [make_tiny_module("device", seed=1) for _ in range(2)]
    for rank, m in enumerate(ranks):
        m.set_distributed(rank, 2, seed=1)
        next(iter(m.warmup_loader(16)))
    saved = ranks[0].state_dict()  # only rank 0 writes the checkpoint
    for m in ranks:
        m.resume(saved, seed=1 + 7919)
    assert all(torch.equal(m.generator.get_state(), saved["generator"]) for m in ranks)  # same shuffles
    draws = [torch.randint(2**62, (4,), generator=m.aug_generator) for m in ranks]
    assert not torch.equal(draws[0], draws[1])  # but not the same crops and flips


def test_pil_pipeline_independent_of_workers(make_tiny_module):
    single = next(iter(make_tiny_module("pil", seed=3).warmup_loader(16)))
    multi = next(iter(make_tiny_module("pil", seed=3, num_workers=2).warmup_loader(16)))
    for a, b in zip(single, multi):
        assert torch.equal(a, b)


# ========================================= noisy labels =========================================
def test_instance_noise_cached_under_exact_rate(tiny_cifar10):
    root = tiny_cifar10.flat
    cfg = make_cfg(data_path=str(root), r=0.45, noise_seed=123)
    first = build_data(cfg)
    path = root / tools.noise_file_name("cifar10", "instance", 0.45, 123)
    info = first.noise_info
    assert path.is_file() and info["file"] == str(path) and info["created"] is True
    assert info["mode"] == "instance" and info["rate"] == 0.45 and info["seed"] == 123
    # Exactly what the original fed the generator: the full training set, uint8 0-255, H x W x C.
    expected = tools.instance_dependent_noise(tiny_cifar10.train_images, tiny_cifar10.train_labels, 10, 0.45, seed=123)
    assert torch.equal(first.noisy_labels, torch.from_numpy(expected))
    assert info["realised_rate"] == pytest.approx(float(np.mean(expected != tiny_cifar10.train_labels)))
    transition = np.array(info["transition"])
    assert transition.shape == (10, 10) and np.allclose(transition.sum(1), 1.0, atol=1e-3)
    assert len(info["sha256"]) == 64 and info["sha256_of"] == "file"

    second = build_data(cfg)
    assert second.noise_info["created"] is False and second.noise_info["sha256"] == info["sha256"]
    assert torch.equal(second.noisy_labels, first.noisy_labels)

    other = build_data(cfg.replace(r=0.5))
    assert other.noise_info["file"] != info["file"] and Path(other.noise_info["file"]).is_file()
    assert other.noise_info["created"] is True


def test_noise_dir_and_unwritable_fallback(tiny_cifar10, tmp_path, monkeypatch):
    cfg = make_cfg(data_path=str(tiny_cifar10.flat), r=0.3, noise_dir=str(tmp_path / "noise"))
    assert Path(build_data(cfg).noise_info["file"]).parent == tmp_path / "noise"
    monkeypatch.setattr(noise_module, "_writable", lambda directory: False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = build_data(cfg.replace(noise_dir="", r=0.2))
    assert Path(data.noise_info["file"]).parent == tmp_path / "cache" / "instancegm" / "noise"
    assert not list(tiny_cifar10.flat.glob("*.npy"))


def test_clean_and_loaded_labels(tiny_cifar10, tmp_path):
    clean = build_data(make_cfg(data_path=str(tiny_cifar10.flat), r=0.0))
    assert torch.equal(clean.noisy_labels, clean.clean_labels) and clean.noise_info["realised_rate"] == 0.0
    assert clean.noise_info["sha256_of"] == "labels"

    given = (tiny_cifar10.train_labels + 1) % 10
    original_file = tmp_path / "0.5_instance.pt"  # the original's torch.save of a numpy array
    torch.save(given, original_file)
    loaded = build_data(make_cfg(data_path=str(tiny_cifar10.flat), r=0.5, noise_file=str(original_file)))
    assert torch.equal(loaded.noisy_labels, torch.from_numpy(given))
    assert loaded.noise_info["file"] == str(original_file) and loaded.noise_info["realised_rate"] == 1.0
    assert not list(tiny_cifar10.flat.glob("*.npy"))

    human = tmp_path / "CIFAR-10_human.pt"
    torch.save({"worse_label": given, "aggre_label": tiny_cifar10.train_labels}, human)
    cfg = make_cfg(data_path=str(tiny_cifar10.flat), noise_mode="human", noise_file=str(human))
    assert build_data(cfg).noise_info["realised_rate"] == 1.0
    assert build_data(cfg.replace(noise_key="aggre_label")).noise_info["realised_rate"] == 0.0
    with pytest.raises(DataConfigError, match="no key 'noisy_label'"):
        build_data(cfg.replace(noise_key="noisy_label"))

    short = tmp_path / "short.npy"
    np.save(short, given[:50])
    with pytest.raises(DataConfigError, match="holds 50 labels but the training set has 100"):
        build_data(make_cfg(data_path=str(tiny_cifar10.flat), r=0.5, noise_file=str(short)))
    with pytest.raises(DatasetNotFoundError, match="--noise_file"):
        build_data(make_cfg(data_path=str(tiny_cifar10.flat), r=0.5, noise_file=str(tmp_path / "missing.pt")))


def test_asymmetric_cifar100_stays_in_superclass(tiny_cifar100):
    data = build_data(
        make_cfg(dataset="cifar100", num_classes=100, data_path=str(tiny_cifar100.flat), noise_mode="asym", r=0.4)
    )
    coarse = tiny_cifar100.fine_to_coarse
    noisy, clean = data.noisy_labels.numpy(), data.clean_labels.numpy()
    assert (noisy != clean).sum() > 40
    np.testing.assert_array_equal(coarse[noisy], coarse[clean])
    assert "transition" not in data.noise_info  # K = 100 > 20
    assert Path(data.noise_info["file"]).name == tools.noise_file_name("cifar100", "asym", 0.4, 123)


def test_train_subset_keeps_full_set_noise(tiny_cifar10):
    cfg = make_cfg(data_path=str(tiny_cifar10.flat), r=0.4)
    full = build_data(cfg)
    plain = build_data(cfg.replace(train_subset=30))
    assert plain.num_train == 30 and plain.noise_info["train_subset"] == 30
    assert torch.equal(plain.noisy_labels, full.noisy_labels[:30])
    assert plain.noise_info["file"] == full.noise_info["file"]  # noise made on the full set, once
    balanced = build_data(cfg.replace(train_subset=50, balanced_subset=True))
    assert balanced.num_train == 50
    assert torch.bincount(balanced.clean_labels, minlength=10).tolist() == [5] * 10
    keep = select_subset(tiny_cifar10.train_labels, 50, 10, balanced=True)
    assert torch.equal(balanced.noisy_labels, full.noisy_labels[keep])
    with pytest.raises(DataConfigError, match="no room for 10 classes"):
        select_subset(tiny_cifar10.train_labels, 5, 10, balanced=True)
    # larger than the set: an error that states the set's size (not silently all samples, unbalanced)
    with pytest.raises(DataConfigError, match="--train_subset 101: the training set has only 100 samples"):
        build_data(cfg.replace(train_subset=101, balanced_subset=True))
    assert build_data(cfg.replace(train_subset=100)).num_train == 100


def test_real_noise_arrays(tiny_cifar10):
    """Datasets whose labels are already noisy (Animal-10N, Red) go through the same builder with --noise_mode real."""
    arrays = cifar.load_cifar(tiny_cifar10.flat, 10)
    arrays.labels_are_clean = False
    data = build_in_memory(make_cfg(noise_mode="real", train_subset=40, balanced_subset=True), "cpu", arrays)
    assert data.clean_labels is None and data.is_clean is None and data.num_train == 40
    assert data.noise_info["mode"] == "real" and data.noise_info["sha256_of"] == "labels"
    with pytest.raises(DataConfigError, match="pass --noise_mode real"):
        build_in_memory(make_cfg(noise_mode="instance", r=0.2), "cpu", arrays)


def test_registry_is_the_extension_point():
    assert set(dataloaders.DATASETS) >= {"cifar10", "cifar100", "fashionmnist"}
    assert all(callable(f) for f in dataloaders.DATASETS.values())
    assert set(DATASET_STATS) >= {"cifar10", "cifar100", "fashionmnist"}


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.arange(100) % 10 + 0.9, "non-integer labels \\(label 0 is 0.9"),
        ((np.arange(100) % 10) * 1j, "complex numbers"),
        (np.where(np.arange(100) == 7, np.nan, np.arange(100) % 10), "label 7 is nan"),
    ],
)
def test_non_integer_or_complex_noise_files_are_refused(tiny_cifar10, tmp_path, labels, message):
    path = tmp_path / "labels.npy"
    np.save(path, labels)
    cfg = make_cfg(data_path=str(tiny_cifar10.flat), noise_file=str(path))
    with pytest.raises(DataConfigError, match=message):
        build_data(cfg)
    np.save(path, (np.arange(100) % 10).astype(np.float64))  # whole numbers stored as floats are labels
    assert torch.equal(build_data(cfg).noisy_labels, torch.arange(100) % 10)


def test_full_disk_while_writing_the_noise_cache_is_one_line(tiny_cifar10, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError("Not enough free space to write 800 bytes")  # numpy's message, without an errno

    monkeypatch.setattr(np, "save", full)
    cfg = make_cfg(data_path=str(tiny_cifar10.flat), r=0.3, noise_dir=str(tmp_path / "noise"))
    with pytest.raises(DataConfigError, match="cannot write the noisy labels to .*free space there or pass"):
        build_data(cfg)
    assert list((tmp_path / "noise").iterdir()) == []  # no half-written file left behind
