"""torch and torchvision must come from one build: a mixed pair fails far from its cause.

pip pairs them only when both come from one index. When PyTorch's CPU index cannot be reached half-way, a CPU
torch ends up next to PyPI's CUDA torchvision, and the first run dies in a ``torchvision::nms`` traceback. Each
torch 2.N release has one torchvision 0.(N+15) release built against it, and the CPU / CUDA builds carry their
name in the version's local part (``2.5.1+cpu``, ``0.20.1+cu124``; none: PyPI's default build). Other builds
(source, nightly, vendor containers such as NVIDIA's ``2.6.0a0+...``) pair differently: only their loading is
checked.
"""

from __future__ import annotations

import re
import sys

from training.config import ConfigError

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


_OFFICIAL = re.compile(r"\d+\.\d+\.\d+(\+(cpu|cu\d+|rocm[\d.]+|xpu))?")


def _release(version: str) -> tuple[int, ...]:
    numbers = []
    for part in version.split("+")[0].split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        numbers.append(int(digits) if digits else 0)
    return tuple(numbers)


def _builds_conflict(a: str, b: str) -> bool:
    """Two builds that cannot share a process: a CPU one with a CUDA one, or two tagged CUDA/ROCm versions.

    An untagged (PyPI) wheel next to a tagged CUDA one is left alone: PyPI's Linux wheels are a CUDA build."""
    tag_a, tag_b = a.partition("+")[2], b.partition("+")[2]
    return tag_a != tag_b and ((tag_a and tag_b) or "cpu" in (tag_a, tag_b))


def matching_torchvision(torch_version: str) -> str:
    """The torchvision release built against ``torch_version`` (torch 2.N.p -> torchvision 0.(N+15).p, the rule of
    every release from torch 2.2, the oldest requirements.txt allows)."""
    major, minor, patch = (_release(torch_version) + (0, 0, 0))[:3]
    return f"0.{minor + 15}.{patch}" if major == 2 else ""


def pair_problem(torch_version: str, torchvision_version: str | None, import_error: str = "") -> str | None:
    """A one-line explanation with the command that fixes it, or None when the two belong together."""
    wanted = matching_torchvision(torch_version)
    if torchvision_version is None:
        first = import_error.splitlines()[0] if import_error else "not installed"
        found = f"torchvision does not load with torch {torch_version} ({first})"
    else:
        if not (wanted and _OFFICIAL.fullmatch(torch_version) and _OFFICIAL.fullmatch(torchvision_version)):
            return None
        same_release = _release(torchvision_version)[:2] == _release(wanted)[:2]
        if same_release and not _builds_conflict(torch_version, torchvision_version):
            return None
        why = "different builds" if same_release else f"torch {torch_version.split('+')[0]} needs torchvision {wanted}"
        found = f"torch {torch_version} and torchvision {torchvision_version} are not a pair ({why})"
    pins = f"torch=={torch_version.split('+')[0]} torchvision=={wanted}" if wanted else "torch torchvision"
    cpu = "+cpu" in torch_version or (torchvision_version or "").endswith("+cpu")
    command = f"{sys.executable} -m pip install --force-reinstall {pins}" + (f" --index-url {CPU_INDEX}" if cpu else "")
    fallback = " (where that index cannot be reached, without --index-url: PyPI's larger CUDA build)" if cpu else ""
    return f"{found}; reinstall both from one index: {command}{fallback}"


def check_torchvision() -> None:
    """Raise ConfigError (one line, with the fix) when torchvision does not load or is not built for this torch."""
    import torch

    try:
        import torchvision
    except (ImportError, RuntimeError, OSError) as err:  # "operator torchvision::nms does not exist", ...
        problem = pair_problem(torch.__version__, None, f"{type(err).__name__}: {err}")
    else:
        problem = pair_problem(torch.__version__, getattr(torchvision, "__version__", "unknown"))
    if problem:
        raise ConfigError(problem)
