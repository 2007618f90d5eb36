"""python -m training.report SWEEP_DIR|RUN_DIR...: each grid's table against the paper (markdown, CSV, PNG).

    python -m training.report sweeps/cifar100_idn                  # a sweep folder (its sweep.json)
    python -m training.report runs/                                # every run folder below runs/
    python -m training.report runs/a runs/b --out results/         # these runs

One row per (setting, method): mean ± sd over the seeds (sample sd, n-1) of the last, best and mean-of-last-10
test accuracy (and the best-validation weights' test accuracy where the run selects on validation), the
paper's number and the difference to the accuracy the grid compares it with, the realised noise rate of the
training labels, the final clean split's precision and recall (mean of the two nets), and the device hours
(sum over epochs of the recorded epoch times, times the number of processes). Statistics are over finished
seeds; the status column lists every unfinished cell with its progress, and a row whose cells have not started
is still there. Run folders not made by a sweep are grouped by dataset, noise rate and method, and by the
settings that change what a run measures (training subset and whether it is class-balanced, test subset, width,
epochs, named in the row's setting where they differ from the paper's full run), and matched to the paper grid
of their dataset. Smoke runs are left out unless ``--include_smoke``.

A run counts once: a folder reached twice (a symlink, or named twice) and a copy of a run (same setting,
method and seed: a backup) are reported once, with a warning; the more complete copy is kept. A folder that
cannot be read (malformed config.json, summary.json or metrics.jsonl) is skipped with a warning naming it and
why; the rest of the report is written. The report imports no torch.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import logging
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.grid import (
    ACCURACIES,
    Cell,
    Grid,
    GridError,
    cell_state,
    format_value,
    load_grid,
    named_grids,
    read_json,
    read_manifest,
)

log = logging.getLogger("training.report")

ACCURACY_NAMES = {"last": "last", "best": "best", "mean_last10": "mean of last 10", "at_best_val": "best-val weights"}


@dataclass
class CellResult:
    """What one run folder says about itself (None where it does not say)."""

    cell: Cell
    state: str  # finished | partial | pending
    epochs_done: int = 0
    num_epochs: int | None = None
    acc: dict[str, float] = field(default_factory=dict)  # last, best, mean_last10, at_best_val
    noise_rate: float | None = None
    precision: float | None = None
    recall: float | None = None
    hours: float = 0.0
    device: str = ""


class BadRunFolder(ValueError):
    """A run folder whose files cannot be read as a run's; the message says which file and why."""


def _table(data: dict[str, Any], key: str, where: Path) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise BadRunFolder(f"{where.name}: {key!r} is {type(value).__name__}, not an object")
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRunFolder(f"{what} is {value!r}, not a number")
    return float(value)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's rows; a torn line (a write cut short, a file being written) is skipped with a warning."""
    if not path.exists():
        return []
    rows = []
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            log.warning("%s: skipping line %d (not a JSON object: a torn write?)", path, i)
            continue
        rows.append(row)
    return rows


def read_cell(cell: Cell, run_dir: Path) -> CellResult:
    """What ``run_dir`` says about ``cell``; BadRunFolder when one of its files is malformed."""
    res = CellResult(cell, cell_state(run_dir))
    if (run_dir / "config.json").exists() and read_json(run_dir / "config.json") is None:
        raise BadRunFolder("config.json is not a JSON object")
    info = read_json(run_dir / "config.json") or {}
    config = _table(info, "config", Path("config.json"))
    res.num_epochs = config.get("num_epochs")
    noise = _table(info, "noise", Path("config.json"))
    res.noise_rate = noise.get("subset_realised_rate", noise.get("realised_rate"))  # of the labels trained on
    env = _table(info, "environment", Path("config.json"))
    res.device = str(env.get("gpu") or env.get("device", ""))
    rows = read_rows(run_dir / "metrics.jsonl")
    res.epochs_done = len(rows)
    seconds = sum(_number(r.get("time/epoch_s") or 0.0, "metrics.jsonl time/epoch_s") for r in rows)
    res.hours = seconds * _number(env.get("processes", 1), "config.json processes") / 3600.0
    split = next((r for r in reversed(rows) if "split/net1/precision" in r), None)
    if split is not None:
        nets = sorted({k.split("/")[1] for k in split if k.startswith("split/") and k.endswith("/precision")})
        res.precision = _mean_of(split.get(f"split/{n}/precision") for n in nets)
        res.recall = _mean_of(split.get(f"split/{n}/recall") for n in nets)
    if res.state == "finished":
        summary = read_json(run_dir / "summary.json") or {}
        acc = _table(summary, "test/acc", Path("summary.json"))
        res.acc = {k: _number(v, f"summary.json test/acc {k}") for k, v in acc.items() if k in ACCURACIES}
        at_best = _table(summary, "test_at_best_val", Path("summary.json"))
        if "test/acc" in at_best:
            res.acc["at_best_val"] = _number(at_best["test/acc"], "summary.json test_at_best_val")
    return res


def _mean_of(values: Iterable[Any]) -> float | None:
    vals = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n-1); sd is None for fewer than two values."""
    if not values:
        return None, None
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else None


@dataclass
class Row:
    """One (setting, method) of a grid, aggregated over its seeds."""

    setting: str
    method: str
    cells: list[CellResult]
    paper: float | None
    compare: str

    @property
    def finished(self) -> list[CellResult]:
        return [c for c in self.cells if c.state == "finished"]

    def stat(self, key: str) -> tuple[float | None, float | None]:
        return mean_sd([c.acc[key] for c in self.finished if key in c.acc])

    def mean(self, attr: str) -> float | None:
        return _mean_of(getattr(c, attr) for c in self.finished)

    @property
    def diff(self) -> float | None:
        mean, _ = self.stat(self.compare)
        return None if mean is None or self.paper is None else mean - self.paper

    @property
    def hours(self) -> float:
        return sum(c.hours for c in self.cells)

    @property
    def status(self) -> str:
        """``3/3``, or ``2/3; seed3 epoch 12/300`` naming every unfinished cell."""
        text = f"{len(self.finished)}/{len(self.cells)}"
        rest = []
        for c in self.cells:
            if c.state == "partial":
                rest.append(f"seed{c.cell.seed} epoch {c.epochs_done}/{c.num_epochs or '?'}")
            elif c.state == "pending":
                rest.append(f"seed{c.cell.seed} not started")
        return f"{text}; {', '.join(rest)}" if rest else text


@dataclass
class GridReport:
    grid: Grid
    rows: list[Row]

    @property
    def accuracies(self) -> list[str]:
        """The accuracy columns: the three every run has, and best-val where some run selects on validation."""
        keys = ["last", "best", "mean_last10"]
        if any("at_best_val" in c.acc for r in self.rows for c in r.cells) or self.grid.compare == "at_best_val":
            keys.append("at_best_val")
        return keys


def build_report(grid: Grid, results: Sequence[CellResult]) -> GridReport:
    """Rows in the order the cells first appear (the grid's order); seeds grouped under their row."""
    rows: dict[tuple[str, str], Row] = {}
    for res in results:
        key = (res.cell.setting, res.cell.method)
        if key not in rows:
            rows[key] = Row(res.cell.setting, res.cell.method, [], res.cell.paper, grid.compare)
        rows[key].cells.append(res)
    return GridReport(grid, list(rows.values()))


# ================================================================ inputs ======================================
@functools.cache
def _paper_grid_for(dataset: str) -> Grid | None:
    for name in named_grids():
        grid = load_grid(name)
        if grid.flags.get("dataset") == dataset and grid.paper:
            return grid
    return None


# Settings that change what a run measures: runs that differ in one of them are not seeds of one row.
RECIPE_KEYS = ("train_subset", "balanced_subset", "test_subset", "width", "num_epochs")
# the paper's recipe: a full run
_RECIPE_DEFAULTS = {"train_subset": 0, "balanced_subset": False, "test_subset": 0, "width": 64, "num_epochs": 300}
# Settings of where and how fast a run ran, not of what it measured: two copies of one run may differ in them.
_LOCAL_SETTINGS = {
    "output_dir", "run_name", "resume", "device", "wandb", "wandb_project", "threads", "num_workers",
    "log_interval", "eval_batch_size", "data_path", "noise_dir", "data_pipeline", "deterministic",
}  # fmt: skip


def _differences(a: Path, b: Path) -> list[str]:
    """The settings (other than where and how fast they ran) in which two run folders' configs differ."""
    cfg_a = (read_json(a / "config.json") or {}).get("config") or {}
    cfg_b = (read_json(b / "config.json") or {}).get("config") or {}
    keys = (set(cfg_a) | set(cfg_b)) - _LOCAL_SETTINGS
    return sorted(k for k in keys if cfg_a.get(k) != cfg_b.get(k))


def is_smoke(run_dir: Path) -> bool:
    cfg = (read_json(run_dir / "config.json") or {}).get("config")
    return isinstance(cfg, dict) and cfg.get("smoke") is True


def cell_from_run(run_dir: Path) -> tuple[Grid, Cell]:
    """A run folder made by hand as a cell: grouped by dataset, noise setting, method and recipe (RECIPE_KEYS,
    in the label where they differ from the paper's full run)."""
    info = read_json(run_dir / "config.json")
    if info is None:
        raise BadRunFolder("config.json is missing or not a JSON object")
    cfg = _table(info, "config", Path("config.json"))
    dataset, method, seed = str(cfg.get("dataset", "?")), str(cfg.get("method", "?")), cfg.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise BadRunFolder(f"config.json seed is {seed!r}, not an integer")
    if cfg.get("selection", "gmm") != "gmm":  # a row of its own, as in a grid: "instancegm+noise_rate"
        method = f"{method}+{cfg['selection']}"
    setting = ""
    if cfg.get("noise_mode") != "real" or dataset.startswith("red"):
        setting = f"r={format_value(_number(cfg.get('r'), 'config.json r'))}"
    if cfg.get("noise_mode") not in (None, "instance", "real"):
        setting = f"{cfg['noise_mode']},{setting}" if setting else str(cfg["noise_mode"])
    recipe = [f"{k}={cfg[k]}" for k in RECIPE_KEYS if k in cfg and cfg[k] != _RECIPE_DEFAULTS[k]]
    if cfg.get("smoke") is True:
        recipe.append("smoke")
    grid = _paper_grid_for(dataset) if cfg.get("noise_mode") in ("instance", "real") else None
    if grid is None:
        grid = Grid(name=dataset, script="", title=f"{dataset} (runs)")
    paper = grid.paper.get(method, {}).get(setting)
    setting = ",".join([setting, *recipe]) if setting else ",".join(recipe)
    return grid, Cell(grid.name, grid.script, (), setting, method, seed, paper)


def _completeness(res: CellResult) -> tuple[bool, int]:
    return res.state == "finished", res.epochs_done


def _read_or_skip(cell: Cell, run_dir: Path) -> CellResult | None:
    try:
        return read_cell(cell, run_dir)
    except (BadRunFolder, OSError) as err:
        log.warning("skipping %s: %s", run_dir, err)
        return None


def collect(paths: Sequence[Path], include_smoke: bool = False) -> list[GridReport]:
    """Sweep folders (with sweep.json) as they are; run folders (with config.json) grouped into grids.

    Each run folder counts once (by its resolved path, then by grid, setting, method and seed); a folder that
    cannot be read is skipped with a warning."""
    reports: list[GridReport] = []
    loose: dict[str, tuple[Grid, dict[tuple[str, str, int], tuple[Path, CellResult]]]] = {}
    seen: set[Path] = set()
    for path in paths:
        try:
            manifest = read_manifest(path)
        except (GridError, KeyError, TypeError, ValueError) as err:
            log.warning("skipping %s: its sweep.json cannot be read (%s)", path / "sweep.json", err)
            continue
        if manifest is not None:
            grid, cells = manifest
            results = [_read_or_skip(c, path / c.name) for c in cells]
            seen.update((path / c.name).resolve() for c in cells)
            reports.append(build_report(grid, [r for r in results if r is not None]))
            continue
        run_dirs = [path] if (path / "config.json").exists() else sorted(p.parent for p in path.glob("*/config.json"))
        if not run_dirs:
            raise SystemExit(f"error: {path}: no sweep.json, config.json or run folders below it")
        for run_dir in run_dirs:
            real = run_dir.resolve()
            if real in seen:
                log.warning("%s: the same folder as one already counted (a link or a repeated path); counted once",
                            run_dir)  # fmt: skip
                continue
            seen.add(real)
            if is_smoke(run_dir) and not include_smoke:
                log.info("leaving out the smoke run %s (--include_smoke shows it)", run_dir)
                continue
            try:
                grid, cell = cell_from_run(run_dir)
            except (BadRunFolder, OSError) as err:
                log.warning("skipping %s: %s", run_dir, err)
                continue
            res = _read_or_skip(cell, run_dir)
            if res is None:
                continue
            runs = loose.setdefault(grid.name, (grid, {}))[1]
            key = (cell.setting, cell.method, cell.seed)
            if key in runs:
                other, kept = runs[key]
                differ = _differences(other, run_dir)
                if _completeness(res) > _completeness(kept):
                    other, runs[key] = run_dir, (run_dir, res)
                what = f"differ in {', '.join(differ)}: give them other seeds" if differ else "a copy?"
                log.warning("%s and %s are the same run (%s, %s, seed %d; %s); counted once, %s kept",
                            other, run_dir, cell.setting or "-", cell.method, cell.seed, what,
                            runs[key][0])  # fmt: skip
                continue
            runs[key] = (run_dir, res)
    for grid, runs in loose.values():
        results = sorted((res for _, res in runs.values()), key=lambda r: (r.cell.setting, r.cell.method, r.cell.seed))
        reports.append(build_report(grid, results))
    if not reports:
        raise SystemExit("error: no run folder could be read (see the warnings above)")
    return reports


# ================================================================ outputs =====================================
def _fmt(mean: float | None, sd: float | None = None, spec: str = ".2f") -> str:
    if mean is None:
        return "—"
    return f"{mean:{spec}} ± {sd:{spec}}" if sd is not None else f"{mean:{spec}}"


def _fmt_hours(hours: float) -> str:
    return f"{hours:.1f}" if hours >= 10 else f"{hours:.3g}"


def _hours_unit(report: GridReport) -> str:
    """GPU hours on GPUs; on CPUs the same sum is wall-clock hours (epoch times x processes), not core-hours."""
    devices = {c.device for r in report.rows for c in r.cells if c.device}
    return "CPU wall h" if devices and all(d.startswith("cpu") for d in devices) else "GPU h"


def markdown(report: GridReport) -> str:
    g, acc_keys = report.grid, report.accuracies
    unit = _hours_unit(report)
    head = ["setting", "method", "seeds done"] + [f"{ACCURACY_NAMES[k]} %" for k in acc_keys]
    head += ["paper %", f"Δ ({ACCURACY_NAMES[g.compare]} − paper)", "realised noise", "split precision"]
    head += ["split recall", unit]
    lines = [f"### {g.title or g.name}", ""]
    if any(r.paper is not None for r in report.rows):
        note = f"the paper's number is compared with the **{ACCURACY_NAMES[g.compare]}** test accuracy"
    else:
        note = "no paper numbers for these settings"
    lines += [f"Grid `{g.name}`; {note}." + (f" {g.paper_note[0].upper()}{g.paper_note[1:]}." if g.paper_note else "")]
    lines += ["Accuracies: mean ± sd over finished seeds (sample sd).", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report.rows:
        cells = [row.setting or "—", row.method, row.status]
        cells += [_fmt(*row.stat(k)) for k in acc_keys]
        diff = row.diff
        cells += [_fmt(row.paper), "—" if diff is None else f"{diff:+.2f}"]
        cells += [_fmt(row.mean("noise_rate"), spec=".3f"), _fmt(row.mean("precision"), spec=".3f")]
        cells += [_fmt(row.mean("recall"), spec=".3f"), _fmt_hours(row.hours)]
        lines.append("| " + " | ".join(cells) + " |")
    devices = sorted({c.device for r in report.rows for c in r.cells if c.device})
    if devices:
        lines += ["", f"Device: {', '.join(devices)}; {unit}: recorded epoch times × processes, all cells."]
    return "\n".join(lines) + "\n"


CSV_FIELDS = [
    "grid", "setting", "method", "seeds_finished", "seeds_total", "status",
    *[f"{k}_{s}" for k in ACCURACIES for s in ("mean", "sd")],
    "paper", "compare", "diff", "realised_noise", "split_precision", "split_recall", "device_hours", "device",
]  # fmt: skip


def csv_text(reports: Sequence[GridReport]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for rep in reports:
        for row in rep.rows:
            rec: dict[str, Any] = {
                "grid": rep.grid.name,
                "setting": row.setting,
                "method": row.method,
                "seeds_finished": len(row.finished),
                "seeds_total": len(row.cells),
                "status": row.status,
                "paper": row.paper,
                "compare": rep.grid.compare,
                "diff": row.diff,
                "realised_noise": row.mean("noise_rate"),
                "split_precision": row.mean("precision"),
                "split_recall": row.mean("recall"),
                "device_hours": round(row.hours, 4),
                "device": ";".join(sorted({c.device for c in row.cells if c.device})),
            }
            for k in ACCURACIES:
                rec[f"{k}_mean"], rec[f"{k}_sd"] = row.stat(k)
            writer.writerow({k: "" if v is None else v for k, v in rec.items()})
    return out.getvalue()


def plot(reports: Sequence[GridReport], path: Path) -> None:
    """One panel per grid: the compared accuracy per setting and method (mean ± sd), the paper's as crosses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(reports), figsize=(5.5 * len(reports), 4), squeeze=False)
    for ax, rep in zip(axes[0], reports):
        settings = list(dict.fromkeys(r.setting for r in rep.rows))
        methods = list(dict.fromkeys(r.method for r in rep.rows))
        width = 0.8 / max(len(methods), 1)
        for i, method in enumerate(methods):
            xs, means, sds, paper_x, paper_y = [], [], [], [], []
            for row in (r for r in rep.rows if r.method == method):
                x = settings.index(row.setting) + (i - (len(methods) - 1) / 2) * width
                mean, sd = row.stat(rep.grid.compare)
                if mean is not None:
                    xs.append(x), means.append(mean), sds.append(sd or 0.0)
                if row.paper is not None:
                    paper_x.append(x), paper_y.append(row.paper)
            bars = ax.bar(xs, means, width, yerr=sds, capsize=3, label=method)
            if paper_x:
                ax.plot(paper_x, paper_y, "x", color="black", ms=8, mew=2, label=f"paper ({method})")
                bars.set_label(f"{method} (here)")
        ax.set_xticks(range(len(settings)), [s or rep.grid.name for s in settings])
        ax.set_ylabel(f"test accuracy % ({ACCURACY_NAMES[rep.grid.compare]})")
        ax.set_title(rep.grid.title or rep.grid.name, fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> list[GridReport]:
    p = argparse.ArgumentParser(prog="python -m training.report", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", type=Path, help="sweep folders, run folders, or folders of run folders")
    p.add_argument("--out", type=Path, help="where report.{md,csv,png} go (default: the sweep folder, or ./report)")
    p.add_argument("--include_smoke", action="store_true", help="report smoke runs too (left out by default)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    single_sweep = len(args.paths) == 1 and (args.paths[0] / "sweep.json").exists()
    out = args.out or (args.paths[0] if single_sweep else Path("report"))
    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: --out {out}: is a file, not a folder; pass a folder (it is created)")
    missing = [str(path) for path in args.paths if not path.exists()]
    if missing:
        raise SystemExit(f"error: no such folder: {', '.join(missing)}")
    reports = collect([path.resolve() for path in args.paths], include_smoke=args.include_smoke)
    out.mkdir(parents=True, exist_ok=True)
    text = "\n".join(markdown(r) for r in reports)
    (out / "report.md").write_text(text)
    (out / "report.csv").write_text(csv_text(reports))
    plot(reports, out / "report.png")
    sys.stdout.write(text)
    print(f"\nwrote {out / 'report.md'}, report.csv, report.png")
    return reports


if __name__ == "__main__":
    main()
