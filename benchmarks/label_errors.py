"""Label-error detection on Fashion-MNIST with synthetic IDN: InstanceGM / DivideMix against cleanlab.

On the same images and the same noisy labels (the budget of ``benchmarks/fmnist_idn.py``), each detector gives a
score per training image (higher = the given label is more likely wrong) and its own flagged set:

==========================  ================================================================================
``instancegm``, ``dividemix``  ``1 - clean_prob`` of ``python -m training.predict`` on the run's final
                            checkpoint; flagged: ``clean_prob <= p_threshold`` (predict's ``suspect``)
``...+noise_rate``          the same for a run trained with ``--selection noise_rate``; flagged: the
                            round(ε̂ N) highest scores, ε̂ the run's last-epoch noise-rate estimate
``cleanlab_kfold``          ``cleanlab.filter.find_label_issues`` on K-fold (K = 5) out-of-sample probabilities
                            of cross-entropy training, same network, width, epochs and lr schedule as the
                            engine's ``ce`` method (two nets, summed logits); score 1 - self-confidence
``cleanlab_instancegm``     the same cleanlab call on the InstanceGM ensemble's (in-sample) probabilities
``ce_small_loss``           the cross-entropy run's per-sample loss on the given label; flagged: the
                            ensemble's prediction disagrees with the given label
==========================  ================================================================================

Per detector and rate: AUROC and average precision of the ranking, precision / recall / F1 of the flagged
set, precision at k = the true number of wrong labels, and the minutes of compute it took (training + scoring,
all K folds; one thread per process). Then, at 40% IDN, the loop a practitioner runs: cross-entropy retrained on
(a) the noisy labels, (b) the labels without each tool's flagged samples, (c) the flagged samples relabelled by
the tool's prediction; the table gives test accuracy.

    python benchmarks/label_errors.py --jobs 2        # 3 rates x 3 seeds (fmnist_idn budget), resumable
    python benchmarks/label_errors.py --quick         # seconds: wiring check (tests/test_benchmarks.py)

Every piece is cached under ``<results_dir>/label_errors/``: engine runs are ordinary run folders (their
``checkpoint.pt`` is what predict scores; a fresh clone retrains them), predict's scores go into
``<run>/label_scores.npz``, each fold into ``kfold_r<rate>_seed<s>/fold<k>.npz`` and each retrain into
``retrain_r<rate>_seed<s>/<variant>.json``, so an interrupted table continues where it stopped. Writes
``label_errors.md``, ``label_errors.json`` and ``label_errors.png`` (precision-recall curves, one panel per rate)
into ``--results_dir`` (``label_errors_quick.*`` with ``--quick``). ``--jobs`` parallelises the engine runs only;
the folds and retrains of one invocation run one after the other, so several invocations with different
``--seeds`` can share a machine and a results folder, and a last one with all seeds writes the whole table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks import fmnist_idn  # noqa: E402
from training import detection  # noqa: E402
from training.config import Config, HelpFormatter  # noqa: E402
from training.launch import StdoutHandler  # noqa: E402
from training.metrics import read_jsonl  # noqa: E402

log = logging.getLogger("benchmarks")

RATES = (0.2, 0.4, 0.5)
SEEDS = (1, 2, 3)
RETRAIN_RATE = 0.4
FOLDS = 5
ROWS = ("ce", "dividemix", "instancegm", "dividemix+noise_rate", "instancegm+noise_rate")  # engine runs
QUICK_ROWS = ("ce", "instancegm")
# detector -> the engine run whose checkpoint it reads (None: the K-fold cross-entropy)
DETECTORS = {
    "instancegm": "instancegm",
    "dividemix": "dividemix",
    "instancegm+noise_rate": "instancegm+noise_rate",
    "dividemix+noise_rate": "dividemix+noise_rate",
    "cleanlab_kfold": None,
    "cleanlab_instancegm": "instancegm",
    "ce_small_loss": "ce",
}
RETRAIN_TOOLS = ("instancegm", "dividemix", "cleanlab_kfold", "cleanlab_instancegm", "ce_small_loss")
QUICK_RETRAIN_TOOLS = ("instancegm", "cleanlab_kfold")
COLOURS = {
    "instancegm": "tab:red",
    "dividemix": "tab:blue",
    "instancegm+noise_rate": "tab:orange",
    "dividemix+noise_rate": "tab:cyan",
    "cleanlab_kfold": "tab:green",
    "cleanlab_instancegm": "tab:purple",
    "ce_small_loss": "tab:gray",
}


# ================================================================ scores of the engine's runs ================
def run_scores(cfg: Config) -> dict[str, np.ndarray]:
    """predict on a finished run's checkpoint (cached as ``label_scores.npz`` beside it)."""
    from training import predict

    run_dir = fmnist_idn.run_dir_of(cfg)
    cache = run_dir / "label_scores.npz"
    if cache.exists():
        return dict(np.load(cache))
    if not (run_dir / "checkpoint.pt").exists():
        raise SystemExit(f"{run_dir} has no checkpoint.pt to score: delete that folder so the run is trained again")
    t0 = time.perf_counter()
    arrays: dict = {}
    rows, _ = predict.predict(
        run_dir / "checkpoint.pt", data_path=cfg.data_path, split="train", device=cfg.device, arrays=arrays
    )
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    out = {
        "probs": arrays["probs"],
        "given": arrays["given"],
        "true": np.array([r["true_label"] for r in rows], dtype=np.int64),
        "clean_prob": arrays["clean_prob"],
        "suspect": arrays["suspect"],
        "index": arrays["index"],
        "estimated_rate": np.float64(metrics[-1].get("noise/estimated_rate", np.nan)),
        "seconds": np.float64(sum(r.get("time/epoch_s", 0.0) for r in metrics) + time.perf_counter() - t0),
    }
    np.savez(cache, **out)
    return out


# ================================================================ cross-entropy outside the engine ==========
def _lazy(make):
    """A function returning ``make()``, called at most once."""
    box: list = []

    def get():
        if not box:
            box.append(make())
        return box[0]

    return get


def fmnist_data(cfg: Config, device: torch.device):
    """The run's training subset and noisy labels, exactly as the engine builds them for ``cfg``."""
    from dataloaders import build_data

    return build_data(cfg.replace(device=str(device)), device)


def train_ce(cfg: Config, data, images: np.ndarray, labels: np.ndarray, device: torch.device, seed: int):
    """The engine's ``ce`` method on (images, labels): two nets, batch 2B, warm-up loss, lr step; returns them."""
    from dataloaders.base import InMemoryDataModule
    from training import dividemix
    from training.launch import build_peers
    from training.runtime import seed_everything

    seed_everything(seed)
    module = InMemoryDataModule(
        data.name, images, labels, images[:1], labels[:1], cfg.num_classes, aug=data.aug, device=device, seed=seed
    )
    peers = build_peers(cfg.replace(method="ce", selection="gmm"), device)
    for epoch in range(cfg.num_epochs):
        lr = cfg.lr / (cfg.lr_drop_factor if epoch >= cfg.lr_drop_epoch else 1.0)
        for peer in peers:
            for group in peer.opt.param_groups:
                group["lr"] = lr
            peer.net.train()
            for x, y, _ in module.warmup_loader(2 * cfg.batch_size):
                x, y = x.to(device), y.to(device)
                loss, _ = dividemix.warmup_loss(peer.net(x), y, cfg.warmup_penalty)
                peer.opt.zero_grad(set_to_none=True)
                loss.backward()
                peer.opt.step()
    return [p.net.eval() for p in peers]


@torch.no_grad()
def ensemble_probs(nets, images: np.ndarray, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """softmax of the summed logits of the nets (the engine's test ensemble), rows in the order of ``images``."""
    from training.predict import _batches

    labels = np.zeros(len(images), dtype=np.int64)
    out = [
        torch.softmax(sum(n(x) for n in nets).float(), 1).cpu()
        for x, _, _ in _batches(images, labels, batch_size, device)
    ]
    return torch.cat(out).numpy()


def kfold_probs(cfg: Config, data, folds: int, fold_dir: Path, device: torch.device):
    """(out-of-sample probabilities of every training image, the labels the folds trained on, seconds).

    K-fold, stratified by the noisy label; each fold is cached, and when all are the dataset is not read.
    """
    from sklearn.model_selection import StratifiedKFold

    caches = [fold_dir / f"fold{k}.npz" for k in range(folds)]
    if not all(c.exists() for c in caches):
        images, noisy = data()._np_train, data().noisy_labels.numpy()
        fold_dir.mkdir(parents=True, exist_ok=True)
        splitter = StratifiedKFold(folds, shuffle=True, random_state=cfg.seed)
        for k, (train_idx, held_idx) in enumerate(splitter.split(np.zeros(len(noisy)), noisy)):
            if caches[k].exists():
                continue
            t0 = time.perf_counter()
            nets = train_ce(cfg, data(), images[train_idx], noisy[train_idx], device, cfg.seed * 100 + k)
            held = ensemble_probs(nets, images[held_idx], device)
            seconds = time.perf_counter() - t0
            np.savez(caches[k], held_idx=held_idx, labels=noisy[held_idx], probs=held, seconds=seconds)
            log.info("%s fold %d/%d done", fold_dir.name, k + 1, folds)
    saved = [np.load(c) for c in caches]
    num = sum(len(f["held_idx"]) for f in saved)
    probs = np.zeros((num, cfg.num_classes), dtype=np.float32)
    labels = np.full(num, -1, dtype=np.int64)
    for f in saved:
        probs[f["held_idx"]], labels[f["held_idx"]] = f["probs"], f["labels"]
    return probs, labels, sum(float(f["seconds"]) for f in saved)


# ================================================================ detectors ==================================
def detect(name: str, scores: dict[str, dict], kfold: tuple[np.ndarray, float]) -> dict[str, Any]:
    """(score, flagged, relabel prediction, seconds) of one detector."""
    if name == "cleanlab_kfold":
        base = scores["ce"]
        probs, seconds = kfold
        flagged, score = detection.cleanlab_issues(base["given"], probs)
        return {"score": score, "flagged": flagged, "predicted": probs.argmax(1), "seconds": seconds}
    s = scores[DETECTORS[name]]
    if name == "cleanlab_instancegm":
        flagged, score = detection.cleanlab_issues(s["given"], s["probs"])
    elif name == "ce_small_loss":
        score = -np.log(np.clip(s["probs"][np.arange(len(s["given"])), s["given"]], 1e-12, None))
        flagged = s["probs"].argmax(1) != s["given"]
    else:
        score = 1.0 - s["clean_prob"]
        if name.endswith("+noise_rate"):
            flagged = np.zeros(len(score), dtype=bool)
            flagged[np.argsort(-score, kind="stable")[: int(round(float(s["estimated_rate"]) * len(score)))]] = True
        else:
            flagged = s["suspect"].astype(bool)
    return {"score": score, "flagged": flagged, "predicted": s["probs"].argmax(1), "seconds": float(s["seconds"])}


def retrain(cfg: Config, data, variant: str, labels: np.ndarray, keep: np.ndarray, out: Path, device) -> dict:
    """Cross-entropy on the kept images with ``labels``; test accuracy of the two-net ensemble (cached)."""
    if out.exists():
        return json.loads(out.read_text())
    data = data()
    t0 = time.perf_counter()
    nets = train_ce(cfg, data, data._np_train[keep], labels[keep], device, cfg.seed)
    test_images, test_labels = data._np_test, data.test_labels.numpy()
    acc = float((ensemble_probs(nets, test_images, device).argmax(1) == test_labels).mean() * 100)
    kept_wrong = float((labels[keep] != data.clean_labels.numpy()[keep]).mean())
    result = {"variant": variant, "test_acc": acc, "kept": int(len(keep)), "label_noise": kept_wrong}
    result["seconds"] = time.perf_counter() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


# ================================================================ tables and plot ============================
def _ms(values, spec=".3f"):
    return fmnist_idn._mean_sd(list(values), spec)


def detection_table(records: list[dict]) -> str:
    head = (
        "| IDN | detector | seeds | AUROC | AP | precision@k | flagged | precision | recall | F1 | minutes |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    groups: dict[tuple[float, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["rate"], r["detector"]), []).append(r)
    lines = [
        f"| {rate:.0%} | {name} | {len(rs)} | {_ms(r['auroc'] for r in rs)} | {_ms(r['ap'] for r in rs)} "
        f"| {_ms(r['precision_at_k'] for r in rs)} | {_ms((r['flagged'] for r in rs), '.0f')} "
        f"| {_ms(r['precision'] for r in rs)} | {_ms(r['recall'] for r in rs)} | {_ms(r['f1'] for r in rs)} "
        f"| {_ms((r['seconds'] / 60 for r in rs), '.1f')} |"
        for (rate, name), rs in groups.items()
    ]
    return head + "\n".join(lines) + "\n"


def retrain_table(records: list[dict]) -> str:
    if not records:
        return ""
    head = "| variant | seeds | kept images | label noise of the kept set | test acc % |\n|---|---|---|---|---|\n"
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["variant"], []).append(r)
    lines = [
        f"| {v} | {len(rs)} | {_ms((r['kept'] for r in rs), '.0f')} | {_ms(r['label_noise'] for r in rs)} "
        f"| {_ms((r['test_acc'] for r in rs), '.2f')} |"
        for v, rs in groups.items()
    ]
    return head + "\n".join(lines) + "\n"


def plot_pr(curves: dict[float, dict[str, list]], path: Path) -> None:
    """Precision-recall curve of each detector's ranking, one panel per rate (each seed a thin line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.6 * len(curves), 4.2), squeeze=False)
    for ax, (rate, by_name) in zip(axes[0], curves.items()):
        for name, seeds in by_name.items():
            for i, (recall, precision) in enumerate(seeds):
                ax.plot(recall, precision, color=COLOURS[name], lw=1.2, alpha=0.8, label=None if i else name)
        ax.set_title(f"IDN {rate:.0%}")
        ax.set_xlabel("recall of wrong labels")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("precision")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ================================================================ main =======================================
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny budget, one rate, one seed, K = 2, two runs")
    parser.add_argument("--results_dir", type=Path, default=fmnist_idn.RESULTS_DIR, help="where everything goes")
    parser.add_argument("--rates", type=float, nargs="+", default=None, help=f"IDN rates (empty: {RATES})")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help=f"seeds (empty: {SEEDS})")
    parser.add_argument("--folds", type=int, default=None, help=f"K of the K-fold cross-entropy (empty: {FOLDS})")
    parser.add_argument("--no_retrain", action="store_true", help="skip the 40%% IDN retraining table")
    parser.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--data_path", default="/usr/share/datasets/fashion-mnist", help="Fashion-MNIST root")
    parser.add_argument("--jobs", type=int, default=1, help="engine runs trained at the same time (processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (0: torch's default)")
    args = parser.parse_args(argv)
    args.rates = args.rates or ([RETRAIN_RATE] if args.quick else list(RATES))
    args.seeds = args.seeds or ([1] if args.quick else list(SEEDS))
    args.folds = args.folds or (2 if args.quick else FOLDS)
    if args.folds < 2:
        parser.error(f"--folds {args.folds}: K-fold needs K >= 2")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if not log.handlers:
        handler = StdoutHandler()  # sys.stdout at each line: tests swap it between calls
        handler.setFormatter(logging.Formatter("%(asctime)s [benchmark] %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    budget = fmnist_idn.QUICK if args.quick else fmnist_idn.FULL
    name = "label_errors_quick" if args.quick else "label_errors"
    cells_dir = args.results_dir / name
    rows = QUICK_ROWS if args.quick else ROWS
    detectors = [d for d, row in DETECTORS.items() if row is None or row in rows]
    retrain_tools = QUICK_RETRAIN_TOOLS if args.quick else RETRAIN_TOOLS
    from training.runtime import resolve_device

    device = resolve_device(args.device)
    started = datetime.now(timezone.utc)
    with fmnist_idn.LoadMonitor() as load:
        configs = {
            (rate, row, seed): fmnist_idn.cell_config(budget, rate, row, seed, cells_dir, args)
            for rate in args.rates
            for row in rows
            for seed in args.seeds
        }
        todo = [c for c in configs.values() if not fmnist_idn.cached(c)]
        log.info("%d of %d engine runs to train", len(todo), len(configs))
        failures = fmnist_idn.run_cells(todo, args.jobs, args.threads) if todo else []
        if failures:
            raise SystemExit("failed runs:\n  " + "\n  ".join(failures))

        records, retrained, curves = [], [], {}
        for rate in args.rates:
            curves[rate] = {}
            for seed in args.seeds:
                scores = {row: run_scores(configs[(rate, row, seed)]) for row in rows}
                ce_cfg = configs[(rate, "ce", seed)]
                data = _lazy(lambda cfg=ce_cfg: fmnist_data(cfg, device))  # read only when a piece is not cached
                kfold = kfold_probs(ce_cfg, data, args.folds, cells_dir / f"kfold_r{rate:g}_seed{seed}", device)
                truth = scores["ce"]
                for what, given in [(row, scores[row]["given"]) for row in rows] + [("K-fold", kfold[1])]:
                    if not np.array_equal(given, truth["given"]):  # the comparison is void on other labels
                        raise SystemExit(f"{what} at r={rate:g} seed {seed} scored other labels than the ce run")
                kfold = (kfold[0], kfold[2])
                wrong = truth["given"] != truth["true"]
                found = {}
                for det in detectors:
                    found[det] = d = detect(det, scores, kfold)
                    report = detection.detection_report(d["score"], d["flagged"], wrong)
                    records.append({"rate": rate, "seed": seed, "detector": det, "seconds": d["seconds"], **report})
                    precision, recall, _ = detection.pr_curve(d["score"], wrong)
                    curves[rate].setdefault(det, []).append((recall.tolist(), precision.tolist()))
                if rate == RETRAIN_RATE and not args.no_retrain:
                    retrained += retrain_all(
                        ce_cfg, data, truth["given"], found, cells_dir, rate, seed, device, retrain_tools
                    )
    ended = datetime.now(timezone.utc)

    table, loop = detection_table(records), retrain_table(retrained)
    invocation = {
        "start": started.isoformat(timespec="seconds"),
        "wall_s": (ended - started).total_seconds(),
        "cpu": fmnist_idn.cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": load.summary(),
        "jobs": args.jobs,
        "threads": args.threads,
        "torch": torch.__version__,
        "argv": sys.argv[1:] if argv is None else list(argv),
    }
    json_path = args.results_dir / f"{name}.json"
    previous = json.loads(json_path.read_text()).get("invocations", []) if json_path.exists() else []
    report = {
        "budget": asdict(budget),
        "rates": args.rates,
        "seeds": args.seeds,
        "folds": args.folds,
        "detection": records,
        "retrain": retrained,
        "table_markdown": table,
        "retrain_markdown": loop,
        "invocations": previous + [invocation],
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2))
    text = (
        f"Label-error detection, Fashion-MNIST IDN, budget {asdict(budget)}, seeds {args.seeds}, K = {args.folds}\n\n"
    )
    text += table + (f"\nCross-entropy retrained at {RETRAIN_RATE:.0%} IDN:\n\n{loop}" if loop else "")
    (args.results_dir / f"{name}.md").write_text(text)
    plot_pr(curves, args.results_dir / f"{name}.png")
    print(text)
    print(f"wrote {json_path}, {args.results_dir / f'{name}.md'}, {args.results_dir / f'{name}.png'}")
    return report


def retrain_all(cfg: Config, data, given: np.ndarray, found: dict, cells_dir: Path, rate, seed, device, tools) -> list:
    """(a) noisy labels, then per tool (b) its flagged samples removed and (c) relabelled by its prediction."""
    folder = cells_dir / f"retrain_r{rate:g}_seed{seed}"
    everything = np.arange(len(given))
    results = [retrain(cfg, data, "noisy labels", given, everything, folder / "noisy.json", device)]
    for tool in (t for t in tools if t in found):
        flagged = found[tool]["flagged"]
        relabelled = np.where(flagged, found[tool]["predicted"], given)
        results.append(
            retrain(
                cfg, data, f"{tool}: removed", given, np.flatnonzero(~flagged), folder / f"{tool}_removed.json", device
            )
        )
        results.append(
            retrain(
                cfg, data, f"{tool}: relabelled", relabelled, everything, folder / f"{tool}_relabelled.json", device
            )
        )
    for r in results:
        r.update(rate=rate, seed=seed)
    return results


if __name__ == "__main__":
    main()
