"""Device, precision, seeding and random-number-generator state: decided once, in one place."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import random
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from training import faults
from training.config import ConfigError

log = logging.getLogger("training")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU. An explicit CUDA device that is absent is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA GPU is visible to PyTorch here; use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"--device {name}: {torch.cuda.device_count()} GPU(s) are visible here (cuda:0 onwards; "
            "CUDA_VISIBLE_DEVICES renumbers them)"
        )
    return device


def use_device(device: torch.device) -> None:
    """Make ``device`` the current CUDA device: kernels, cuDNN handles and the allocator of tensors created
    without a device (``torch.cuda.current_device()``) then live there rather than on GPU 0."""
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device); choose cudnn benchmark or determinism."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = deterministic
    # NOTE(original): cudnn.benchmark = True everywhere; deterministic mode is the opt-in.
    torch.backends.cudnn.benchmark = not deterministic


TF32_FLAGS = ("torch.backends.cudnn.allow_tf32", "torch.backends.cuda.matmul.allow_tf32")


def set_tf32(mode: str) -> dict[str, bool]:
    """Set both TF32 switches for ``--tf32`` (conv, all, off); returns them as :func:`tf32_flags` does.

    Set explicitly rather than left to the installed PyTorch, whose matmul default changed in 1.12: a run's
    precision then depends on its flags alone (README, "Precision").
    """
    torch.backends.cudnn.allow_tf32 = mode in ("conv", "all")
    torch.backends.cuda.matmul.allow_tf32 = mode == "all"
    return tf32_flags()


def tf32_flags() -> dict[str, bool]:
    """The TF32 switches in force, under their PyTorch names (recorded in config.json)."""
    return {
        TF32_FLAGS[0]: bool(torch.backends.cudnn.allow_tf32),
        TF32_FLAGS[1]: bool(torch.backends.cuda.matmul.allow_tf32),
    }


def autocast_factory(amp: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A zero-argument factory of the autocast context for the network forwards (``off``: a no-op)."""
    if amp == "off":
        return contextlib.nullcontext
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("--amp fp16 needs a CUDA device; on the CPU use --amp bf16 or off")
    if amp == "bf16" and device.type == "cuda" and not _cuda_bf16(device):
        raise ConfigError(
            f"--amp bf16: {torch.cuda.get_device_name(device)} has no bf16 units (compute capability below 8.0); "
            "use --amp fp16 or off"
        )
    return partial(torch.autocast, device_type=device.type, dtype=dtype)


def _cuda_bf16(device: torch.device) -> bool:
    """Native bf16 on this GPU; emulated bf16 (which recent PyTorch reports as supported) is far slower than fp32."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def eval_batch_size(cfg, device: torch.device) -> int:
    """Batch of the no-grad evaluation passes (divide, test, validation); the result does not depend on it.

    GPU: large batches (max(256, 2B)) fill the device. CPU: B, the original's evaluation batch, at the paper's
    width; PreAct ResNets narrower than 64 take batches up to 256 under the same memory bound. Above glibc's
    32 MiB mmap threshold every activation buffer is a fresh mmap that the kernel zero-fills page by page on each
    forward: at width 64 a batch of 256 spends a third of its CPU time in those page faults and costs 1.26x the
    CPU time per image of batches of 64 (benchmarks/results/cpu_options_w64.md).
    """
    if cfg.eval_batch_size > 0:
        return cfg.eval_batch_size
    if device.type == "cuda":
        return max(256, 2 * cfg.batch_size)
    if cfg.backbone.startswith("preact"):
        # The largest activation is width x 32 x 32 fp32 = 4 KiB x width per image: stay at half the threshold,
        # so narrow CPU nets (width 8-16) still evaluate in batches of 256 instead of paying per-call overhead.
        return max(cfg.batch_size, min(256, 4096 // max(cfg.width, 1)))
    return cfg.batch_size


# ---------------------------------------------------------------- RNG state --------------------------------
# Stored as plain tensors/ints/lists so checkpoints load with torch.load(weights_only=True).
def capture_rng_state(device: torch.device | None = None) -> dict:
    """Python, numpy and torch CPU streams, plus the CUDA stream of ``device`` alone when it is a GPU.

    Only the run's own GPU is read: asking for every visible GPU's state creates a CUDA context on each of
    them (on GPU 0 even for a CPU run), which breaks forked children and occupies memory on other runs' GPUs.
    """
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if device is not None and device.type == "cuda":
        state["cuda_device"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict, device: torch.device | None = None) -> None:
    """Put back what :func:`capture_rng_state` saved; the CUDA stream goes to ``device`` (warned when it cannot)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    on_gpu = device is not None and device.type == "cuda"
    saved = state.get("cuda_device")
    if saved is None and "cuda" in state:  # checkpoints that held every visible GPU's stream
        streams = state["cuda"]
        index = (device.index or 0) if on_gpu else 0
        if on_gpu and len(streams) != torch.cuda.device_count():
            log.warning(
                "the checkpoint holds the CUDA random streams of %d GPU(s), %d are visible now: the stream of "
                "GPU %d is restored from the checkpoint's GPU %d, so the run is not bit-identical to an "
                "uninterrupted one",
                len(streams),
                torch.cuda.device_count(),
                index,
                min(index, len(streams) - 1),
            )
        saved = streams[min(index, len(streams) - 1)] if streams else None
    if on_gpu and saved is not None:
        torch.cuda.set_rng_state(saved, device)
    elif on_gpu or saved is not None:
        log.warning(
            "the checkpoint was saved on %s and is resumed on %s: the GPU random stream (augmentation and sampling "
            "noise drawn on the GPU) starts afresh, so the run is not bit-identical "
            "to an uninterrupted one",
            "a GPU" if saved is not None else "the CPU",
            device,
        )


# ---------------------------------------------------------------- provenance -------------------------------
GIT_SHA_ENV = "INSTANCEGM_GIT_SHA"  # set at image build time (Dockerfile_train's GIT_SHA build argument)


def git_sha() -> str:
    """The commit the code is at: ``git rev-parse HEAD``, or, where there is no repository (a Docker image is
    built without .git), the ``INSTANCEGM_GIT_SHA`` environment variable; empty when neither is known."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get(GIT_SHA_ENV, "").strip()


def environment_info(device: torch.device) -> dict:
    """Versions and hardware recorded next to every run, so results can be compared later."""
    import sklearn
    import torchvision

    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
        "git_sha": git_sha(),
        "tf32": tf32_flags(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to a temporary file next to ``path`` (a name no other writer uses), fsync, rename.

    A reader sees the old file or the new one, never a part; on any failure the temporary file is removed
    and the error (a plain ``OSError`` such as ENOSPC) propagates with the old file untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        faults.point(f"rename:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())
