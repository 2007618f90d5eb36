"""What a person looks at to judge a noisy-label run, beyond the scalar curves.

With ``--wandb offline|online`` the :class:`~training.metrics.MetricSink` already mirrors every
``metrics.jsonl`` key and the resolved config. These functions add (what the original
logged: docs/design.md, Evaluation, checkpoints and logging):

* :func:`log_inputs`: a ``wandb.Table`` of training images with their given (noisy) and true labels;
* :func:`log_reconstructions`: inputs x next to the generative model's reconstructions on a fixed batch;
* :func:`log_clean_prob_histograms`: the GMM clean probability, split by whether the label is truly clean;
* :func:`save_split`: the last GMM split of each net in ``RUN_DIR/splits.pt`` (no wandb needed), read by
  ``python -m training.plot``; :func:`record_split` does this and the histograms in one call.

Each takes plain objects (the sink, a data module, a ``Peer``, tensors), does nothing for wandb when the sink has
no wandb run, and leaves every random-number generator as it found it, so a run's numbers do not depend on
whether dashboards are on.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from training import checkpoint as ckpt_lib

SPLITS_FILE = "splits.pt"
SPLITS_FORMAT = "instancegm-splits/1"
RECON_EVERY = 5  # epochs between reconstruction grids (the first and every RECON_EVERY-th epoch)
RECON_IMAGES = 16  # images in the reconstruction grid
INPUT_ROWS = 64  # rows of the input table
HIST_BINS = 20  # bins of the clean-probability histograms, on [0, 1]


def _uint8_hwc(image: Tensor) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W, C) uint8, what wandb.Image and PNG writers take."""
    return (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def _class_names(data) -> list[str] | None:
    classes = (getattr(data, "noise_info", None) or {}).get("classes")
    return list(classes) if classes else None


# ---------------------------------------------------------------- inputs -----------------------------------
def log_inputs(sink, data, count: int = INPUT_ROWS) -> None:
    """Table of the first ``count`` training images: index, image, noisy label, true label, whether it is wrong.

    ``data`` is a data module (``sample_images``); the true-label columns stay empty when the truth is unknown.
    """
    if sink.wandb is None:
        return
    import wandb

    images, noisy, clean = data.sample_images(count)
    names = _class_names(data)

    def label(y) -> str | int | None:
        if y is None:
            return None
        return f"{int(y)} {names[int(y)]}" if names else int(y)

    table = wandb.Table(columns=["index", "image", "noisy label", "true label", "label is wrong"])
    for i, (image, y_noisy) in enumerate(zip(images, noisy)):
        y_true = None if clean is None else clean[i]
        wrong = None if y_true is None else bool(int(y_noisy) != int(y_true))
        table.add_data(i, wandb.Image(_uint8_hwc(image)), label(y_noisy), label(y_true), wrong)
    sink.log_media({"input/table": table}, epoch=0)


# ---------------------------------------------------------------- reconstructions --------------------------
@contextlib.contextmanager
def _eval_mode_keep_rng(*modules: torch.nn.Module | None):
    """Eval mode and a forked RNG for a visualisation pass; restores both afterwards."""
    modules = tuple(m for m in modules if m is not None)
    modes = [m.training for m in modules]
    # The modules' own GPUs only: forking every visible GPU's stream would create a context on each of them.
    devices = sorted({p.device.index or 0 for m in modules for p in m.parameters() if p.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            for m in modules:
                m.eval()
            yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


def reconstruction_grid(peer, images: Tensor, seed: int = 0) -> Tensor:
    """A (3, H', W') grid in [0, 1]: row 1 the inputs x, row 2 the reconstructions E[x | x_hat], row 3 the same
    reconstructions stretched to [0, 1] per image (to see structure through the original's double sigmoid,
    which keeps E[x | x_hat] within about [0.5, 0.58], README Differences #2).

    ``x_hat`` is the continuous Bernoulli parameter; its mean is what the model expects the pixels to be. The
    sampling noise (Gumbel y_hat, reparameterisation) comes from a fixed ``seed``, so successive epochs differ only
    by the model.
    """
    from torchvision.utils import make_grid

    device = next(peer.net.parameters()).device
    with _eval_mode_keep_rng(peer.net, peer.vae):
        torch.manual_seed(seed)
        x = images.to(device).float()
        out = peer.vae(x, peer.net)
        mean = torch.distributions.ContinuousBernoulli(probs=out.x_hat.float().clamp(1e-4, 1 - 1e-4)).mean
    flat = mean.flatten(1)
    lo, hi = flat.min(1).values.view(-1, 1, 1, 1), flat.max(1).values.view(-1, 1, 1, 1)
    stretched = (mean - lo) / (hi - lo).clamp_min(1e-6)
    rows = torch.cat([x, mean, stretched]).cpu()  # (3N, C, H, W): inputs, means, stretched means
    return make_grid(rows, nrow=len(x), padding=2, pad_value=1.0)


def log_reconstructions(sink, peer, images: Tensor | None, epoch: int, every: int = RECON_EVERY) -> None:
    """Log :func:`reconstruction_grid` of ``peer`` (e.g. net1 and its generative model) at the first epoch and
    every ``every`` epochs. ``images``: a fixed batch (N, C, H, W) in [0, 1], e.g. ``data.sample_images(16)[0]``
    (None: nothing to log)."""
    if sink.wandb is None or peer.vae is None or images is None or epoch % every != 0:
        return
    import wandb

    grid = reconstruction_grid(peer, images[:RECON_IMAGES])
    caption = f"epoch {epoch + 1}, {peer.name}: inputs / E[x | x_hat] / the same stretched per image"
    sink.log_media({f"vae/{peer.name}/reconstructions": wandb.Image(_uint8_hwc(grid), caption=caption)}, epoch)


# ---------------------------------------------------------------- the GMM split ----------------------------
def log_clean_prob_histograms(sink, name: str, prob: Tensor, is_clean: Tensor | None, epoch: int) -> None:
    """Histograms on [0, 1] of a net's clean probabilities: of the truly clean and of the truly mislabelled
    samples (one histogram of all samples when the truth is unknown)."""
    if sink.wandb is None:
        return
    import wandb

    prob = prob.detach().float().cpu().numpy()

    def hist(values: np.ndarray):
        return wandb.Histogram(np_histogram=np.histogram(values, bins=HIST_BINS, range=(0.0, 1.0)))

    if is_clean is None:
        values = {f"split/{name}/clean_prob": hist(prob)}
    else:
        mask = is_clean.detach().cpu().numpy().astype(bool)
        values = {
            f"split/{name}/clean_prob/truly_clean": hist(prob[mask]),
            f"split/{name}/clean_prob/truly_noisy": hist(prob[~mask]),
        }
    sink.log_media(values, epoch)


def save_split(
    run_dir: str | Path,
    epoch: int,
    name: str,
    prob: Tensor,
    indices: Tensor,
    is_clean: Tensor | None = None,
    losses: Tensor | None = None,
) -> Path:
    """Write net ``name``'s GMM split of ``epoch`` into ``RUN_DIR/splits.pt`` (atomically; one epoch kept).

    ``prob``: clean probability per evaluated sample; ``indices``: those samples' training indices;
    ``is_clean``: the truth for the WHOLE training set (indexed here), or None; ``losses``: what the GMM was fitted
    on (normalised per-sample losses). A second net's split of the same epoch is added next to the first.
    """
    path = Path(run_dir) / SPLITS_FILE
    state = load_splits(run_dir)
    if state is None or state["epoch"] != epoch:
        state = {"format": SPLITS_FORMAT, "epoch": epoch, "peers": {}}
    indices = torch.as_tensor(indices).long().cpu()
    state["peers"][name] = {
        "prob": prob.detach().float().cpu(),
        "indices": indices,
        "is_clean": None if is_clean is None else torch.as_tensor(is_clean).bool().cpu()[indices],
        "losses": None if losses is None else losses.detach().float().cpu(),
    }
    ckpt_lib.save_atomic(state, path)
    return path


def load_splits(run_dir: str | Path) -> dict[str, Any] | None:
    """The saved split (``{"epoch", "peers": {name: {prob, indices, is_clean, losses}}}``) or None."""
    path = Path(run_dir) / SPLITS_FILE
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state if isinstance(state, dict) and state.get("format") == SPLITS_FORMAT else None


def record_split(
    sink,
    run_dir: str | Path,
    epoch: int,
    name: str,
    prob: Tensor,
    indices: Tensor,
    is_clean: Tensor | None = None,
    losses: Tensor | None = None,
) -> None:
    """:func:`save_split`, then :func:`log_clean_prob_histograms` (the trainer's one call after each GMM)."""
    save_split(run_dir, epoch, name, prob, indices, is_clean, losses)
    truth = None if is_clean is None else torch.as_tensor(is_clean).bool().cpu()[torch.as_tensor(indices).long()]
    log_clean_prob_histograms(sink, name, prob, truth, epoch)
