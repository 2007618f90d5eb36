"""Accuracy benchmark this machine can run: Fashion-MNIST with part-dependent instance noise (IDN).

CE, DivideMix and InstanceGM, and the last two with ``--selection noise_rate`` (rows ``dividemix+noise_rate``,
``instancegm+noise_rate``), from the same engine (``instanceGM.py``'s ``fashionmnist`` preset, changed only by
the budget below), same budget, one run per (noise rate, row, seed) cell; the table gives mean ± sd over the
seeds. Each cell is an ordinary run folder (config.json, metrics.jsonl, checkpoint.pt, summary.json) in
``<results_dir>/fmnist_idn/`` (``r0.4_instancegm_noise_rate_seed2``; seed 1 has no suffix); the generated noisy
labels are cached in ``<results_dir>/fmnist_idn/noise``.

    python benchmarks/fmnist_idn.py --jobs 2 --threads 1   # 3 rates x 5 rows x 3 seeds, two cells at a time
    python benchmarks/fmnist_idn.py --seeds 1 --methods ce dividemix instancegm   # one seed, the WACV rows
    python benchmarks/fmnist_idn.py --quick                # seconds: wiring check (tests/test_benchmarks.py)

Cached and resumable: a cell whose folder has ``summary.json`` is not rerun (its settings must match), and an
interrupted cell continues from its last checkpoint, so rerunning the same command finishes a table. Writes
``fmnist_idn.md`` (table), ``fmnist_idn.json`` (table, per-epoch curves, settings, timing of every
invocation) and ``fmnist_idn.png`` (test accuracy and the clean split's precision/recall per epoch) into
``--results_dir`` (``fmnist_idn_quick.*`` with ``--quick``).

The budget (narrow PreAct ResNet-18, class-balanced training subset) is sized for a 2-core CPU; the README
"Results" section has the table, its command and how long it took.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import instanceGM  # noqa: E402
from training import Config, main_run  # noqa: E402
from training.config import HelpFormatter  # noqa: E402
from training.grid import split_row as split_method  # noqa: E402  (a row name -> (engine method, selection))
from training.launch import StdoutHandler  # noqa: E402
from training.metrics import read_jsonl  # noqa: E402
from training.report import mean_sd  # noqa: E402

log = logging.getLogger("benchmarks")

# A row of the table: an engine method, "+noise_rate" for the noise-rate estimated selection (--selection).
METHODS = ("ce", "dividemix", "instancegm", "dividemix+noise_rate", "instancegm+noise_rate")
SEEDS = (1, 2, 3)
RATES = (0.2, 0.4, 0.5)
RESULTS_DIR = ROOT / "benchmarks" / "results"
# Settings that do not change what a cell computes: a cached cell is reused whatever their value.
_RUN_ONLY_KEYS = frozenset(
    {"resume", "device", "output_dir", "noise_dir", "num_workers", "log_interval", "wandb", "data_path"}
)
_COST = {"instancegm": 3, "dividemix": 2, "ce": 1}  # relative cost per epoch: longest cells start first


@dataclass(frozen=True)
class Budget:
    """What every cell of a table shares (the engine's fields of the same names)."""

    train_subset: int = field(metadata={"help": "class-balanced training subset (--train_subset N --balanced_subset)"})
    test_subset: int = field(metadata={"help": "first N test images (0: all 10,000)"})
    width: int = field(metadata={"help": "PreAct ResNet-18 base width (64 in the paper)"})
    batch_size: int = field(metadata={"help": "B (warm-up and generative batches are 2B)"})
    lr: float = field(metadata={"help": "classifier SGD lr"})
    num_epochs: int = field(metadata={"help": "every method trains this many epochs"})
    warm_up: int = field(metadata={"help": "CE epochs before DivideMix/InstanceGM start dividing"})
    lr_drop_epoch: int = field(metadata={"help": "lr / 10 from this epoch on"})
    rampup_length: float = field(metadata={"help": "epochs of the lambda_u ramp after warm-up (16 in the original)"})


# The full table (README "Results"): 3 rates x 5 rows x 3 seeds = 45 runs in 87 min with --jobs 2 --threads 1 on a
# 2-core AMD EPYC (AVX2). Narrow net, 60 images per class, batch 16 so each epoch makes enough SGD steps, and the
# original's lr 0.02: at lr 0.05 the nets memorise the labeled set they were just trained on, and the two nets' splits
# alternate in size from one epoch to the next (the --lr 0.05 results: benchmarks/results/archive/fmnist_idn_lr0.05/).
# 12 epochs (5 warm-up, 7 co-training, the last two at lr / 10) keep the 45 runs within that time; the one-seed
# table of three rows had 18 (`--num_epochs 18 --lr_drop_epoch 14 --rampup_length 4` reproduces it).
FULL = Budget(
    train_subset=600,
    test_subset=2000,
    width=8,
    batch_size=16,
    lr=0.02,
    num_epochs=12,
    warm_up=5,
    lr_drop_epoch=10,
    rampup_length=3.0,
)
# --quick: seconds, to keep the script working (numbers meaningless).
QUICK = Budget(
    train_subset=200,
    test_subset=200,
    width=4,
    batch_size=16,
    lr=0.05,
    num_epochs=2,
    warm_up=1,
    lr_drop_epoch=2,
    rampup_length=5.0,
)


# ================================================================ cells =======================================
def cell_config(budget: Budget, rate: float, row: str, seed: int, cells_dir: Path, args: argparse.Namespace) -> Config:
    """One cell's run configuration: the Fashion-MNIST preset with the shared budget.

    Folders: ``r0.4_instancegm`` (seed 1, as before seeds were added), ``r0.4_instancegm_noise_rate_seed2``.
    """
    method, selection = split_method(row)
    run_name = f"r{rate:g}_{row.replace('+', '_')}" + ("" if seed == 1 else f"_seed{seed}")
    return instanceGM.PRESETS["fashionmnist"].replace(
        **asdict(budget),
        balanced_subset=True,
        method=method,
        selection=selection,
        r=rate,
        seed=seed,
        device=args.device,
        data_path=args.data_path,
        output_dir=str(cells_dir),
        run_name=run_name,
        noise_dir=str(cells_dir / "noise"),
        resume="auto",  # an interrupted cell continues from its checkpoint; a new one starts fresh
        log_interval=25,
    )


def run_dir_of(cfg: Config) -> Path:
    return Path(cfg.output_dir) / cfg.run_name


def cached(cfg: Config) -> bool:
    """True if the cell already finished with these settings; False if it has to run (or continue).

    A folder finished with other settings is an error rather than a silent mix of two budgets.
    """
    run_dir = run_dir_of(cfg)
    if not (run_dir / "summary.json").exists():
        if (run_dir / "metrics.jsonl").exists() and not (run_dir / "checkpoint.pt").exists():
            (run_dir / "metrics.jsonl").unlink()  # lines of a first epoch that never reached its checkpoint
        return False
    saved = json.loads((run_dir / "config.json").read_text())["config"]
    wanted = cfg.to_dict()
    diff = {
        k: (saved[k], wanted[k])
        for k in sorted(saved.keys() & wanted.keys())
        if k not in _RUN_ONLY_KEYS and saved[k] != wanted[k]
    }
    if diff:
        changes = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in diff.items())
        raise SystemExit(
            f"{run_dir} holds a finished run with other settings ({changes}); "
            "pass another --results_dir or delete that folder"
        )
    return True


def run_cell(cfg: Config, threads: int) -> dict:
    """Train one cell in this process (also the worker function of ``--jobs N``)."""
    if threads > 0:
        torch.set_num_threads(threads)
    return main_run(cfg)


def run_cells(configs: list[Config], jobs: int, threads: int) -> list[str]:
    """Run the cells (``jobs`` at a time, each in its own process when > 1); return the failures."""
    failures = []
    if jobs <= 1:
        for cfg in configs:
            try:
                run_cell(cfg, threads)
            except Exception as err:  # one failed cell must not cost the rest of the table
                log.exception("cell %s failed", cfg.run_name)
                failures.append(f"{cfg.run_name}: {err}")
        return failures
    # spawn: a fresh interpreter per cell (no inherited threads or RNG); one cell per worker process.
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        futures = {pool.submit(run_cell, cfg, threads): cfg.run_name for cfg in configs}
        for future in as_completed(futures):
            try:
                future.result()
                log.info("cell %s done", futures[future])
            except Exception as err:
                log.error("cell %s failed: %s", futures[future], err)
                failures.append(f"{futures[future]}: {err}")
    return failures


# ================================================================ results =====================================
def row_name(cfg: Config) -> str:
    return cfg.method + ("+noise_rate" if getattr(cfg, "selection", "gmm") == "noise_rate" else "")


def cell_result(cfg: Config) -> dict[str, Any] | None:
    """The table row and per-epoch curves of a finished cell (None if it has not finished).

    Split precision/recall are those of the labeled set net1's division handed to net2: the GMM threshold's
    for ``gmm``, the (1 - ε̂) selection's for ``noise_rate``.
    """
    run_dir = run_dir_of(cfg)
    if not (run_dir / "summary.json").exists():
        return None
    summary = json.loads((run_dir / "summary.json").read_text())
    noise = json.loads((run_dir / "config.json").read_text()).get("noise", {})
    rows = read_jsonl(run_dir / "metrics.jsonl")
    last, acc = rows[-1], summary["test/acc"]
    selected = "selected_" if "split/net1/selected_precision" in last else ""

    def curve(key: str) -> list[float | None]:
        return [r.get(key) for r in rows]

    # noise_rate rows: how far ε̂ is from the true noise rate of the divided samples, epoch by epoch
    estimated = [(r["noise/estimated_rate"], r.get("noise/realised_rate")) for r in rows if "noise/estimated_rate" in r]
    errors = [abs(eps - true) for eps, true in estimated if true is not None]

    return {
        "method": row_name(cfg),
        "rate": cfg.r,
        "seed": cfg.seed,
        "run_dir": str(run_dir),
        "realised_rate": summary.get("noise/realised_rate"),  # on all 60,000 training images
        "subset_realised_rate": noise.get("subset_realised_rate"),  # on the training subset
        "estimated_rate": last.get("noise/estimated_rate"),  # ε̂ of the last epoch (noise_rate rows)
        "estimated_rate_first": estimated[0][0] if estimated else None,  # ε̂ of the first co-training epoch
        "estimate_abs_error": sum(errors) / len(errors) if errors else None,  # mean |ε̂ - true| over epochs
        "gmm_precision": last.get("split/net1/precision"),  # the GMM threshold's split in the same run
        "gmm_recall": last.get("split/net1/recall"),
        "test_acc_last": acc["last"],
        "test_acc_best": acc["best"],
        "best_epoch": acc["best_epoch"],
        "precision": last.get(f"split/net1/{selected}precision"),
        "recall": last.get(f"split/net1/{selected}recall"),
        "auc": last.get("split/net1/auc"),
        "labeled": last.get("split/net1/labeled"),
        "train_time_s": sum(r.get("time/epoch_s", 0.0) for r in rows),
        "curves": {
            "epoch": [r["epoch"] + 1 for r in rows],
            "test_acc": curve("test/acc"),
            "precision": curve(f"split/net1/{selected}precision"),
            "recall": curve(f"split/net1/{selected}recall"),
            "auc": curve("split/net1/auc"),
            "estimated_rate": curve("noise/estimated_rate"),
        },
    }


def _fmt(value: float | None, spec: str = ".2f", scale: float = 1.0) -> str:
    return "—" if value is None else format(value * scale, spec)


def _mean_sd(values: list[float | None], spec: str = ".2f") -> str:
    """'mean ± sd' over seeds (sample sd); the value alone for one seed; '—' when there is none."""
    mean, sd = mean_sd([v for v in values if v is not None])
    if mean is None:
        return "—"
    return format(mean, spec) if sd is None else f"{format(mean, spec)} ± {format(sd, spec)}"


def markdown_table(results: list[dict | None], cells: list[tuple[float, str, int]]) -> str:
    """One line per (noise rate, row), mean ± sd over its finished seeds."""
    head = (
        "| IDN | realised (subset / all) | method | seeds | last acc % | best acc % "
        "| split precision | split recall | ε̂ (last epoch) | time (min) |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    groups: dict[tuple[float, str], list[dict | None]] = {}
    for (rate, row, _seed), r in zip(cells, results):
        groups.setdefault((rate, row), []).append(r)
    lines = []
    for (rate, row), rs in groups.items():
        done = [r for r in rs if r is not None]
        if not done:
            lines.append(f"| {rate:.0%} | — | {row} | 0/{len(rs)} | not run | | | | | |")
            continue
        r0 = done[0]
        realised = f"{_fmt(r0['subset_realised_rate'], '.1%')} / {_fmt(r0['realised_rate'], '.1%')}"
        lines.append(
            f"| {rate:.0%} | {realised} | {row} | {len(done)}/{len(rs)} "
            f"| {_mean_sd([r['test_acc_last'] for r in done])} | {_mean_sd([r['test_acc_best'] for r in done])} "
            f"| {_mean_sd([r['precision'] for r in done], '.3f')} | {_mean_sd([r['recall'] for r in done], '.3f')} "
            f"| {_mean_sd([r['estimated_rate'] for r in done], '.3f')} "
            f"| {sum(r['train_time_s'] for r in done) / 60 / len(done):.1f} |"
        )
    return head + "\n".join(lines) + "\n"


def estimate_table(results: list[dict | None], cells: list[tuple[float, str, int]]) -> str:
    """The noise_rate rows only: ε̂ against the true rate of the divided samples, and the labeled set the
    (1 - ε̂) selection chose against the one the GMM threshold would have chosen in the same run (net1, last
    epoch), mean ± sd over the finished seeds."""
    head = (
        "| IDN | realised (subset) | method | seeds | ε̂ first co-training epoch | ε̂ last epoch "
        "| mean abs(ε̂ − realised) | labeled by the selection | precision: selected / GMM | recall: selected / GMM |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    groups: dict[tuple[float, str], list[dict]] = {}
    for (rate, row, _seed), r in zip(cells, results):
        if r is not None and r.get("estimate_abs_error") is not None:
            groups.setdefault((rate, row), []).append(r)
    lines = []
    for (rate, row), rs in groups.items():
        lines.append(
            f"| {rate:.0%} | {_fmt(rs[0]['subset_realised_rate'], '.3f')} | {row} | {len(rs)} "
            f"| {_mean_sd([r['estimated_rate_first'] for r in rs], '.3f')} "
            f"| {_mean_sd([r['estimated_rate'] for r in rs], '.3f')} "
            f"| {_mean_sd([r['estimate_abs_error'] for r in rs], '.3f')} "
            f"| {_mean_sd([r['labeled'] for r in rs], '.0f')} "
            f"| {_mean_sd([r['precision'] for r in rs], '.3f')} / {_mean_sd([r['gmm_precision'] for r in rs], '.3f')} "
            f"| {_mean_sd([r['recall'] for r in rs], '.3f')} / {_mean_sd([r['gmm_recall'] for r in rs], '.3f')} |"
        )
    return head + "\n".join(lines) + "\n" if lines else ""


def plot(results: list[dict | None], cells: list[tuple[float, str, int]], budget: Budget, path: Path) -> None:
    """Test accuracy per epoch (top) and net1's clean-split precision/recall per epoch (bottom), per rate.

    Each seed is a line of its row's colour (the legend names a row once).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = list(dict.fromkeys(rate for rate, _, _ in cells))
    by_cell = dict(zip(cells, results))
    colours = {
        "ce": "tab:gray",
        "dividemix": "tab:blue",
        "instancegm": "tab:red",
        "dividemix+noise_rate": "tab:cyan",
        "instancegm+noise_rate": "tab:orange",
    }
    fig, axes = plt.subplots(2, len(rates), figsize=(4.6 * len(rates), 7.0), squeeze=False, sharex=True)
    for j, rate in enumerate(rates):
        top, bottom = axes[0][j], axes[1][j]
        realised = None
        labelled: set[str] = set()
        for (r, method, _seed), res in by_cell.items():
            if r != rate or res is None:
                continue
            c = res["curves"]
            realised = res["subset_realised_rate"] or res["realised_rate"]
            label = None if method in labelled else method
            labelled.add(method)
            top.plot(c["epoch"], c["test_acc"], color=colours.get(method), label=label, lw=1.6, marker="o", ms=2.5)
            if method != "ce":
                epochs = [e for e, p in zip(c["epoch"], c["precision"]) if p is not None]
                style = dict(color=colours.get(method), lw=1.6, marker="o", ms=2.5)
                bottom.plot(epochs, [p for p in c["precision"] if p is not None], **style)
                bottom.plot(epochs, [p for p in c["recall"] if p is not None], ls="--", **style)
        for ax in (top, bottom):
            ax.axvline(budget.warm_up + 0.5, color="k", lw=0.8, ls=":")  # end of the warm-up
            ax.grid(alpha=0.3)
        title = f"IDN {rate:.0%}" + ("" if realised is None else f" (realised {realised:.1%})")
        top.set_title(title)
        bottom.set_xlabel("epoch")
        if j == 0:
            top.set_ylabel("test accuracy (%, ensemble)")
            bottom.set_ylabel("clean split of net1: precision (—), recall (--)")
    axes[0][0].legend(loc="lower right", fontsize=8)
    handles = [matplotlib.lines.Line2D([], [], color=colours[m], label=m) for m in METHODS if m != "ce"]
    axes[1][0].legend(handles=handles, loc="lower right", fontsize=8)
    fig.suptitle(
        f"Fashion-MNIST IDN: {budget.train_subset} training images,\nPreAct ResNet-18 width {budget.width}, "
        f"{budget.num_epochs} epochs ({budget.warm_up} warm-up), batch {budget.batch_size}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ================================================================ main ========================================
class LoadMonitor:
    """Samples the 1-minute load average while the table runs (the machine may be shared)."""

    def __init__(self, every_s: float = 30.0):
        self.samples: list[float] = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)

    def _run(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, float]:
        return {"mean": sum(self.samples) / len(self.samples), "max": max(self.samples), "samples": len(self.samples)}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny budget (seconds), one noise rate")
    parser.add_argument("--results_dir", type=Path, default=RESULTS_DIR, help="where the run folders and tables go")
    parser.add_argument(
        "--rates", type=float, nargs="+", default=None, help=f"noise rates (empty: {RATES}; --quick: 0.4)"
    )
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="rows compared")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, help=f"training seeds per cell (empty: {SEEDS}; --quick: 1)"
    )
    parser.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--data_path", default="/usr/share/datasets/fashion-mnist", help="Fashion-MNIST root")
    parser.add_argument("--jobs", type=int, default=1, help="cells trained at the same time (processes)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per cell (0: torch's default); on a busy machine one thread per process is several "
        "times faster than oversubscribed OpenMP threads, so use --jobs (cores) --threads 1",
    )
    for f in fields(Budget):
        shown = f"default: {getattr(FULL, f.name)}, with --quick {getattr(QUICK, f.name)}"
        parser.add_argument(
            f"--{f.name}", type=type(getattr(FULL, f.name)), default=None, help=f"{f.metadata['help']} ({shown})"
        )
    args = parser.parse_args(argv)
    if args.rates is None:
        args.rates = [0.4] if args.quick else list(RATES)
    if args.seeds is None:
        args.seeds = [1] if args.quick else list(SEEDS)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if not log.handlers:  # the engine logs through the root logger; this script's lines go their own way
        handler = StdoutHandler()  # sys.stdout at each line: tests swap it between calls
        handler.setFormatter(logging.Formatter("%(asctime)s [benchmark] %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    budget = replace(
        QUICK if args.quick else FULL,
        **{f.name: getattr(args, f.name) for f in fields(Budget) if getattr(args, f.name) is not None},
    )
    name = "fmnist_idn_quick" if args.quick else "fmnist_idn"
    results_dir = args.results_dir
    cells_dir = results_dir / name
    cells = [(rate, method, seed) for rate in args.rates for method in args.methods for seed in args.seeds]
    configs = [cell_config(budget, rate, method, seed, cells_dir, args) for rate, method, seed in cells]
    todo = sorted((cfg for cfg in configs if not cached(cfg)), key=lambda c: -_COST[c.method])
    log.info("%d of %d cells to run (%s)", len(todo), len(cells), ", ".join(c.run_name for c in todo) or "none")

    started = datetime.now(timezone.utc)
    with LoadMonitor() as load:
        failures = run_cells(todo, args.jobs, args.threads) if todo else []
    ended = datetime.now(timezone.utc)

    results = [cell_result(cfg) for cfg in configs]
    table = markdown_table(results, cells)
    estimates = estimate_table(results, cells)
    json_path, previous = results_dir / f"{name}.json", []
    if json_path.exists():
        previous = json.loads(json_path.read_text()).get("invocations", [])
    invocation = {
        "start": started.isoformat(timespec="seconds"),
        "end": ended.isoformat(timespec="seconds"),
        "wall_s": (ended - started).total_seconds(),
        "cells_run": [c.run_name for c in todo],
        "failures": failures,
        "jobs": args.jobs,
        "threads": args.threads or torch.get_num_threads(),
        "load_average_1min": load.summary(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "argv": sys.argv[1:] if argv is None else list(argv),
    }
    report = {
        "budget": asdict(budget),
        "seeds": args.seeds,
        "device": args.device,
        "rates": args.rates,
        "methods": args.methods,
        "cells": [
            r if r is not None else {"rate": rate, "method": m, "seed": seed}
            for (rate, m, seed), r in zip(cells, results)
        ],
        "table_markdown": table,
        "estimate_table_markdown": estimates,
        "invocations": previous + [invocation],
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2))
    (results_dir / f"{name}.md").write_text(
        f"Fashion-MNIST IDN, budget {asdict(budget)}, seeds {args.seeds}\n\n{table}"
        + (f"\nThe noise-rate estimate (noise_rate rows):\n\n{estimates}" if estimates else "")
    )
    if any(r is not None for r in results):
        plot(results, cells, budget, results_dir / f"{name}.png")
    print(table)
    if estimates:
        print(estimates)
    print(f"wrote {json_path}, {results_dir / f'{name}.md'}, {results_dir / f'{name}.png'}")
    if failures:
        print("failed cells:\n  " + "\n  ".join(failures), file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
