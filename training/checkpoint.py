"""One checkpoint schema, written atomically, read back with ``weights_only=True``.

Contents: ``format``, ``epoch`` (the last completed epoch), ``config`` (resolved, as a dict), ``peers``
({name: {net, vae, opt, opt_vae, loss_history}}), ``best`` (best-validation state where used), ``history``
(every epoch's metrics, for the summary), ``rng`` (python, numpy, torch, CUDA and the data module's
generator) and ``git_sha``. The original saved no Adam state and had no resume (SPEC §4.3).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "instancegm-checkpoint/1"
FILENAME = "checkpoint.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says which file and what to do."""


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``.

    A run killed during the write leaves the previous checkpoint intact.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load(path: str | os.PathLike) -> dict:
    """Load and check a checkpoint of this project (on the CPU; tensors are moved by their owners)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check --resume (use 'auto' for this run's own)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a checkpoint of this project ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:160]}); resume from another file or start a new run"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path} is not an InstanceGM checkpoint of this project (format {found!r}, expected {FORMAT!r}); "
            "the original code's .tar files cannot be resumed"
        )
    return ckpt


# Fields that must agree between a checkpoint and the run resuming it: anything that changes the shapes of the
# saved tensors or what the saved epoch counter means.
_MUST_MATCH = (
    "dataset",
    "num_classes",
    "backbone",
    "width",
    "method",
    "z_dim",
    "vae_size",
    "noise_mode",
    "r",
    "train_subset",
    "batch_size",
)


def check_compatible(saved: dict, current: dict, path: str | os.PathLike) -> None:
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}"
        for k in _MUST_MATCH
        if saved.get(k) != current.get(k)
    ]
    if diffs:
        raise CheckpointError(
            f"checkpoint {path} belongs to a different run ({'; '.join(diffs)}); "
            "pass the same settings or a new --run_name"
        )
