"""One checkpoint schema, written atomically, read back with ``weights_only=True``.

Contents: ``format``, ``epoch`` (the last completed epoch), ``config`` (resolved, as a dict), ``peers``
({name: {net, vae, opt, opt_vae, loss_history}}), ``best`` (best-validation state where used), ``history``
(every epoch's metrics, for the summary), ``rng`` (python, numpy, torch, CUDA and the data module's
generator), ``data_identity`` (digests of the training labels and files), ``config_history`` (each resumed
segment's settings, where they changed) and ``git_sha``. The original saved no Adam state and had no
resume (its ``save_checkpoint`` kept the nets only).
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


# Fields that say where and how a run executes, not what it computes: free to differ on a resume.
RUN_ONLY = frozenset(
    {
        "resume",
        "allow_config_change",
        "lock_stale_min",
        "force_unlock",
        "device",
        "output_dir",
        "run_name",
        "data_path",
        "noise_dir",
        "saved",
        "num_workers",
        "eval_batch_size",
        "log_interval",
        "wandb",
        "wandb_project",
        "threads",
    }
)
# Changes a resume takes without --allow_config_change (the epochs already trained keep their meaning);
# they are still recorded in config_history.
EXTENDABLE = frozenset({"num_epochs"})


def check_compatible(saved: dict, current: dict, path: str | os.PathLike, allow_changes: bool = False) -> dict:
    """Refuse a resume that is another run; return the changed settings ``{key: [checkpoint's, now]}``.

    ``_MUST_MATCH`` fields always refuse. Any other field outside ``RUN_ONLY`` is a hyper-parameter: changing it
    mid-run changes the result, so it is refused unless ``allow_changes`` (``--allow_config_change``).
    """
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
    changed = {
        k: [saved[k], current.get(k)]
        for k in sorted(saved.keys() & current.keys())
        if k not in RUN_ONLY and k not in _MUST_MATCH and saved[k] != current[k]
    }
    refused = {k: v for k, v in changed.items() if k not in EXTENDABLE}
    if refused and not allow_changes:
        listed = "; ".join(f"{k}: checkpoint {old!r} vs now {new!r}" for k, (old, new) in refused.items())
        raise CheckpointError(
            f"checkpoint {path} was trained with other settings ({listed}); pass the checkpoint's values, "
            "or --allow_config_change to continue with the new ones (config.json's config_history keeps both)"
        )
    return changed


_IDENTITY_NAMES = {
    "train_labels": "the training labels (a noise or label file rewritten, or other samples)",
    "train_files": "the training files (images added, removed, renamed or resized)",
}


def check_same_data(saved: dict | None, current: dict, path: str | os.PathLike) -> None:
    """Refuse a resume whose training data is not the checkpoint's (``NoisyDataModule.identity``)."""
    if not saved:  # a checkpoint written before identities were recorded
        return
    changed = [_IDENTITY_NAMES.get(k, k) for k in sorted(saved) if k in current and saved[k] != current[k]]
    if changed:
        raise CheckpointError(
            f"checkpoint {path} was trained on other data: {' and '.join(changed)} differ from what was read "
            "now; restore the data it was trained on, or start a new run with a new --run_name"
        )
