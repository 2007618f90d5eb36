"""Label-noise generators, noisy-label files and noise reports.

Follows two originals:

* Xia et al., "Part-dependent label noise" (NeurIPS 2020), ``tools.py``: the instance-dependent generator
  (``get_instance_noisy_label``) that InstanceGM uses for CIFAR-10/100 (docs/design.md: Synthetic noise). It is
  reproduced with the same random stream but without touching numpy's or torch's global RNGs.
* DivideMix ``dataloader_cifar.py``: symmetric and asymmetric (class-dependent) CIFAR noise
  (docs/design.md: Synthetic noise).

Plus readers for CIFAR-N human labels and a cache for generated labels whose file names keep the exact noise
rate (the original's ``'%.1f' % r`` made r = 0.45 and r = 0.5 share one file, README Differences #14).

All functions are pure: numpy arrays in and out (torch tensors are accepted and converted), local
``np.random.RandomState`` generators only, CPU only.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np
import torch
from scipy import stats

PathLike = Union[str, os.PathLike]

# DivideMix's CIFAR-10 asymmetric map (truck→automobile, bird→airplane, cat↔dog, deer→horse); other classes
# keep their label.
CIFAR10_ASYMMETRIC_MAP = {9: 1, 2: 0, 3: 5, 5: 3, 4: 7}

CIFAR10N_DEFAULT_KEY = "worse_label"
CIFAR100N_DEFAULT_KEY = "noisy_label"


# --------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------
def _as_numpy(x: Any) -> np.ndarray:
    """Return ``x`` as a numpy array; torch tensors are detached and moved to the CPU first."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _check_labels(labels: Any, num_classes: int, name: str = "labels") -> np.ndarray:
    """Return ``labels`` as a 1-D int64 array with values in ``[0, num_classes)`` or raise ``ValueError``."""
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    arr = _as_numpy(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class indices, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer) and not np.all(np.mod(arr, 1) == 0):
        raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype} with fractions")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(
            f"{name} must lie in [0, {num_classes}), got values in [{arr.min()}, {arr.max()}]; "
            "pass num_classes covering every label"
        )
    return arr


def _check_rate(rate: float, allow_one: bool) -> float:
    """Return ``rate`` as a float in ``[0, 1)`` (or ``[0, 1]`` when ``allow_one``) or raise ``ValueError``."""
    rate = float(rate)
    upper_ok = rate <= 1.0 if allow_one else rate < 1.0
    if not (rate >= 0.0 and upper_ok):
        interval = "[0, 1]" if allow_one else "[0, 1)"
        raise ValueError(f"noise rate must lie in {interval}, got {rate}")
    return rate


# --------------------------------------------------------------------------------------------------
# Instance-dependent noise (Xia et al. 2020, docs/design.md: Synthetic noise)
# --------------------------------------------------------------------------------------------------
def instance_dependent_noise(
    images: Any,
    labels: Any,
    num_classes: int,
    rate: float,
    seed: int = 123,
    norm_std: float = 0.1,
) -> np.ndarray:
    """Part-dependent noise, Xia et al. ``tools.py:get_instance_noisy_label`` as InstanceGM calls it.

    Args:
        images: uint8 array ``(N, H, W, C)`` with raw pixels 0–255. Each sample is flattened in H, W, C order
            (InstanceGM transposes CIFAR to HWC before the call; Xia's original used CHW).
        labels: clean labels ``(N,)`` in ``[0, num_classes)``.
        num_classes: K.
        rate: mean flip rate n in ``[0, 1)``; per-sample rates are TruncNormal(n, norm_std) on ``[0, 1]``.
        seed: seed of the local ``RandomState`` (InstanceGM: 123, Xia: 5).
        norm_std: standard deviation of the per-sample flip rates.

    Returns:
        int64 array ``(N,)`` of noisy labels.

    The random stream is the one the original draws after ``np.random.seed(seed)`` (flip rates, then
    W ~ N(0, 1) of shape (K, F, K), then one uniform per sample inside ``np.random.choice``), taken here from
    a local ``RandomState`` so the global RNG is left alone. Scores are float32 as in the original, so the
    labels equal the original's run on CPU float32 for the same image order; the original's GPU/TF32 matmul
    may differ on the rare samples whose two best scores nearly tie.

    ``rate == 0`` returns the labels unchanged: the original would still draw flip rates from
    TruncNormal(0, 0.1) on [0, 1] (mean ≈ 0.08) and flip about 8% of the samples.
    """
    labels = _check_labels(labels, num_classes)
    rate = _check_rate(rate, allow_one=False)
    images = _as_numpy(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(
            f"images must be a uint8 array (N, H, W, C) of raw pixels, got dtype {images.dtype} shape {images.shape}"
        )
    if len(images) != len(labels):
        raise ValueError(f"images and labels must have the same length, got {len(images)} and {len(labels)}")
    if norm_std <= 0:
        raise ValueError(f"norm_std must be positive, got {norm_std}")
    if rate == 0.0:
        return labels.copy()

    num_samples = len(labels)
    features = images.reshape(num_samples, -1)  # (N, H*W*C), HWC order
    feature_size = features.shape[1]
    rs = np.random.RandomState(seed)

    flip_rates = stats.truncnorm((0.0 - rate) / norm_std, (1.0 - rate) / norm_std, loc=rate, scale=norm_std).rvs(
        num_samples, random_state=rs
    )

    transition_rows = np.empty((num_samples, num_classes), dtype=np.float32)
    for true_class in range(num_classes):
        # randn(K, F, K) fills W in C order, so drawing W[c] one class at a time gives the same numbers
        # without holding all of W (123 MB for CIFAR-100) in memory.
        projection = rs.randn(feature_size, num_classes).astype(np.float32)  # (F, K)
        members = np.flatnonzero(labels == true_class)
        if members.size:
            transition_rows[members] = _instance_transition_rows(
                features[members], projection, true_class, flip_rates[members]
            )
    return _sample_rows(transition_rows, rs.random_sample(num_samples))


def _instance_transition_rows(
    features: np.ndarray, projection: np.ndarray, true_class: int, flip_rates: np.ndarray
) -> np.ndarray:
    """Transition rows ``p_i = ρ_i·softmax(x_i W[y]) with a_y = -inf, p_i[y] += 1 - ρ_i`` for one true class.

    Computed in torch float32 like the original: ρ_i and 1 - ρ_i enter as float32 values, exactly as a
    float64 Python scalar does in a float32 torch op.
    """
    scores = torch.from_numpy(features.astype(np.float32)) @ torch.from_numpy(projection)  # (n_c, K)
    scores[:, true_class] = -float("inf")
    rows = torch.softmax(scores, dim=1) * torch.from_numpy(flip_rates.astype(np.float32))[:, None]
    rows[:, true_class] += torch.from_numpy((1.0 - flip_rates).astype(np.float32))
    return rows.numpy()


def _sample_rows(probabilities: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Draw one class per row exactly as ``RandomState.choice(K, p=row)`` would with the given uniforms.

    ``choice`` normalises the float64 cumulative sum by its last entry and returns
    ``searchsorted(cdf, u, side='right')``, i.e. the number of cdf entries <= u.
    """
    cdf = np.cumsum(probabilities.astype(np.float64), axis=1)  # (N, K)
    cdf /= cdf[:, -1:]
    return np.sum(cdf <= uniforms[:, None], axis=1).astype(np.int64)


# --------------------------------------------------------------------------------------------------
# Class-conditional noise (DivideMix dataloader_cifar.py, docs/design.md: Synthetic noise)
# --------------------------------------------------------------------------------------------------
def _noisy_indices(num_samples: int, rate: float, rs: np.random.RandomState) -> np.ndarray:
    """DivideMix picks exactly ``int(rate * N)`` samples from a shuffled index list."""
    return rs.permutation(num_samples)[: int(rate * num_samples)]


def symmetric_noise(labels: Any, num_classes: int, rate: float, seed: int) -> np.ndarray:
    """DivideMix's symmetric CIFAR noise: ``int(rate*N)`` random samples get a uniform label over all K.

    The new label may equal the true one (DivideMix's definition), so the realised noise rate is about
    ``rate * (K - 1) / K``. DivideMix used Python's global ``random``; here a local ``RandomState(seed)``.
    """
    labels = _check_labels(labels, num_classes)
    rate = _check_rate(rate, allow_one=True)
    rs = np.random.RandomState(seed)
    noisy = labels.copy()
    chosen = _noisy_indices(len(labels), rate, rs)
    noisy[chosen] = rs.randint(0, num_classes, size=len(chosen))
    return noisy


def asymmetric_class_map(num_classes: int, superclasses: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Target class of every class under asymmetric noise, as an int64 array ``(K,)``.

    With ``superclasses`` (fine → coarse, length K) every class flips to the next member of its superclass,
    members ordered by class index, cyclically (the usual CIFAR-100 asymmetric noise). Without it: DivideMix's
    CIFAR-10 map for K = 10, and consecutive groups of 5 classes for K = 100 (CIFAR-100 has 20 superclasses of
    5, but they are not consecutive fine labels, so pass the real ``coarse_labels`` when they are available).
    """
    if superclasses is None:
        if num_classes == 10:
            class_map = np.arange(10, dtype=np.int64)
            for source, target in CIFAR10_ASYMMETRIC_MAP.items():
                class_map[source] = target
            return class_map
        if num_classes == 100:
            superclasses = np.arange(100) // 5
        else:
            raise ValueError(
                f"asymmetric noise has a built-in map only for 10 or 100 classes, got {num_classes}; "
                "pass superclasses (fine -> coarse label array of that length)"
            )
    coarse = _as_numpy(superclasses)
    if coarse.shape != (num_classes,):
        raise ValueError(
            f"superclasses must have one coarse label per class, shape ({num_classes},), got {coarse.shape}"
        )
    class_map = np.arange(num_classes, dtype=np.int64)
    for group in np.unique(coarse):
        members = np.flatnonzero(coarse == group)  # ascending class indices
        class_map[members] = np.roll(members, -1)
    return class_map


def asymmetric_noise(
    labels: Any,
    num_classes: int,
    rate: float,
    seed: int,
    superclasses: Sequence[int] | np.ndarray | None = None,
) -> np.ndarray:
    """DivideMix's asymmetric noise: ``int(rate*N)`` random samples are moved by ``asymmetric_class_map``.

    Samples of classes that map to themselves keep their label, so for CIFAR-10 the realised rate is about
    ``rate / 2`` (5 of 10 classes move). DivideMix defines only the CIFAR-10 map; CIFAR-100 uses the
    next-class-within-superclass map (see ``asymmetric_class_map``).
    """
    labels = _check_labels(labels, num_classes)
    rate = _check_rate(rate, allow_one=True)
    class_map = asymmetric_class_map(num_classes, superclasses)
    rs = np.random.RandomState(seed)
    noisy = labels.copy()
    chosen = _noisy_indices(len(labels), rate, rs)
    noisy[chosen] = class_map[labels[chosen]]
    return noisy


# --------------------------------------------------------------------------------------------------
# Label files: CIFAR-N human labels and the noisy-label cache
# --------------------------------------------------------------------------------------------------
def _numpy_safe_globals() -> list:
    """Globals needed to unpickle plain numpy arrays with ``torch.load(weights_only=True)``.

    CIFAR-N files and the original's noise files are ``torch.save`` of numpy arrays. Files written under
    numpy 1 name ``numpy.core.multiarray``, under numpy 2 ``numpy._core.multiarray``; both are allowed.
    """
    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy < 2
        multiarray = importlib.import_module("numpy.core.multiarray")
    allowed: list = [np.ndarray, np.dtype]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [
            (multiarray._reconstruct, f"{module}._reconstruct"),
            (multiarray.scalar, f"{module}.scalar"),
        ]
    # Unpickling a dtype builds an instance of its class (numpy.dtypes.Int64DType, ...): allow those too.
    codes = np.typecodes["AllInteger"] + np.typecodes["AllFloat"] + "?"
    allowed += sorted({type(np.dtype(code)) for code in codes}, key=str)
    return allowed


def _torch_load_weights_only(path: Path) -> Any:
    """``torch.load(weights_only=True)`` that also accepts pickled numpy arrays (never arbitrary objects)."""
    with torch.serialization.safe_globals(_numpy_safe_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)


def _to_label_array(value: Any, source: str) -> np.ndarray:
    """Convert a stored label container (tensor, array, list) to a 1-D int64 array."""
    arr = _as_numpy(value)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.number)):
        raise ValueError(f"{source} must be a 1-D array of class indices, got dtype {arr.dtype} shape {arr.shape}")
    # A cast would truncate 3.9 to 3 and turn complex values into their real part: refuse instead.
    if np.iscomplexobj(arr):
        raise ValueError(f"{source} holds complex numbers (dtype {arr.dtype}); labels are class indices 0..K-1")
    if arr.size and np.issubdtype(arr.dtype, np.floating):
        whole = np.isfinite(arr) & (arr == np.round(arr))
        if not whole.all():
            i = int(np.argmin(whole))
            raise ValueError(
                f"{source} holds non-integer labels (label {i} is {arr[i].item()!r}); labels are class indices 0..K-1"
            )
    return arr.astype(np.int64)


def load_human_noise(path: PathLike, key: str | None = None, num_samples: int | None = None) -> np.ndarray:
    """Read human noisy labels in the CIFAR-N format (Wei et al. 2022).

    ``CIFAR-10_human.pt`` holds a dict with ``clean_label``, ``aggre_label``, ``worse_label``,
    ``random_label1..3``; ``CIFAR-100_human.pt`` holds ``clean_label``, ``noisy_label``,
    ``noisy_coarse_label``, ``clean_coarse_label``. The default key is ``worse_label`` if present, else
    ``noisy_label``. A ``.npy`` file or a ``.pt`` holding a single tensor/array is also accepted (then ``key``
    must be None).
    """
    path = Path(path)
    if path.suffix == ".npy":
        content: Any = np.load(path, allow_pickle=False)
    else:
        try:
            content = _torch_load_weights_only(path)
        except Exception as err:
            raise ValueError(
                f"could not read {path} with torch.load(weights_only=True) ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); CIFAR-N files are torch.save'd dicts of "
                "label arrays: pass the original CIFAR-10_human.pt / CIFAR-100_human.pt or a .npy label array"
            ) from err

    if isinstance(content, dict):
        if key is None:
            key = next((k for k in (CIFAR10N_DEFAULT_KEY, CIFAR100N_DEFAULT_KEY) if k in content), None)
            if key is None:
                raise ValueError(f"{path} has no default label key; pass key= one of {sorted(content)}")
        if key not in content:
            raise ValueError(f"{path} has no key {key!r}; available keys: {sorted(content)}")
        labels = _to_label_array(content[key], f"{path}[{key!r}]")
    else:
        if key is not None:
            raise ValueError(f"{path} holds a single label array, not a dict; pass key=None")
        labels = _to_label_array(content, str(path))

    if num_samples is not None and len(labels) != num_samples:
        raise ValueError(f"{path} holds {len(labels)} labels but the dataset has {num_samples} samples")
    return labels


def noise_file_name(dataset: str, mode: str, rate: float, seed: int) -> str:
    """Cache file name such as ``cifar10_instance_r0.45_seed123.npy``.

    The rate is written with ``repr`` so every distinct rate gets its own file (the original's ``'%.1f'``
    wrote 0.45 as ``0.5``, README Differences #14).
    """
    for part_name, part in (("dataset", dataset), ("mode", mode)):
        if not part or os.sep in part or "/" in part:
            raise ValueError(f"{part_name} must be a non-empty name without path separators, got {part!r}")
    return f"{dataset}_{mode}_r{float(rate)!r}_seed{int(seed)}.npy"


def load_label_file(path: PathLike, generated: bool = False) -> np.ndarray:
    """Load a noisy-label file: ``.npy`` via ``np.load``, ``.pt`` via ``torch.load(weights_only=True)``.

    A ``.pt`` file may hold a tensor or, like the original's ``<r>_instance.pt``, a torch.save'd numpy array.
    ``generated``: a cached file this code made (an unreadable one may be deleted to regenerate it), not the
    user's own.
    """
    path = Path(path)
    try:
        if path.suffix == ".npy":
            content: Any = np.load(path, allow_pickle=False)
        elif path.suffix == ".pt":
            content = _torch_load_weights_only(path)
        else:
            raise ValueError("expected a .npy or .pt file")
        return _to_label_array(content, str(path))
    except Exception as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        fix = "delete it to regenerate" if generated else "pass a .npy or .pt file of integer labels"
        raise ValueError(f"noise file {path} is unreadable ({detail}); {fix}") from err


def _save_label_file_atomic(path: Path, labels: np.ndarray) -> None:
    """Write ``labels`` to a temporary file beside ``path``, then rename: readers never see half a file."""
    if path.suffix not in (".npy", ".pt"):
        raise ValueError(f"noise file must end in .npy or .pt, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            if path.suffix == ".npy":
                np.save(handle, labels, allow_pickle=False)
            else:
                torch.save(torch.from_numpy(labels), handle)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp_name)
        raise


def get_or_create_noisy_labels(path: PathLike, create_fn: Callable[[], Any]) -> tuple[np.ndarray, bool]:
    """Return ``(labels, created)``: the labels stored at ``path``, or ``create_fn()`` written there first.

    Generated noise is an artefact to create once and freeze (docs/design.md: Synthetic noise), hence the cache.
    """
    path = Path(path)
    if path.exists():
        return load_label_file(path, generated=True), False
    labels = _to_label_array(create_fn(), "create_fn() result")
    _save_label_file_atomic(path, labels)
    return labels, True


# --------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------
def noise_rate(clean: Any, noisy: Any) -> float:
    """Fraction of samples whose noisy label differs from the clean one."""
    clean, noisy = _as_numpy(clean).ravel(), _as_numpy(noisy).ravel()
    if len(clean) != len(noisy) or len(clean) == 0:
        raise ValueError(f"clean and noisy must be non-empty and of equal length, got {len(clean)} and {len(noisy)}")
    return float(np.mean(clean != noisy))


def transition_matrix(clean: Any, noisy: Any, num_classes: int) -> np.ndarray:
    """Empirical ``T[c, j] = P(noisy = j | clean = c)``, float64 ``(K, K)``; rows of absent classes are 0."""
    clean = _check_labels(clean, num_classes, "clean")
    noisy = _check_labels(noisy, num_classes, "noisy")
    if len(clean) != len(noisy):
        raise ValueError(f"clean and noisy must have equal length, got {len(clean)} and {len(noisy)}")
    counts = np.bincount(clean * num_classes + noisy, minlength=num_classes * num_classes)
    counts = counts.reshape(num_classes, num_classes).astype(np.float64)
    row_sums = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, row_sums, out=np.zeros_like(counts), where=row_sums > 0)


def format_transition(T: np.ndarray, max_classes: int = 10) -> str:
    """Short text table of a transition matrix ``T`` (rows: clean class, columns: noisy class) for logs.

    Only the first ``max_classes`` rows and columns are printed; the header gives the mean of the diagonal
    (the fraction of labels kept, averaged over classes) for the full matrix.
    """
    T = _as_numpy(T)
    if T.ndim != 2 or T.shape[0] != T.shape[1]:
        raise ValueError(f"T must be a square (K, K) matrix, got shape {T.shape}")
    num_classes = T.shape[0]
    shown = min(num_classes, max(1, int(max_classes)))
    header = f"transition matrix rows=clean cols=noisy, K={num_classes}, mean diagonal {np.mean(np.diag(T)):.3f}"
    if shown < num_classes:
        header += f" (first {shown} classes shown)"
    width = len(str(num_classes - 1)) + 1
    lines = [header, " " * width + "".join(f"{j:>6d}" for j in range(shown))]
    for c in range(shown):
        lines.append(f"{c:>{width - 1}d} " + "".join(f"{T[c, j]:6.2f}" for j in range(shown)))
    return "\n".join(lines)
