"""The three real-noise datasets (Animal-10N, Red Mini-ImageNet, Clothing1M): readers on tiny fixtures written in
the real on-disk layouts (real JPEG/PNG files, the release's file names and annotation formats), every loader
mode, the decoded-image cache, the missing-data messages, and each entry script end to end on the CPU."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T

import dataloaders
import instanceGM_animal10N
import instanceGM_clothing1M
import instanceGM_redMini
import models
from dataloaders import build_data, image_cache
from dataloaders.animal10n import load_animal10n
from dataloaders.base import DatasetNotFoundError
from dataloaders.clothing1m import Clothing1MDataModule, class_balanced_subset
from dataloaders.red_mini import load_red_mini
from training.config import parse_cli
from training.metrics import read_jsonl


@pytest.fixture(autouse=True)
def _lean_cpu(monkeypatch, tmp_path):
    """One intra-op thread (the 2 shared cores are oversubscribed: OpenMP spin-waits made runs 10-100x slower)
    and a private user cache folder."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    yield
    torch.set_num_threads(threads)


def picture(seed: int, width: int, height: int) -> Image.Image:
    """A smooth, seed-dependent RGB picture (JPEG-friendly, unlike white noise)."""
    rs = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    step = rs.randint(1, 9, size=3)
    pixels = (rs.randint(0, 256, size=3) + step * xx[..., None] + (seed % 5 + 1) * yy[..., None]) % 256
    return Image.fromarray(pixels.astype(np.uint8))


def decoded(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def summary_checks(summary: dict, num_epochs: int = 2) -> Path:
    """What every end-to-end run leaves behind: one metrics line per epoch, the checkpoint, the summary."""
    run_dir = Path(summary["run_dir"])
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == list(range(num_epochs))
    assert [r["phase"] for r in rows] == ["warmup", "train"]
    assert "train/net2/vae/recon" in rows[-1] and 0.0 <= rows[-1]["test/acc"] <= 100.0
    assert (run_dir / "checkpoint.pt").is_file()
    assert json.loads((run_dir / "summary.json").read_text())["test/acc"]["epochs"] == num_epochs
    return run_dir


class _StandIn(nn.Module):
    """A tiny classifier for the end-to-end tests: VGG-19-BN's 143M parameters would write a 2.3 GB
    checkpoint per epoch. The real backbone is tested in test_models.py; set INSTANCEGM_REAL_BACKBONES=1 to
    use it here too."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.conv, self.bn, self.fc = (
            nn.Conv2d(3, 8, 3, stride=4, padding=1),
            nn.BatchNorm2d(8),
            nn.Linear(8, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


@pytest.fixture
def light_backbone(monkeypatch):
    if not os.environ.get("INSTANCEGM_REAL_BACKBONES"):
        monkeypatch.setitem(models.CLASSIFIERS, "vgg19_bn", _StandIn)


# =========================================== Animal-10N ===========================================
def write_animal(root: Path, per_class: int = 2, layout: str = "flat") -> Path:
    """The official release (flat ``<label>_<id>.jpg``) or class folders (PNG); 64x64 images, 10 classes."""
    for split, count, offset in (("training", per_class, 0), ("testing", 1, 1000)):
        for label in range(10):
            for i in range(count):
                folder = root / split / (str(label) if layout == "folders" else "")
                folder.mkdir(parents=True, exist_ok=True)
                name = f"{label}_{offset + 10 * i + label:05d}" + (".png" if layout == "folders" else ".jpg")
                picture(offset + 100 * label + i, 64, 64).save(folder / name)
    return root


def animal_cfg(root: Path, **changes):
    return instanceGM_animal10N.PRESETS["animal10n"].replace(data_path=str(root), num_workers=0, **changes)


def test_animal10n_flat_release_layout(tmp_path):
    root = write_animal(tmp_path / "animal10N")
    data = load_animal10n(root)
    files = sorted((root / "training").glob("*.jpg"))
    assert data.train_images.shape == (20, 64, 64, 3) and data.train_images.dtype == np.uint8
    assert data.train_labels.tolist() == [int(f.name.split("_")[0]) for f in files]
    np.testing.assert_array_equal(data.train_images[7], decoded(files[7]))
    assert data.test_images.shape == (10, 64, 64, 3) and data.test_labels.tolist() == list(range(10))
    assert not data.labels_are_clean and data.aug.crop_padding == 0 and data.aug.flip
    nested = write_animal(tmp_path / "download" / "raw_image_ver" / "raw_image", per_class=1)  # an archive's folders
    assert load_animal10n(tmp_path / "download").train_labels.tolist() == list(range(10))
    assert (nested / "instancegm_cache").is_dir()


def test_animal10n_class_folders_sorted_names(tmp_path):
    root = tmp_path / "animal10N"
    for name in ("wolf", "cat", "lynx"):  # sorted folder names give the label order (cat 0, lynx 1, wolf 2)
        for split in ("training", "testing"):
            (root / split / name).mkdir(parents=True)
            picture(len(name), 64, 64).save(root / split / name / "a.png")
    (root / "training" / "cat" / "b.png").write_bytes((root / "training" / "cat" / "a.png").read_bytes())
    data = load_animal10n(root)
    assert data.num_classes == 3 and data.train_labels.tolist() == [0, 0, 1, 2]
    np.testing.assert_array_equal(data.train_images[3], decoded(root / "training" / "wolf" / "a.png"))
    numeric = load_animal10n(write_animal(tmp_path / "numeric", layout="folders"))  # folders 0..9: official labels
    assert numeric.num_classes == 10 and numeric.train_labels.tolist() == [c for c in range(10) for _ in range(2)]
    (root / "testing" / "zebra").mkdir()
    with pytest.raises(DatasetNotFoundError, match="zebra"):
        load_animal10n(root)


def test_animal10n_cache_reuse_invalidation_and_saved_false(tmp_path, monkeypatch):
    root = write_animal(tmp_path / "animal10N")
    calls = []
    original = image_cache.decode_images
    monkeypatch.setattr(
        image_cache, "decode_images", lambda files, *a, **k: calls.append(len(files)) or original(files, *a, **k)
    )
    first = load_animal10n(root)
    assert calls == [20, 10]
    caches = sorted((root / "instancegm_cache").glob("*.npy"))
    assert [c.name.split("-")[1] for c in caches] == ["testing", "training"]

    again = load_animal10n(root)  # reused: nothing decoded, memory-mapped
    assert calls == [20, 10] and isinstance(again.train_images, np.memmap)
    np.testing.assert_array_equal(again.train_images, first.train_images)

    changed = sorted((root / "training").glob("*.jpg"))[3]
    picture(999, 64, 64).save(changed)
    os.utime(changed, ns=(1, 1))  # a different mtime even on coarse-clock file systems
    after = load_animal10n(root)  # the training listing changed: only it is decoded again
    assert calls == [20, 10, 20]
    np.testing.assert_array_equal(after.train_images[3], decoded(changed))
    assert len(list((root / "instancegm_cache").glob("animal10n-training-*.npy"))) == 1  # the stale one is gone

    load_animal10n(root, reuse_cache=False)  # --saved false
    assert calls == [20, 10, 20, 20, 10]


def test_image_cache_falls_back_to_user_cache(tmp_path, monkeypatch):
    root = write_animal(tmp_path / "animal10N", per_class=1)
    real_writable = image_cache._writable
    monkeypatch.setattr(image_cache, "_writable", lambda f: "instancegm_cache" not in str(f) and real_writable(f))
    files = sorted((root / "training").glob("*.jpg"))
    _, path, decoded_now = image_cache.cached_images(files, root, "animal10n-training", 64, resize=False)
    assert decoded_now and path.parent == image_cache.user_image_cache(root)
    assert str(path).startswith(str(tmp_path / "user-cache"))
    _, again, decoded_now = image_cache.cached_images(files, root, "animal10n-training", 64, resize=False)
    assert again == path and not decoded_now


def test_animal10n_module_modes(tmp_path):
    data = build_data(animal_cfg(write_animal(tmp_path / "animal10N")))
    assert (data.num_train, data.num_classes, data.is_clean) == (20, 10, None)
    assert data.noise_info["mode"] == "real"
    raw = torch.from_numpy(np.array(load_animal10n(tmp_path / "animal10N").train_images)).permute(0, 3, 1, 2)
    x, y, idx = next(iter(data.warmup_loader(8)))
    assert x.shape == (8, 3, 64, 64) and torch.equal(y, data.noisy_labels[idx])
    pixels = (x * 255).round().to(torch.uint8)
    for view, i in zip(pixels, idx):  # RandomCrop(64) without padding + flip: the image or its mirror
        assert torch.equal(view, raw[i]) or torch.equal(view, raw[i].flip(2))
    xs, ys, idxs = zip(*data.eval_train_loader(6))
    assert torch.cat(idxs).tolist() == list(range(20)) and torch.equal(torch.cat(ys), data.noisy_labels)
    assert torch.equal((torch.cat(xs) * 255).round().to(torch.uint8), raw)
    x1, x2, y, w, idx = next(iter(data.labeled_loader(torch.tensor([1, 5, 9]), torch.tensor([0.9, 0.8, 0.7]), 3)))
    assert x1.shape == x2.shape == (3, 3, 64, 64) and sorted(idx.tolist()) == [1, 5, 9] and w.shape == (3,)
    u1, _, _, uidx = next(iter(data.unlabeled_loader(torch.tensor([0, 2]), 4)))
    assert u1.shape == (2, 3, 64, 64) and sorted(uidx.tolist()) == [0, 2]
    assert sum(len(y) for _, y in data.test_loader(4)) == 10
    xv, yv, iv = next(data.vae_batches(6))
    assert xv.shape == (6, 3, 64, 64) and len(set(iv.tolist())) == 6


def test_animal10n_missing_data_and_bad_names(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_animal10n(tmp_path / "nowhere")
    message = str(err.value)
    assert "training/" in message and "<label>_<id>.jpg" in message and "dm.kaist.ac.kr/datasets/animal-10n" in message
    assert "\n" not in message
    root = write_animal(tmp_path / "animal10N", per_class=1)
    picture(0, 64, 64).save(root / "training" / "cat.jpg")
    with pytest.raises(DatasetNotFoundError, match="<label>_<id>.jpg"):
        load_animal10n(root)
    (root / "training" / "cat.jpg").unlink()
    picture(0, 32, 32).save(root / "training" / "3_99999.jpg")
    with pytest.raises(DatasetNotFoundError, match="32x32"):
        load_animal10n(root)


def test_animal10n_end_to_end(tmp_path, light_backbone, capsys):
    root = write_animal(tmp_path / "animal10N")
    summary = instanceGM_animal10N.main(
        ["--dataset", "animal10N", "--saved", "False", "--data_path", str(root), "--output_dir", str(tmp_path / "runs"),
         "--smoke", "--batch_size", "4", "--train_subset", "12", "--num_epochs", "2", "--warm_up", "1"]
    )  # fmt: skip
    run_dir = summary_checks(summary)
    config = json.loads((run_dir / "config.json").read_text())["config"]
    assert config["dataset"] == "animal10n" and config["saved"] is False and config["vae_size"] == 64
    assert config["p_threshold"] == 0.08 and config["noisy_label_weight"] == 8e-5


# =========================================== Red Mini-ImageNet ===========================================
def write_red(root: Path, with_truth: bool = True) -> Path:
    """``<root>/mini-imagenet`` in the FaMUS split layout: 20 ImageNet images (2 per class, in nl_0.0), the 0.2
    split replacing 4 of them by web images, 10 clean validation images in ``validation/<label>/``."""
    mini = root / "mini-imagenet"
    (mini / "split").mkdir(parents=True)
    (mini / "all_images").mkdir()
    clean = [(f"n{label:08d}_{i}.JPEG", label * 11) for label in range(10) for i in range(2)]  # labels up to 99
    web = [(f"{'ab12cd' * 2}{i}.jpg", (i * 11) % 100) for i in range(4)]
    for j, (name, _) in enumerate(clean + web):
        picture(j, 40 + 3 * j, 30 + j % 5).save(mini / "all_images" / name, format="JPEG")
    lines = lambda rows: "".join(f"{name} {label}\n" for name, label in rows)  # noqa: E731
    if with_truth:
        (mini / "split" / "red_noise_nl_0.0").write_text(lines(clean))
    (mini / "split" / "red_noise_nl_0.2").write_text(lines(clean[4:] + web))
    val = [(f"val_{i}.JPEG", (i * 7) % 100) for i in range(10)]
    for j, (name, label) in enumerate(val):
        (mini / "validation" / str(label)).mkdir(parents=True, exist_ok=True)
        picture(500 + j, 50, 60).save(mini / "validation" / str(label) / name, format="JPEG")
    (mini / "split" / "clean_validation").write_text(lines(val))
    return root


def red_cfg(root: Path, **changes):
    return instanceGM_redMini.PRESETS["red_mini"].replace(data_path=str(root), num_workers=0, **changes)


def test_red_mini_reader_paths_and_resize(tmp_path):
    root = write_red(tmp_path / "red_blue")
    for data_path in (str(root), f"{root}/", str(root / "mini-imagenet")):
        arrays, truth = load_red_mini(data_path, 0.2)
        assert arrays.train_images.shape == (20, 32, 32, 3) and arrays.test_images.shape == (10, 32, 32, 3)
    split = (root / "mini-imagenet" / "split" / "red_noise_nl_0.2").read_text().split()
    assert arrays.train_labels.tolist() == [int(v) for v in split[1::2]] and truth["split"] == "red_noise_nl_0.2"
    # The cached array is exactly the original's per-access Resize((32, 32)) of the RGB image.
    with Image.open(root / "mini-imagenet" / "all_images" / split[0]) as img:
        expected = np.asarray(T.Resize((32, 32))(img.convert("RGB")))
    np.testing.assert_array_equal(arrays.train_images[0], expected)
    with Image.open(root / "mini-imagenet" / "validation" / "7" / "val_1.JPEG") as img:
        np.testing.assert_array_equal(arrays.test_images[1], np.asarray(T.Resize((32, 32))(img.convert("RGB"))))
    assert arrays.test_labels.tolist() == [(i * 7) % 100 for i in range(10)]
    assert arrays.aug.crop_padding == 4 and arrays.aug.flip


def test_red_mini_truth_from_the_noise_free_split(tmp_path):
    root = write_red(tmp_path / "red_blue")
    data = build_data(red_cfg(root))
    assert data.num_train == 20 and data.num_classes == 100
    assert data.is_clean.tolist() == [True] * 16 + [False] * 4  # the 4 web images are the mislabelled ones
    assert data.noise_info["realised_rate"] == pytest.approx(0.2) and data.noise_info["split"] == "red_noise_nl_0.2"
    assert sum(len(y) for _, y in data.test_loader(3)) == 10  # every test image (the original dropped the last batch)
    subset = build_data(red_cfg(root, train_subset=18))
    assert torch.equal(subset.clean_labels, data.clean_labels[:18])
    assert subset.noise_info["subset_realised_rate"] == pytest.approx(2 / 18)
    unknown = build_data(red_cfg(write_red(tmp_path / "no_truth", with_truth=False)))
    assert unknown.clean_labels is None and "realised_rate" not in unknown.noise_info


def test_red_mini_missing_split_and_data(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_red_mini(tmp_path / "nowhere", 0.2)
    message = str(err.value)
    assert "mini-imagenet" in message and "red_noise_nl_<r>" in message and "controlled-noisy-web-labels" in message
    root = write_red(tmp_path / "red_blue")
    with pytest.raises(DatasetNotFoundError, match=r"r in \['0.0', '0.2'\]"):
        load_red_mini(root, 0.4)
    (root / "mini-imagenet" / "all_images" / "n00000002_0.JPEG").unlink()
    with pytest.raises(DatasetNotFoundError, match="n00000002_0.JPEG is listed but cannot be read"):
        load_red_mini(root, 0.2)


def test_red_mini_end_to_end(tmp_path):
    root = write_red(tmp_path / "red_blue")
    summary = instanceGM_redMini.main(
        ["--dataset", "red_blue", "--r", "0.2", "--data_path", f"{root}/", "--output_dir", str(tmp_path / "runs"),
         "--smoke", "--width", "8", "--batch_size", "4", "--num_epochs", "2", "--warm_up", "1"]
    )  # fmt: skip
    run_dir = summary_checks(summary)
    last = read_jsonl(run_dir / "metrics.jsonl")[-1]
    assert {"split/net1/precision", "split/net1/recall", "split/net2/auc"} <= set(last)
    assert summary["noise/realised_rate"] == pytest.approx(0.2)
    assert run_dir.name.startswith("red_mini_real0.2")


# =========================================== Clothing1M ===========================================
def write_clothing(root: Path, images_folder: bool = False) -> dict:
    """The five annotation files and small JPEGs at ``<root>/<a>/<b>/<file>.jpg`` (or under ``images/``):
    28 training keys (2 per class), 4 of them also in the clean file (2 agreeing), 14 validation, 14 test."""
    base = root / "images" if images_folder else root

    def image(name: str, seed: int) -> str:
        key = f"images/{seed % 3}/{seed % 7:02d}/{name}.jpg"
        path = base / key[len("images/") :]
        path.parent.mkdir(parents=True, exist_ok=True)
        picture(seed, 16, 12).save(path, quality=90)  # upsampled by Resize(256)
        return key

    train = [(image(f"train{i}", i), i % 14) for i in range(28)]
    val = [(image(f"val{i}", 100 + i), i % 14) for i in range(14)]
    test = [(image(f"test{i}", 200 + i), (3 * i) % 14) for i in range(14)]
    verified = [train[0], train[1], (train[2][0], (train[2][1] + 1) % 14), (train[3][0], (train[3][1] + 5) % 14)]
    kv = lambda rows: "".join(f"{k} {v}\n" for k, v in rows)  # noqa: E731
    (root / "noisy_label_kv.txt").write_text(kv(train))
    (root / "clean_label_kv.txt").write_text(kv(val + test + verified))
    for name, rows in (("noisy_train", train), ("clean_val", val), ("clean_test", test)):
        (root / f"{name}_key_list.txt").write_text("".join(f"{k}\n" for k, _ in rows))
    return {"train": train, "val": val, "test": test}


def clothing(root: Path, **kwargs) -> Clothing1MDataModule:
    return Clothing1MDataModule(root, **{"batch_size": 2, "num_batches": 3, "seed": 0, **kwargs})


def test_clothing1m_annotations_and_known_truth(tmp_path):
    keys = write_clothing(tmp_path / "clothing1M")
    data = clothing(tmp_path / "clothing1M")
    assert data.num_train == 28 and data.num_classes == 14 and data.clean_labels is None and data.is_clean is None
    assert data.noisy_labels.tolist() == [label for _, label in keys["train"]]
    assert data.val_labels.tolist() == [label for _, label in keys["val"]]
    assert data.test_labels.tolist() == [label for _, label in keys["test"]]
    assert data.partial_clean_labels[:4].tolist() == [0, 1, 3, 8] and (data.partial_clean_labels[4:] == -1).all()
    assert data.noise_info["known_truth"] == 4 and data.noise_info["known_truth_noise_rate"] == 0.5
    small = clothing(tmp_path / "clothing1M", train_subset=10, test_subset=3)
    assert small.num_train == 10 and len(small.val_labels) == len(small.test_labels) == 3


def test_class_balanced_subset_follows_dividemix_rule():
    labels = torch.tensor([0] * 30 + [1] * 5 + [2] * 20)
    generator = torch.Generator().manual_seed(7)
    state = generator.get_state()
    subset = class_balanced_subset(labels, 20, 3, generator)
    # The original's loop over the shuffled keys: keep while class count < n/K and total < n.
    perm = torch.randperm(len(labels), generator=torch.Generator().set_state(state)).tolist()
    picked, counts = [], [0, 0, 0]
    for i in perm:
        if counts[labels[i]] < 20 / 3 and len(picked) < 20:
            picked.append(i)
            counts[labels[i]] += 1
    assert subset.tolist() == picked
    assert torch.bincount(labels[subset]).tolist() == [7, 5, 7]  # ceil(20/3) = 7 per class at most


def test_clothing1m_modes(tmp_path):
    root = tmp_path / "clothing1M"
    write_clothing(root)
    data = clothing(root)
    batches = list(data.warmup_loader(4))  # the engine's batch 2B = 4: num_batches * 4 = 12 images
    x, y, idx = (torch.cat(parts) for parts in zip(*batches))
    assert x.shape == (12, 3, 224, 224) and x.min() >= 0.0 and x.max() <= 1.0
    assert torch.equal(y, data.noisy_labels[idx]) and sorted(idx.tolist()) == sorted(data.last_warmup_indices.tolist())
    assert torch.bincount(y, minlength=14).max() <= 1  # 12 / 14 per class: class-balanced

    subsets = []
    for _ in range(3):  # num_batches * B = 6 images, a fresh subset each call, deterministic transform
        xs, ys, idxs = (torch.cat(parts) for parts in zip(*data.eval_train_loader(256)))
        assert xs.shape == (6, 3, 224, 224) and torch.equal(ys, data.noisy_labels[idxs])
        subsets.append(idxs.tolist())
    assert len({tuple(s) for s in subsets}) > 1
    with Image.open(root / data._train[idxs[0]].decode()) as img:
        expected = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])(img.convert("RGB"))
    assert torch.equal(xs[0], expected)

    x1, x2, y, w, idx = next(iter(data.labeled_loader(torch.tensor([3, 20, 27]), torch.tensor([0.9, 0.8, 0.7]), 3)))
    assert x1.shape == x2.shape == (3, 3, 224, 224) and not torch.equal(x1, x2)  # two random crops
    assert dict(zip(idx.tolist(), w.tolist())) == pytest.approx({3: 0.9, 20: 0.8, 27: 0.7})
    u1, u2, uy, uidx = next(iter(data.unlabeled_loader(torch.tensor([5, 6]), 2)))
    assert u1.shape == (2, 3, 224, 224) and sorted(uidx.tolist()) == [5, 6]

    for loader, labels in ((data.val_loader(5), data.val_labels), (data.test_loader(5), data.test_labels)):
        assert torch.equal(torch.cat([y for _, y in loader]), labels)  # every image, in list order

    pool = torch.tensor([1, 4, 9, 16, 25])
    stream = data.vae_batches(4, indices=pool)
    for _ in range(2):
        xv, yv, iv = next(stream)
        assert xv.shape == (4, 3, 224, 224) and len(set(iv.tolist())) == 4 and set(iv.tolist()) <= set(pool.tolist())

    state = data.state_dict()
    first = data.balanced_subset(6)
    data.load_state_dict(state)
    assert torch.equal(data.balanced_subset(6), first)  # subsets come from the module generator only


def test_clothing1m_workers_do_not_change_the_data(tmp_path):
    write_clothing(tmp_path / "clothing1M")
    batches = []
    for workers in (0, 2):
        data = clothing(tmp_path / "clothing1M", num_workers=workers, num_batches=1)
        batches.append(next(iter(data.warmup_loader(4))))
    assert all(torch.equal(a, b) for a, b in zip(*batches))


def test_clothing1m_shards_for_multi_process_runs(tmp_path):
    write_clothing(tmp_path / "clothing1M")
    ranks = [clothing(tmp_path / "clothing1M") for _ in range(2)]
    for rank, data in enumerate(ranks):
        data.set_distributed(rank, 2, seed=0)
    evaluated = [torch.cat([idx for *_, idx in data.eval_train_loader(256)]).tolist() for data in ranks]
    assert not set(evaluated[0]) & set(evaluated[1]) and len(evaluated[0] + evaluated[1]) == 6  # one subset, split
    tested = [torch.cat([y for _, y in data.test_loader(4)]) for data in ranks]
    assert len(tested[0]) + len(tested[1]) == 14
    vae = [next(data.vae_batches(4))[2].tolist() for data in ranks]
    assert len(vae[0]) == 4 and not set(vae[0]) & set(vae[1])


def test_clothing1m_layouts_and_missing_files(tmp_path):
    write_clothing(tmp_path / "kept", images_folder=True)  # the release's images/ folder kept as is
    assert clothing(tmp_path / "kept").base == tmp_path / "kept" / "images"
    with pytest.raises(DatasetNotFoundError) as err:
        clothing(tmp_path / "nowhere")
    message = str(err.value)
    assert "noisy_label_kv.txt" in message and "clean_test_key_list.txt" in message and "Cysu/noisy_label" in message
    root = tmp_path / "clothing1M"
    keys = write_clothing(root)
    (root / "clean_test_key_list.txt").rename(root / "elsewhere.txt")
    with pytest.raises(DatasetNotFoundError, match=r"incomplete \(clean_test_key_list.txt missing\)"):
        clothing(root)
    (root / "elsewhere.txt").rename(root / "clean_test_key_list.txt")
    (root / keys["train"][0][0][len("images/") :]).unlink()
    with pytest.raises(DatasetNotFoundError, match="train0.jpg not found"):
        clothing(root)


def test_clothing1m_end_to_end_with_best_validation(tmp_path):
    root = tmp_path / "clothing1M"
    write_clothing(root)
    summary = instanceGM_clothing1M.main(
        ["--data_path", str(root), "--output_dir", str(tmp_path / "runs"), "--no-pretrained", "--smoke",
         "--batch_size", "1", "--num_batches", "2", "--test_subset", "2", "--id", "clothing1m"]
    )  # fmt: skip
    run_dir = summary_checks(summary)
    assert run_dir.name == "clothing1m"  # the original's --id names the run
    assert (run_dir / "best_net1.pt").is_file() and (run_dir / "best_net2.pt").is_file()
    assert set(summary["test_at_best_val"]) == {"test/acc", "test/net1/acc", "test/net2/acc"}
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert "val/net1/acc" in rows[0] and "train/net1/warmup/ce" in rows[0]
    assert rows[-1]["train/net1/dm/lu"] == 0.0  # labeled-only MixMatch
    config = json.loads((run_dir / "config.json").read_text())["config"]
    assert config["backbone"] == "resnet50" and not config["pretrained"] and config["vae_fixed_subset"]


# =========================================== registry and command lines ===========================================
def test_registry_and_original_command_lines():
    assert {"animal10n", "red_mini", "red_blue", "clothing1m"} <= set(dataloaders.DATASETS)
    cfg = parse_cli(instanceGM_animal10N.PRESETS, "animal10n", ["--dataset", "animal10N", "--saved", "False"])
    assert cfg.dataset == "animal10n" and cfg.saved is False and cfg.backbone == "vgg19_bn"
    cfg = parse_cli(instanceGM_redMini.PRESETS, "red_mini", ["--dataset", "red_blue", "--r", "0.6"])
    assert cfg.dataset == "red_mini" and cfg.r == 0.6 and cfg.vae_lr == 1e-4 and cfg.vae_size == 32
    cfg = parse_cli(instanceGM_clothing1M.PRESETS, "clothing1m", ["--num_batches", "5", "--id", "clothing1m"])
    assert cfg.num_batches == 5 and cfg.run_name == "clothing1m" and cfg.select_on_val and not cfg.mix_unlabeled
