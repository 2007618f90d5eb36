"""Predictions and a relabelling list from a run's checkpoint: which given labels look wrong.

    python -m training.predict runs/<run>/checkpoint.pt                        # the run's own training set
    python -m training.predict runs/<run>/checkpoint.pt --data_path DIR --out predictions.csv --sort

Sources of images (``--split``):

* ``train`` (default without ``--data_path``): the run's training set, rebuilt from its config (same noisy
  labels, same ``--train_subset``); ``--data_path`` there only says where the dataset now lives.
* ``folder`` (default with ``--data_path``): every image under ``DIR/train`` if that exists, else under ``DIR``
  (the training layout of ``--dataset imagefolder``; point at ``DIR/test`` to score the test folder). With class
  sub-folders the folder is the given label (names from the run's classes; for other datasets the folder names
  must be class indices 0..K-1); without them the images are unlabelled and only predictions are written.
  Images are centre-cropped and resized to the run's ``vae_size``, as in training.

One CSV row per image:

=================  ============================================================================================
``index``          for ``train``: the image's index in the dataset's training set (with ``--train_subset``, not
                   its position in the subset: CIFAR / Fashion-MNIST image ``index`` of the training file);
                   for ``folder``: the position in the sorted file list
``path``           the image file, for image folders (empty otherwise: use ``index``)
``given_label``    the label the data gives (the noisy label; empty when unlabelled)
``true_label``     the clean label, only where the run knows it (synthetic noise on a clean dataset)
``predicted``      argmax of the summed logits of the two nets, the ensemble the test accuracy uses
``confidence``     softmax(logits_net1 + logits_net2) at ``predicted``
``prob_given``     the same softmax at ``given_label``
``clean_prob``     mean over the two nets of the GMM posterior that ``given_label`` is clean, computed as the
                   trainer's divide step does: per-sample cross-entropy -> min-max normalisation -> 2-component
                   GMM (``training/dividemix.py``), fitted on the scored set itself (so it needs a set of some
                   size, hundreds of images, with both clean and wrong labels in it)
``clean_prob_net1``, ``clean_prob_net2``
                   each net's own GMM clean probability, from its own losses and its own GMM (``clean_prob`` is
                   their mean); as in training, where each net's split is the other net's training set
``suspect``        1 when ``clean_prob <= p_threshold``: the sample the trainer would have put in the unlabelled
                   set; these are the rows to relabel first (``--sort`` lists them first). Below
                   ``MIN_GMM_IMAGES`` scored images the GMM has too little to separate (on a correctly labelled
                   folder of a few dozen images it flags half of them): there ``suspect`` is
                   ``prob_given <= p_threshold``, with a warning, and ``--sort`` and the contact sheet follow
                   ``prob_given``
=================  ============================================================================================

Without ``--out`` the CSV goes into the run's folder: ``predictions.csv`` for its training set,
``predictions_<folder>.csv`` for a folder (the contact sheet beside it: ``suspects.png``, ``suspects_<folder>.png``).

Class names are added (``given_class``, ``predicted_class``) when the run knows them (``imagefolder``,
Fashion-MNIST, CIFAR-10).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from training import checkpoint as ckpt_lib
from training import dividemix, versions
from training.config import Config, HelpFormatter

log = logging.getLogger("training")

# Fewer scored images than this: the 2-component GMM on the losses is not meaningful (README, "Finding
# mislabelled images": it needs hundreds of images with both right and wrong labels).
MIN_GMM_IMAGES = 200
SMALL_SET_WARNING = (
    "{num} images: too few for the GMM's clean probability (it needs hundreds, with both right and wrong "
    "labels; on a few dozen it flags correct labels); suspect is prob_given <= {tau:g} here, clean_prob is "
    "written but not used"
)


class _KeepLogits(nn.Module):
    """Wraps a classifier so that one pass of ``dividemix.per_sample_losses`` also hands back the logits."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.logits: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        self.logits.append(out.detach().float().cpu())
        return out


def load_run(checkpoint: str | Path, device: torch.device):
    """(config, the two trained peers on ``device`` in eval mode, the run's config.json content or {})."""
    from training.launch import build_peers

    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist: pass a run's runs/<run name>/checkpoint.pt")
    state = ckpt_lib.load(checkpoint)
    cfg = Config.from_dict(state["config"])
    peers = build_peers(cfg, device)
    for peer in peers:
        try:
            peer.net.load_state_dict(state["peers"][peer.name]["net"])
        except (KeyError, RuntimeError) as err:  # size mismatch, missing keys: an edited or foreign file
            first = (str(err).strip().splitlines() or [""])[0][:160]
            raise ckpt_lib.CheckpointError(
                f"checkpoint {checkpoint}: the weights of {peer.name} do not fit the network its config describes "
                f"({type(err).__name__}: {first}); use the run's own unedited checkpoint.pt"
            ) from None
        peer.net.eval()
    info_path = Path(checkpoint).parent / "config.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    return cfg, peers, info


def _batches(images: np.ndarray, labels: np.ndarray, batch_size: int, device: torch.device) -> Iterator[tuple]:
    """(x, y, idx) batches of uint8 (N, H, W, C) images, the shape ``per_sample_losses`` reads."""
    from dataloaders.transforms import to_float

    for start in range(0, len(images), batch_size):
        stop = min(start + batch_size, len(images))
        x = torch.from_numpy(np.ascontiguousarray(images[start:stop].transpose(0, 3, 1, 2)))
        yield to_float(x).to(device), torch.as_tensor(labels[start:stop]).to(device), torch.arange(start, stop)


def folder_set(cfg: Config, info: dict, data_path: str) -> tuple[np.ndarray, np.ndarray | None, list[str], list[str]]:
    """(uint8 images, given labels or None, file paths, class names) of a folder, read like the training folder."""
    from dataloaders.imagefolder import class_folders, find_folders, list_flat_images, list_images, load_images

    folder, _ = find_folders(data_path)
    classes = (info.get("noise") or {}).get("classes") or [str(k) for k in range(cfg.num_classes)]
    if class_folders(folder):
        listed = list_images(folder, classes)
        paths, labels = listed.paths, listed.labels
    else:
        paths, labels = list_flat_images(folder), None
        if not paths:
            raise FileNotFoundError(f"{folder} holds no images")
        log.info("%s has no class sub-folders: %d unlabelled images, predictions only", folder, len(paths))
    return load_images(paths, cfg.vae_size), labels, [str(p) for p in paths], classes


def score(peers, loader) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """Per net: logits and per-sample losses of every sample (one pass each); and the sample indices."""
    logits, losses, indices = [], [], None
    for peer in peers:
        keep = _KeepLogits(peer.net)
        loss, idx = dividemix.per_sample_losses(keep, loader())
        logits.append(torch.cat(keep.logits))
        losses.append(loss)
        indices = idx
    return logits, losses, indices


def clean_probability(losses: Tensor, cfg: Config) -> Tensor:
    """The divide step of the trainer on one net's losses: normalise, fit the GMM, posterior of the clean mode."""
    norm = dividemix.normalise_losses(losses)
    gmm = dividemix.gmm_clean_probability(
        norm, max_iter=cfg.gmm_max_iter, tol=cfg.gmm_tol, reg_covar=cfg.gmm_reg_covar, random_state=cfg.seed
    )
    return gmm.prob


def predict(
    checkpoint: str | Path,
    *,
    data_path: str = "",
    split: str = "",
    batch_size: int = 256,
    device: str = "auto",
    p_threshold: float | None = None,
    arrays: dict | None = None,
) -> tuple[list[dict], dict]:
    """The CSV rows (see the module docstring) and a summary dict.

    ``arrays``: a dict filled with what the label files and the contact sheet need (``training/suspects.py``).
    """
    from training.runtime import resolve_device

    dev = resolve_device(device)
    cfg, peers, info = load_run(checkpoint, dev)
    split = split or ("folder" if data_path else "train")
    tau = cfg.p_threshold if p_threshold is None else p_threshold
    true = None
    if split == "train":
        from dataloaders import build_data

        data = build_data(cfg.replace(data_path=data_path or cfg.data_path, device=str(dev)), dev)
        given = data.noisy_labels.numpy()
        true = None if data.clean_labels is None else data.clean_labels.numpy()
        paths = list(getattr(data, "train_paths", None) or [""] * data.num_train)
        classes = (getattr(data, "noise_info", None) or {}).get("classes")
        num = data.num_train
        # A --train_subset run trains on some of the dataset's images: rows name them by their dataset index.
        dataset_index = getattr(data, "dataset_indices", None)

        def loader():
            return data.eval_train_loader(batch_size)

    elif split == "folder":
        if not data_path:
            raise ValueError("--split folder needs --data_path DIR")
        images, given, paths, classes = folder_set(cfg, info, data_path)
        num, dataset_index = len(images), None
        # Unlabelled images: dummy labels give losses that are not used.
        labels = given if given is not None else np.zeros(num, dtype=np.int64)

        def loader():
            return _batches(images, labels, batch_size, dev)

    else:
        raise ValueError(f"--split {split!r}: choose train or folder")

    logits, losses, indices = score(peers, loader)
    order = torch.argsort(indices)  # rows in index order whatever the loader's order
    summed = sum(lg[order] for lg in logits)  # (N, K): the ensemble of the test protocol
    probs = torch.softmax(summed, 1)
    confidence, predicted = probs.max(1)
    per_net = [clean_probability(loss[order], cfg) for loss in losses] if given is not None else []
    clean = torch.stack(per_net).mean(0) if per_net else None
    names = list(classes) if classes else None
    flag_by = "prob_given" if given is not None and num < MIN_GMM_IMAGES else "clean_prob"
    if given is not None:
        given_prob = probs[torch.arange(num), torch.as_tensor(np.asarray(given), dtype=torch.long)]
        flag_score = given_prob if flag_by == "prob_given" else clean  # low: likely mislabelled
        if flag_by == "prob_given":
            log.warning("warning: " + SMALL_SET_WARNING.format(num=num, tau=tau))

    rows = []
    for i in range(num):
        row = {
            "index": i if dataset_index is None else int(dataset_index[i]),
            "path": paths[i],
            "given_label": "" if given is None else int(given[i]),
        }
        if true is not None:
            row["true_label"] = int(true[i])
        row["predicted"] = int(predicted[i])
        row["confidence"] = round(float(confidence[i]), 6)
        if given is not None:
            row["prob_given"] = round(float(probs[i, int(given[i])]), 6)
            row["clean_prob"] = round(float(clean[i]), 6)
            for name, p in zip(("net1", "net2"), per_net):
                row[f"clean_prob_{name}"] = round(float(p[i]), 6)
            row["suspect"] = int(float(flag_score[i]) <= tau)
        if names:
            row["given_class"] = "" if given is None else names[int(given[i])]
            row["predicted_class"] = names[int(predicted[i])]
        rows.append(row)

    summary = {"rows": num, "split": split, "p_threshold": tau, "flag_by": flag_by}
    if given is not None:
        summary["suspects"] = sum(r["suspect"] for r in rows)
        summary["agreement"] = float((predicted.numpy() == np.asarray(given)).mean())
        summary["estimated_noise_rate"] = float((1 - flag_score).mean())  # expected share of wrong labels
    if true is not None and given is not None:
        from training.metrics import split_quality

        is_clean = torch.as_tensor(np.asarray(given) == true)
        quality = split_quality(flag_score, is_clean, tau)  # "clean" = not suspect
        wrong = ~is_clean.numpy()
        flagged = np.array([r["suspect"] == 1 for r in rows])
        summary.update(
            truly_wrong=int(wrong.sum()),
            suspect_precision=float((flagged & wrong).sum() / max(flagged.sum(), 1)),
            suspect_recall=float((flagged & wrong).sum() / max(wrong.sum(), 1)),
            auc=quality["auc"],
            accuracy_vs_true=float((predicted.numpy() == true).mean()),
        )
    if arrays is not None:
        base = None
        if split == "train" and (getattr(data, "noise_info", None) or {}).get("file"):
            import tools

            base = tools.load_label_file(data.noise_info["file"])
        arrays.update(
            split=split,
            probs=probs.numpy(),
            predicted=predicted.numpy(),
            given=None if given is None else np.asarray(given, dtype=np.int64),
            clean_prob=None if clean is None else clean.numpy(),
            score=None if given is None else flag_score.numpy(),
            flag_by=flag_by,  # what flags and ranks: clean_prob or prob_given
            suspect=None if clean is None else np.array([r["suspect"] == 1 for r in rows]),
            index=np.array([r["index"] for r in rows]),
            dataset_index=None if dataset_index is None else np.asarray(dataset_index),
            base_labels=base,
            images=getattr(data, "_np_train", None) if split == "train" else images,  # uint8 (N, H, W, C)
            paths=paths,
            classes=names,
        )
    return rows, summary


def write_label_files(
    arrays: dict,
    *,
    relabel: str = "",
    drop: str = "",
    pred_probs: str = "",
    sheet: int = 0,
    sheet_path: str | Path = "suspects.png",
) -> list[Path]:
    """The files of ``training/suspects.py`` asked for; returns the paths written."""
    from training import suspects

    written = []
    if pred_probs:
        written.append(suspects.save_npy(pred_probs, arrays["probs"].astype(np.float32)))
    if arrays["given"] is None:
        if relabel or drop or sheet:
            log.info("unlabelled images: no --relabel, --drop or contact sheet")
        return written
    flagged = arrays["suspect"]
    if relabel:
        if arrays["split"] != "train":
            raise ValueError("--relabel writes the run's training labels: use --split train (the default)")
        corrected = suspects.corrected_labels(arrays["given"], arrays["predicted"], flagged)
        vector = suspects.noise_file_vector(corrected, arrays["dataset_index"], arrays["base_labels"])
        written.append(suspects.save_npy(relabel, vector))
    if drop:
        written.append(suspects.save_npy(drop, arrays["index"][~flagged].astype(np.int64)))
    if sheet > 0:
        top = np.argsort(arrays["score"], kind="stable")[:sheet]
        names = arrays["classes"] or [str(k) for k in range(arrays["probs"].shape[1])]
        if arrays["images"] is not None:
            images = [arrays["images"][i] for i in top]
        elif all(arrays["paths"][i] for i in top):
            from PIL import Image

            images = [np.asarray(Image.open(arrays["paths"][i]).convert("RGB")) for i in top]
        else:
            log.info("no images to show: contact sheet skipped")
            return written
        written.append(
            suspects.contact_sheet(
                images,
                [names[int(arrays["given"][i])] for i in top],
                [names[int(arrays["predicted"][i])] for i in top],
                [float(arrays["score"][i]) for i in top],
                sheet_path,
                "p_clean" if arrays["flag_by"] == "clean_prob" else "p_given",
            )
        )
    return written


def write_csv(rows: list[dict], path: str | Path, sort: bool = False, sort_by: str = "clean_prob") -> Path:
    """Write ``rows`` (sorted by ``sort_by``, most suspect first, with ``sort``)."""
    if sort and rows and sort_by in rows[0]:
        rows = sorted(rows, key=lambda r: (r[sort_by], r["index"]))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def default_outputs(checkpoint: str | Path, split: str, data_path: str) -> Path:
    """The CSV's place without --out: the run's folder, one file per scored set (a folder's named after it)."""
    run_dir = Path(checkpoint).parent
    if split == "folder":
        return run_dir / f"predictions_{Path(data_path).resolve().name}.csv"
    return run_dir / "predictions.csv"


def sheet_beside(csv_path: Path) -> Path:
    """``suspects.png`` beside the CSV; ``suspects_<folder>.png`` beside a default ``predictions_<folder>.csv``."""
    stem = csv_path.stem
    suffix = stem[len("predictions") :] if stem.startswith("predictions_") else ""
    return csv_path.with_name(f"suspects{suffix}.png")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("checkpoint", help="a run's checkpoint.pt")
    parser.add_argument("--data_path", default="", help="folder of images to score (or where the run's data lives)")
    parser.add_argument(
        "--split",
        choices=("train", "folder"),
        default="",
        help="train: the run's training set; folder: the images in --data_path (empty: folder if given, else train)",
    )
    parser.add_argument(
        "--out",
        default="",
        help="CSV file to write (empty: the run's folder, predictions.csv, or predictions_<folder>.csv for a folder)",
    )
    parser.add_argument("--sort", action="store_true", help="most likely mislabelled rows first")
    parser.add_argument(
        "--p_threshold",
        type=float,
        default=None,
        help="suspect threshold on clean_prob (empty: the run's --p_threshold)",
    )
    parser.add_argument("--batch_size", type=int, default=256, help="images per forward pass")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument(
        "--relabel",
        default="",
        help="write FILE.npy: the given labels with flagged ones replaced by the prediction, the format "
        "--noise_file takes (retrain with --noise_file FILE.npy and the same data settings)",
    )
    parser.add_argument("--drop", default="", help="write FILE.npy: the indices (CSV 'index') of the samples kept")
    parser.add_argument(
        "--pred_probs", default="", help="write FILE.npy: the ensemble's N x K class probabilities, rows in index order"
    )
    parser.add_argument(
        "--sheet", type=int, default=32, help="the N most suspect images in suspects.png beside --out (0: none)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from dataloaders.base import DataConfigError, DatasetNotFoundError
    from training import suspects
    from training.config import ConfigError

    arrays: dict = {}
    split = args.split or ("folder" if args.data_path else "train")
    out = Path(args.out) if args.out else default_outputs(args.checkpoint, split, args.data_path)
    try:
        for path in (args.relabel, args.drop, args.pred_probs):
            if path:
                suspects.check_npy(path)
        if args.relabel and split != "train":
            raise ValueError("--relabel writes the run's training labels: use --split train")
        if args.sheet < 0:
            raise ValueError(f"--sheet {args.sheet}: the number of images must be >= 0")
        suspects.check_output_file(out, "--out")
        versions.check_torchvision()
        rows, summary = predict(
            args.checkpoint,
            data_path=args.data_path,
            split=args.split,
            batch_size=args.batch_size,
            device=args.device,
            p_threshold=args.p_threshold,
            arrays=arrays,
        )
        files = write_label_files(
            arrays,
            relabel=args.relabel,
            drop=args.drop,
            pred_probs=args.pred_probs,
            sheet=args.sheet,
            sheet_path=sheet_beside(out),
        )
        path = write_csv(rows, out, args.sort, summary.get("flag_by", "clean_prob"))
    except (ckpt_lib.CheckpointError, ConfigError, DataConfigError, DatasetNotFoundError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {summary['rows']} rows to {path}")
    if "suspects" in summary:
        what = "clean probability" if summary["flag_by"] == "clean_prob" else "prob_given"
        print(
            f"{summary['suspects']} suspect labels ({what} <= {summary['p_threshold']:g}); "
            f"the ensemble agrees with {100 * summary['agreement']:.1f}% of the given labels"
        )
    if "truly_wrong" in summary:
        print(
            f"against the true labels: {summary['truly_wrong']} given labels are wrong; suspects catch "
            f"{100 * summary['suspect_recall']:.1f}% of them with precision {100 * summary['suspect_precision']:.1f}% "
            f"(AUC {summary['auc']:.3f}); ensemble accuracy {100 * summary['accuracy_vs_true']:.2f}%"
        )
    if "estimated_noise_rate" in summary:
        print(
            f"summary: {summary['suspects']} of {summary['rows']} flagged; estimated noise rate "
            f"{100 * summary['estimated_noise_rate']:.1f}% (mean of 1 - {summary['flag_by']})"
        )
    for path in files:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
