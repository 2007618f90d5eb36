"""Plots of a run folder as PNG files, without any web service.

    python -m training.plot runs/cifar10_instance0.5_instancegm_seed123      # -> <run>/plots/*.png

Reads ``metrics.jsonl`` and ``config.json`` (and ``splits.pt`` when the trainer saved the last GMM split, see
:mod:`training.dashboards`) and writes:

* ``accuracy.png``: test accuracy per epoch of the ensemble (summed logits) and of each net;
* ``losses.png``: warm-up cross-entropy, DivideMix Lx / Lu / penalty, the generative model's reconstruction,
  noisy-label cross-entropy and KL(z) terms, and the total loss, per net;
* ``split.png``: size of the labeled (clean) set and, when the true labels are known, precision, recall and AUC
  of each net's clean/noisy split per epoch;
* ``gmm.png``: the last GMM split: histograms of the per-sample losses the GMM saw and of the clean
  probabilities, split by whether the label is truly clean (only with ``splits.pt``).

Warm-up epochs are shaded and the learning-rate drop is marked. Matplotlib is used through its object API
(no pyplot, no display), so this also runs on a headless server.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.config import HelpFormatter

DPI = 100
# Figure sizes in inches; the PNGs are exactly FIGSIZE * DPI pixels.
FIGSIZE = {"accuracy": (9.0, 5.5), "losses": (16.0, 7.5), "split": (16.0, 4.2), "gmm": (12.0, 7.5)}
NET_STYLE = {"net1": dict(color="tab:blue"), "net2": dict(color="tab:orange")}
CLEAN_COLOR, NOISY_COLOR = "tab:green", "tab:red"
ACC_MIN_SPAN = 10.0  # percentage points: the least y range of the accuracy plot
LOSS_PANELS = (  # (title, metric suffix under train/<net>/)
    ("warm-up cross-entropy", "warmup/ce"),
    ("DivideMix Lx (labeled)", "dm/lx"),
    ("DivideMix Lu (unlabeled)", "dm/lu"),
    ("DivideMix uniform-prior penalty", "dm/penalty"),
    ("VAE reconstruction, -log CB(x | x_hat)", "vae/recon"),
    ("VAE noisy-label cross-entropy (weighted)", "vae/noisy_label_ce"),
    ("VAE KL(z) (weighted)", "vae/kl_z"),
    ("total loss (DivideMix + VAE)", "loss"),
)
SPLIT_PANELS = (("labeled (clean) share of the training set", "labeled"),) + tuple(
    (f"split {m}" if m != "auc" else "split AUC (clean prob vs truth)", m) for m in ("precision", "recall", "auc")
)


def _figure(kind: str, nrows: int = 1, ncols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE[kind], dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(1-based epochs, values) of the rows that have a finite ``key``."""
    pts = [(r["epoch"] + 1, r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    if not pts:
        return np.empty(0), np.empty(0)
    epochs, values = zip(*pts)
    return np.asarray(epochs), np.asarray(values, dtype=float)


def _decorate(ax, cfg: dict, num_epochs: int, *, label: bool = False) -> None:
    """Shade the warm-up epochs, mark the lr drop, integer epoch ticks from 1."""
    warm = int(cfg.get("warm_up", 0)) if cfg.get("method") != "ce" else 0
    if warm > 0:
        ax.axvspan(0.5, warm + 0.5, color="0.5", alpha=0.12, lw=0, label="warm-up" if label else None)
    drop = cfg.get("lr_drop_epoch")
    if drop is not None and 0 < drop < num_epochs:
        ax.axvline(drop + 0.5, color="0.4", ls=":", lw=1, label="lr drop" if label else None)
    ax.set_xlim(0.5, max(num_epochs, 1) + 0.5)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _not_drawn(rows: list[dict], cfg: dict, what: str) -> str:
    """Why a co-training panel is empty: not reached yet, or not something this run logs at all."""
    method = cfg.get("method", "?")
    if method == "ce":
        return "method ce: no divide, no co-training"
    warm = int(cfg.get("warm_up", 0))
    if not any(r.get("phase") == "train" for r in rows):
        done = rows[-1]["epoch"] + 1 if rows else 0
        return f"not yet: {what} start at epoch {warm + 1}\n(the run has finished {done} warm-up epochs)"
    return f"not logged by this run (method {method})"


def _keep_span(ax, min_span: float, lo: float, hi: float) -> None:
    """At least ``min_span`` on the y axis (within [lo, hi]): a flat curve does not look like a steep one."""
    bottom, top = ax.get_ylim()
    if top - bottom >= min_span:
        return
    bottom = min(max(lo, (bottom + top - min_span) / 2), hi - min_span)
    ax.set_ylim(bottom, bottom + min_span)


def _marker(n: int) -> dict:
    return dict(marker="o", ms=3) if n <= 40 else {}


def _nets(rows: list[dict]) -> list[str]:
    names = sorted({k.split("/")[1] for r in rows for k in r if k.startswith("test/") and k.count("/") == 2})
    return names or ["net1", "net2"]


# ---------------------------------------------------------------- the figures ------------------------------
def plot_accuracy(rows: list[dict], cfg: dict, path: Path, title: str) -> Path:
    fig, axes = _figure("accuracy")
    ax = axes[0, 0]
    n = len(rows)
    curves = [("test/acc", "ensemble (net1 + net2 logits)", dict(color="k", lw=2.2))]
    for net in _nets(rows):
        style = NET_STYLE.get(net, {})
        curves.append((f"test/{net}/acc", net, dict(lw=1.2, ls="--", **style)))
        curves.append((f"val/{net}/acc", f"{net} validation", dict(lw=1, ls=":", **style)))
    for key, label, style in curves:
        x, y = _series(rows, key)
        if len(y):
            best = int(np.argmax(y))
            label = f"{label}: last {y[-1]:.2f}, best {y[best]:.2f} (epoch {x[best]})"
            ax.plot(x, y, label=label, **style, **_marker(n))
    _decorate(ax, cfg, n, label=True)
    _keep_span(ax, ACC_MIN_SPAN, 0.0, 100.0)
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title=f"{title}: test accuracy")
    ax.legend(loc="best", fontsize=9, framealpha=0.9)
    fig.savefig(path)
    return path


def plot_losses(rows: list[dict], cfg: dict, path: Path, title: str) -> Path:
    fig, axes = _figure("losses", 2, 4)
    n = len(rows)
    for ax, (name, suffix) in zip(axes.flat, LOSS_PANELS):
        drawn = False
        for net in _nets(rows):
            x, y = _series(rows, f"train/{net}/{suffix}")
            if len(y):
                ax.plot(x, y, label=net, lw=1.4, **NET_STYLE.get(net, {}), **_marker(n))
                drawn = True
        ax.set_title(f"{name}\ntrain/<net>/{suffix}", fontsize=10)
        if not drawn:
            is_warmup_loss = suffix.startswith("warmup/")
            _empty(ax, "no warm-up in this run" if is_warmup_loss else _not_drawn(rows, cfg, "co-training losses"))
            continue
        _decorate(ax, cfg, n)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.suptitle(f"{title}: training losses (epoch means)")
    fig.savefig(path)
    return path


def plot_split(rows: list[dict], cfg: dict, num_train: int | None, path: Path, title: str) -> Path:
    fig, axes = _figure("split", 1, 4)
    n = len(rows)
    for ax, (name, metric) in zip(axes.flat, SPLIT_PANELS):
        drawn = False
        for net in _nets(rows):
            x, y = _series(rows, f"split/{net}/{metric}")
            if metric == "labeled" and num_train:
                y = y / num_train
            if len(y):
                ax.plot(x, y, label=net, lw=1.4, **NET_STYLE.get(net, {}), **_marker(n))
                drawn = True
        ax.set_title(name, fontsize=10)
        if not drawn:
            why = _not_drawn(rows, cfg, "GMM splits")
            if why.startswith("not logged") and cfg.get("noise_mode") == "real":
                why = "true labels unknown (real noise)"
            _empty(ax, why)
            continue
        _decorate(ax, cfg, n)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.suptitle(f"{title}: GMM clean/noisy split (p_threshold {cfg.get('p_threshold', '?')})")
    fig.savefig(path)
    return path


def _split_hist(ax, values: np.ndarray, is_clean: np.ndarray | None, bins: np.ndarray, xlabel: str) -> None:
    if is_clean is None:
        ax.hist(values, bins=bins, color="0.4", label=f"all ({len(values)})")
    else:
        ax.hist(
            [values[is_clean], values[~is_clean]],
            bins=bins,
            stacked=True,
            color=[CLEAN_COLOR, NOISY_COLOR],
            label=[f"label truly clean ({int(is_clean.sum())})", f"label truly wrong ({int((~is_clean).sum())})"],
        )
    ax.set(xlabel=xlabel, ylabel="samples")
    ax.grid(alpha=0.3)


def plot_gmm(splits: dict, cfg: dict, path: Path, title: str) -> Path:
    peers = splits["peers"]
    fig, axes = _figure("gmm", len(peers), 2)
    threshold = cfg.get("p_threshold")
    for row, (net, s) in zip(axes, sorted(peers.items())):
        truth = None if s.get("is_clean") is None else s["is_clean"].numpy().astype(bool)
        losses, prob = s.get("losses"), s["prob"].numpy()
        if losses is None:
            _empty(row[0], "per-sample losses not saved")
        else:
            _split_hist(row[0], losses.numpy(), truth, np.linspace(0, 1, 41), "normalised per-sample loss (GMM input)")
            row[0].set_title(f"{net}: what the GMM saw", fontsize=10)
            row[0].legend(fontsize=8)
        _split_hist(row[1], prob, truth, np.linspace(0, 1, 21), "clean probability (GMM posterior)")
        if threshold is not None:
            row[1].axvline(threshold, color="k", ls="--", lw=1, label=f"p_threshold {threshold:g}")
        row[1].set_title(f"{net}: clean probability (labeled set: right of the threshold)", fontsize=10)
        row[1].legend(fontsize=8)
    # The divide opening epoch k+1 (0-based k) uses the nets as they were after epoch k, which completed.
    fig.suptitle(f"{title}: GMM split made after epoch {splits['epoch']} (for epoch {splits['epoch'] + 1})")
    fig.savefig(path)
    return path


# ---------------------------------------------------------------- command line -----------------------------
class RunFilesError(ValueError):
    """A run folder's file that cannot be read; the message names it."""


def load_run(run_dir: Path) -> tuple[list[dict], dict[str, Any], dict | str | None]:
    """(metrics rows, config.json content or {}, saved split, or why it cannot be read, or None)."""
    # Imported here: torch loads only when a run is plotted, not for --help.
    from training.dashboards import load_splits
    from training.metrics import read_jsonl

    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{metrics} not found: pass a run folder (runs/<run name>) of this project")
    try:
        rows = read_jsonl(metrics)
    except ValueError as err:
        raise RunFilesError(f"{metrics} has a malformed line ({err})") from None
    info_path = run_dir / "config.json"
    try:
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    except ValueError as err:
        raise RunFilesError(f"{info_path} is not valid JSON ({err})") from None
    if not isinstance(info, dict):
        raise RunFilesError(f"{info_path} holds a {type(info).__name__}, not the object a run writes")
    try:
        splits: dict | str | None = load_splits(run_dir)
    except Exception as err:  # noqa: BLE001 - torch.load's errors on a damaged file vary (pickle, zip, EOF)
        splits = f"{run_dir / 'splits.pt'} cannot be read ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
    return rows, info, splits


def make_plots(run_dir: str | Path, out_dir: str | Path | None = None) -> tuple[list[Path], list[str]]:
    """Write every plot the run's files allow; returns (PNG paths, what could not be drawn and why)."""
    run_dir = Path(run_dir)
    rows, info, splits = load_run(run_dir)
    out = Path(out_dir) if out_dir else run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    cfg, title = info.get("config", {}), run_dir.name
    written = [
        plot_accuracy(rows, cfg, out / "accuracy.png", title),
        plot_losses(rows, cfg, out / "losses.png", title),
        plot_split(rows, cfg, info.get("num_train"), out / "split.png", title),
    ]
    missing = []
    if isinstance(splits, str):
        missing.append(f"gmm.png: {splits}")
    elif splits is not None:
        written.append(plot_gmm(splits, cfg, out / "gmm.png", title))
    else:
        missing.append(
            "gmm.png: no splits.pt in the run folder (the trainer saves it with training.dashboards.save_split "
            "after each GMM; runs without it have no per-sample losses to plot)"
        )
    return written, missing


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("run_dir", help="a run folder: runs/<run name> (holds metrics.jsonl)")
    parser.add_argument("--out", default="", help="where the PNGs go (empty: RUN_DIR/plots)")
    args = parser.parse_args(argv)
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        print(f"error: --out {args.out}: is a file, not a folder; pass a folder (it is created)", file=sys.stderr)
        return 2
    try:
        written, missing = make_plots(args.run_dir, args.out or None)
    except (FileNotFoundError, RunFilesError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    for what in missing:
        print(f"skipped {what}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
