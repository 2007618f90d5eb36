"""One checkpoint schema, written atomically, read back with ``weights_only=True``.

Contents: ``format``, ``epoch`` (the last completed epoch), ``config`` (resolved, as a dict), ``peers``
({name: {net, vae, opt, opt_vae, loss_history}}), ``best`` (best-validation state where used), ``history``
(every epoch's metrics, for the summary), ``rng`` (python, numpy, torch, CUDA and the data module's
generator) and ``git_sha``. The original saved no Adam state and had no resume (SPEC §4.3).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from training.runtime import atomic_write_bytes

FORMAT = "instancegm-checkpoint/1"
FILENAME = "checkpoint.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says which file and what to do."""


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """torch.save into memory, then :func:`atomic_write_bytes` (temporary file, fsync, rename over ``path``).

    Serialising first turns a full disk into a plain ``OSError`` (ENOSPC) instead of torch's opaque
    ``RuntimeError``, and a run killed during the write leaves the previous file intact.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(Path(path), buffer.getbuffer())


def load(path: str | os.PathLike) -> dict:
    """Load and check a checkpoint of this project (on the CPU; tensors are moved by their owners)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check --resume (use 'auto' for this run's own)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); resume from another file or start a new run")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- a text or truncated file fails in many ways (IndexError, ...)
        first = (str(err).splitlines() or [""])[0][:160]
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a checkpoint of this project ({type(err).__name__}"
            f"{': ' + first if first else ''}); resume from another file or start a new run"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path} is not an InstanceGM checkpoint of this project (format {found!r}, expected {FORMAT!r}); "
            "the original code's .tar files cannot be resumed"
        )
    return ckpt


# Fields that must agree between a checkpoint and the run resuming it: anything that changes the shapes of the
# saved tensors, what the saved epoch counter means, or which samples, labels and model the run uses.
_MUST_MATCH = (
    "dataset",
    "num_classes",
    "train_subset",
    "balanced_subset",
    "test_subset",
    "num_batches",
    "noise_mode",
    "r",
    "noise_file",
    "noise_key",
    "noise_seed",
    "noise_norm_std",
    "backbone",
    "width",
    "vae_size",
    "z_dim",
    "method",
    "normalize_inputs",
    "gaussian_reparam",
    "single_sigmoid",
    "vae_fixed_subset",
    "batch_size",
    "seed",
)


def check_compatible(saved: dict, current: dict, path: str | os.PathLike) -> None:
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}"
        for k in _MUST_MATCH
        if k in saved and saved[k] != current.get(k)  # (a key the checkpoint predates is not compared)
    ]
    if diffs:
        raise CheckpointError(
            f"checkpoint {path} belongs to a different run ({'; '.join(diffs)}); "
            "pass the same settings or a new --run_name"
        )
