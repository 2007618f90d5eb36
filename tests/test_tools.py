"""Tests for tools.py: noise generators, label files and noise reports."""

from __future__ import annotations

import fractions
import io
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

import tools


def literal_instance_noise(images, labels, num_classes, rate, seed, norm_std=0.1):
    """Per-sample transcription of the original's loop (docs/design.md: Synthetic noise); a RandomState replaces
    the global RNG."""
    rs = np.random.RandomState(seed)
    flip_rate = stats.truncnorm((0 - rate) / norm_std, (1 - rate) / norm_std, loc=rate, scale=norm_std).rvs(
        labels.shape[0], random_state=rs
    )
    feature_size = int(np.prod(images.shape[1:]))
    W = torch.FloatTensor(rs.randn(num_classes, feature_size, num_classes))
    P = []
    for i in range(len(labels)):
        x = torch.from_numpy(images[i].astype(np.float32))
        y = int(labels[i])
        A = x.view(1, -1).mm(W[y]).squeeze(0)
        A[y] = -float("inf")
        A = flip_rate[i] * F.softmax(A, dim=0)
        A[y] += 1 - flip_rate[i]
        P.append(A)
    P = torch.stack(P, 0).numpy()
    classes = list(range(num_classes))
    return np.array([rs.choice(classes, p=P[i]) for i in range(len(labels))])


def random_images(num_samples, num_classes, seed, size=32):
    rs = np.random.RandomState(seed)
    images = rs.randint(0, 256, size=(num_samples, size, size, 3), dtype=np.uint8)
    labels = rs.randint(0, num_classes, size=num_samples)
    return images, labels


# --------------------------------------------------------------------------------------------------
# Instance-dependent noise
# --------------------------------------------------------------------------------------------------
CIFAR10_CASES = [(10, rate, seed) for rate in (0.2, 0.45, 0.5) for seed in (123, 7)]
# K = 100 draws a 3072 x 100 projection per class, so fewer (rate, seed) pairs keep the test fast.
CIFAR100_CASES = [(100, 0.2, 7), (100, 0.45, 123), (100, 0.5, 1)]


@pytest.mark.parametrize("num_classes, rate, seed", CIFAR10_CASES + CIFAR100_CASES)
def test_instance_noise_matches_literal_implementation(num_classes, rate, seed):
    images, labels = random_images(500, num_classes, seed=seed + num_classes)
    expected = literal_instance_noise(images, labels, num_classes, rate, seed)
    got = tools.instance_dependent_noise(images, labels, num_classes, rate, seed=seed)
    assert got.dtype == np.int64
    assert np.array_equal(got, expected)
    assert 0 < tools.noise_rate(labels, got) < 1


def test_instance_noise_stream_matches_global_rng_of_the_original():
    """The original seeds numpy's global RNG; a local RandomState with that seed must give the same labels."""
    images, labels = random_images(200, 10, seed=3, size=8)
    saved_state = np.random.get_state()
    try:
        np.random.seed(123)
        flip_rate = stats.truncnorm(-0.4 / 0.1, 0.6 / 0.1, loc=0.4, scale=0.1).rvs(len(labels))
        W = torch.FloatTensor(np.random.randn(10, 8 * 8 * 3, 10))
        rows = []
        for i, (x, y) in enumerate(zip(images, labels)):
            A = torch.from_numpy(x.astype(np.float32)).view(1, -1).mm(W[y]).squeeze(0)
            A[y] = -float("inf")
            A = flip_rate[i] * F.softmax(A, dim=0)
            A[y] += 1 - flip_rate[i]
            rows.append(A)
        P = torch.stack(rows).numpy()
        expected = np.array([np.random.choice(list(range(10)), p=P[i]) for i in range(len(labels))])
    finally:
        np.random.set_state(saved_state)
    got = tools.instance_dependent_noise(images, labels, 10, 0.4, seed=123)
    assert np.array_equal(got, expected)


def test_row_sampling_follows_numpy_choice_at_cdf_boundaries():
    """choice returns searchsorted(cdf, u, side='right'): a uniform on a cdf step never picks a 0-mass class."""
    rows = np.array([[0.25, 0.25, 0.5]] * 4 + [[0.0, 1.0, 0.0]], dtype=np.float32)
    uniforms = np.array([0.0, 0.25, 0.5, 0.9999, 0.0])
    assert np.array_equal(tools._sample_rows(rows, uniforms), [0, 1, 2, 2, 1])


@pytest.mark.parametrize("rate", [0.2, 0.4, 0.5])
def test_instance_noise_realised_rate_close_to_requested(rate):
    images, labels = random_images(2000, 10, seed=11, size=16)
    noisy = tools.instance_dependent_noise(images, labels, 10, rate, seed=5)
    assert abs(tools.noise_rate(labels, noisy) - rate) < 0.04


def test_instance_noise_flip_target_depends_on_the_image():
    """Scores have std in the thousands, so softmax is one-hot: copies of one image all flip to one class,
    while different images of the same class flip to different classes."""
    rs = np.random.RandomState(0)
    distinct = rs.randint(0, 256, size=(20, 16, 16, 3), dtype=np.uint8)
    images = np.repeat(distinct, 100, axis=0)  # (2000, 16, 16, 3)
    image_id = np.repeat(np.arange(20), 100)
    labels = np.zeros(2000, dtype=np.int64)  # one class, so only the image decides the target
    noisy = tools.instance_dependent_noise(images, labels, 10, 0.4, seed=123)
    targets_per_image = []
    for k in range(20):
        flipped = noisy[(image_id == k) & (noisy != labels)]
        assert len(flipped) > 10
        assert len(np.unique(flipped)) == 1
        targets_per_image.append(flipped[0])
    assert len(set(targets_per_image)) >= 3


def test_instance_noise_determinism_and_seed_dependence():
    images, labels = random_images(300, 10, seed=2, size=8)
    a = tools.instance_dependent_noise(images, labels, 10, 0.4, seed=1)
    b = tools.instance_dependent_noise(images, labels, 10, 0.4, seed=1)
    c = tools.instance_dependent_noise(images, labels, 10, 0.4, seed=2)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_instance_noise_does_not_touch_global_rngs():
    images, labels = random_images(50, 10, seed=2, size=8)
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    tools.instance_dependent_noise(images, labels, 10, 0.4, seed=1)
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_instance_noise_accepts_torch_tensors_and_rate_zero():
    images, labels = random_images(100, 10, seed=4, size=8)
    expected = tools.instance_dependent_noise(images, labels, 10, 0.3, seed=9)
    got = tools.instance_dependent_noise(torch.from_numpy(images), torch.from_numpy(labels), 10, 0.3, seed=9)
    assert np.array_equal(got, expected)
    assert np.array_equal(tools.instance_dependent_noise(images, labels, 10, 0.0), labels)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rate": 1.0}, r"\[0, 1\)"),
        ({"rate": -0.1}, r"\[0, 1\)"),
        ({"labels": np.full(10, 10)}, r"\[0, 10\)"),
        ({"images": np.zeros((10, 4, 4, 3), dtype=np.float32)}, "uint8"),
        ({"images": np.zeros((10, 48), dtype=np.uint8)}, r"\(N, H, W, C\)"),
        ({"images": np.zeros((9, 4, 4, 3), dtype=np.uint8)}, "same length"),
    ],
)
def test_instance_noise_validation(kwargs, match):
    args = {"images": np.zeros((10, 4, 4, 3), dtype=np.uint8), "labels": np.zeros(10, dtype=int), "rate": 0.2}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        tools.instance_dependent_noise(args["images"], args["labels"], 10, args["rate"])


# --------------------------------------------------------------------------------------------------
# Symmetric / asymmetric noise
# --------------------------------------------------------------------------------------------------
def test_symmetric_noise_touches_exactly_int_rate_n_samples():
    # With a million classes a redrawn label practically never equals the old one: every touched sample shows.
    labels = np.zeros(1000, dtype=np.int64)
    noisy = tools.symmetric_noise(labels, 10**6, 0.37, seed=0)
    assert np.count_nonzero(noisy != labels) == int(0.37 * 1000)


def test_symmetric_noise_rate_and_determinism():
    labels = np.random.RandomState(0).randint(0, 10, size=20000)
    noisy = tools.symmetric_noise(labels, 10, 0.5, seed=1)
    assert abs(tools.noise_rate(labels, noisy) - 0.5 * 9 / 10) < 0.015
    off_diagonal = tools.transition_matrix(labels, noisy, 10)[~np.eye(10, dtype=bool)]
    assert np.all(off_diagonal > 0.03)  # spread over all other classes
    assert np.array_equal(noisy, tools.symmetric_noise(labels, 10, 0.5, seed=1))
    assert not np.array_equal(noisy, tools.symmetric_noise(labels, 10, 0.5, seed=2))


def test_asymmetric_noise_cifar10_uses_only_the_map():
    labels = np.random.RandomState(0).randint(0, 10, size=5000)
    noisy = tools.asymmetric_noise(labels, 10, 0.4, seed=3)
    T = tools.transition_matrix(labels, noisy, 10)
    expected_support = np.eye(10, dtype=bool)
    for source, target in [(9, 1), (2, 0), (3, 5), (5, 3), (4, 7)]:
        expected_support[source, target] = True
    assert np.array_equal(T > 0, expected_support)
    # 5 of 10 classes move, so about half of the chosen 40% change.
    assert abs(tools.noise_rate(labels, noisy) - 0.2) < 0.03
    everything = tools.asymmetric_noise(labels, 10, 1.0, seed=3)
    assert np.array_equal(everything, np.array([0, 1, 0, 5, 7, 3, 6, 7, 8, 1])[labels])


def test_asymmetric_noise_touches_exactly_int_rate_n_samples():
    labels = np.full(1000, 9)
    noisy = tools.asymmetric_noise(labels, 10, 0.37, seed=0)
    assert np.count_nonzero(noisy != labels) == int(0.37 * 1000)
    assert set(noisy[noisy != labels]) == {1}


def test_asymmetric_noise_cifar100_flips_to_next_member_of_superclass():
    superclasses = np.random.RandomState(5).permutation(np.repeat(np.arange(20), 5))
    labels = np.random.RandomState(6).randint(0, 100, size=3000)
    noisy = tools.asymmetric_noise(labels, 100, 1.0, seed=0, superclasses=superclasses)
    assert np.array_equal(superclasses[noisy], superclasses[labels])
    for fine in range(100):
        members = sorted(np.flatnonzero(superclasses == superclasses[fine]))
        expected = members[(members.index(fine) + 1) % len(members)]
        assert np.all(noisy[labels == fine] == expected)
    partial = tools.asymmetric_noise(labels, 100, 0.3, seed=0, superclasses=superclasses)
    assert tools.noise_rate(labels, partial) == pytest.approx(int(0.3 * 3000) / 3000)


def test_asymmetric_map_fallbacks_and_errors():
    class_map = tools.asymmetric_class_map(100)
    assert class_map[0] == 1 and class_map[4] == 0 and class_map[7] == 8 and class_map[99] == 95
    assert np.array_equal(tools.asymmetric_class_map(6, superclasses=[0, 1, 0, 1, 0, 2]), [2, 3, 4, 1, 0, 5])
    with pytest.raises(ValueError, match="superclasses"):
        tools.asymmetric_noise(np.zeros(10, dtype=int), 7, 0.2, seed=0)
    with pytest.raises(ValueError, match=r"shape \(100,\)"):
        tools.asymmetric_class_map(100, superclasses=np.zeros(20))


# --------------------------------------------------------------------------------------------------
# Human labels (CIFAR-N)
# --------------------------------------------------------------------------------------------------
def fake_cifar10n(num_samples=50):
    rs = np.random.RandomState(0)
    keys = ["clean_label", "aggre_label", "worse_label", "random_label1", "random_label2", "random_label3"]
    return {key: rs.randint(0, 10, size=num_samples) for key in keys}


def test_load_human_noise_cifar10n_dict_of_numpy_arrays(tmp_path):
    content = fake_cifar10n()
    path = tmp_path / "CIFAR-10_human.pt"
    torch.save(content, path)
    for key, value in content.items():
        loaded = tools.load_human_noise(path, key=key, num_samples=50)
        assert loaded.dtype == np.int64 and np.array_equal(loaded, value)
    assert np.array_equal(tools.load_human_noise(path), content["worse_label"])
    with pytest.raises(ValueError, match="available keys.*aggre_label"):
        tools.load_human_noise(path, key="noisy_label")
    with pytest.raises(ValueError, match="50 labels.*50000 samples"):
        tools.load_human_noise(path, num_samples=50000)


def test_load_human_noise_file_written_under_numpy1(tmp_path):
    """The real CIFAR-N files were pickled under numpy 1, which names numpy.core.multiarray."""
    content = fake_cifar10n()
    buffer = io.BytesIO()
    torch.save(content, buffer)
    old_style = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as zin, zipfile.ZipFile(old_style, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            zout.writestr(name, data)
    path = tmp_path / "old.pt"
    path.write_bytes(old_style.getvalue())
    assert np.array_equal(tools.load_human_noise(path, key="aggre_label"), content["aggre_label"])


def test_load_human_noise_cifar100n_lists_npy_and_tensor(tmp_path):
    rs = np.random.RandomState(1)
    content = {
        "clean_label": rs.randint(0, 100, size=30).tolist(),
        "noisy_label": rs.randint(0, 100, size=30).tolist(),
        "noisy_coarse_label": rs.randint(0, 20, size=30).tolist(),
        "clean_coarse_label": rs.randint(0, 20, size=30).tolist(),
    }
    torch.save(content, tmp_path / "CIFAR-100_human.pt")
    assert np.array_equal(tools.load_human_noise(tmp_path / "CIFAR-100_human.pt"), content["noisy_label"])
    np.save(tmp_path / "labels.npy", np.arange(7))
    assert np.array_equal(tools.load_human_noise(tmp_path / "labels.npy"), np.arange(7))
    torch.save(torch.arange(5), tmp_path / "tensor.pt")
    assert np.array_equal(tools.load_human_noise(tmp_path / "tensor.pt"), np.arange(5))
    with pytest.raises(ValueError, match="key=None"):
        tools.load_human_noise(tmp_path / "tensor.pt", key="noisy_label")
    # Only tensors and plain numpy arrays may be unpickled, never other objects.
    torch.save({"worse_label": np.arange(3), "extra": fractions.Fraction(1, 2)}, tmp_path / "objects.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        tools.load_human_noise(tmp_path / "objects.pt")
    (tmp_path / "broken.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="weights_only=True"):
        tools.load_human_noise(tmp_path / "broken.pt")


# --------------------------------------------------------------------------------------------------
# Noise-file cache
# --------------------------------------------------------------------------------------------------
def test_noise_file_name_keeps_exact_rate():
    assert tools.noise_file_name("cifar10", "instance", 0.45, 123) == "cifar10_instance_r0.45_seed123.npy"
    assert tools.noise_file_name("cifar10", "instance", 0.45, 123) != tools.noise_file_name(
        "cifar10", "instance", 0.5, 123
    )
    assert tools.noise_file_name("animal10n", "instance", np.float64(0.08), 1) == "animal10n_instance_r0.08_seed1.npy"
    with pytest.raises(ValueError, match="path separators"):
        tools.noise_file_name("a/b", "instance", 0.1, 1)


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_get_or_create_creates_once_then_reuses(tmp_path, suffix):
    path = tmp_path / "nested" / f"labels{suffix}"
    calls = []

    def create():
        calls.append(1)
        return np.array([3, 1, 4, 1, 5])

    labels, created = tools.get_or_create_noisy_labels(path, create)
    assert created and len(calls) == 1 and np.array_equal(labels, [3, 1, 4, 1, 5])
    again, created = tools.get_or_create_noisy_labels(path, create)
    assert not created and len(calls) == 1 and np.array_equal(again, labels) and again.dtype == np.int64
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    if suffix == ".npy":
        assert np.array_equal(np.load(path), labels)
    else:
        assert torch.equal(torch.load(path, weights_only=True), torch.tensor([3, 1, 4, 1, 5]))


def test_load_label_file_reads_original_numpy_pt_files(tmp_path):
    """The original saved its noise with torch.save(numpy_array)."""
    torch.save(np.array([2, 7, 1]), tmp_path / "0.5_instance.pt")
    assert np.array_equal(tools.load_label_file(tmp_path / "0.5_instance.pt"), [2, 7, 1])


@pytest.mark.parametrize("name", ["bad.npy", "bad.pt"])
def test_corrupt_noise_file_is_reported(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match=r"noise file .*bad.* is unreadable .*delete it to regenerate"):
        tools.get_or_create_noisy_labels(tmp_path / name, lambda: np.zeros(3))


# --------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------
def test_noise_rate_and_transition_matrix_small_example():
    clean = np.array([0, 0, 0, 0, 1, 1, 2])
    noisy = np.array([0, 1, 1, 2, 1, 0, 2])
    assert tools.noise_rate(clean, noisy) == pytest.approx(4 / 7)
    T = tools.transition_matrix(clean, noisy, 4)
    expected = np.array(
        [
            [0.25, 0.5, 0.25, 0.0],
            [0.5, 0.5, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],  # class 3 has no samples
        ]
    )
    assert np.allclose(T, expected)
    with pytest.raises(ValueError, match="equal length"):
        tools.noise_rate(clean, noisy[:-1])


def test_format_transition_is_short_and_truncated():
    T = np.eye(100)
    text = tools.format_transition(T, max_classes=5)
    lines = text.splitlines()
    assert len(lines) == 7
    assert "K=100" in lines[0] and "mean diagonal 1.000" in lines[0] and "first 5" in lines[0]
    assert lines[2].split() == ["0", "1.00", "0.00", "0.00", "0.00", "0.00"]
