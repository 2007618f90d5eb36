"""One command for a CUDA GPU: throughput per phase, precision and compile options, and a time-boxed
full-size Fashion-MNIST IDN training run, written as a markdown table and JSON.

    python benchmarks/gpu_check.py OUT_DIR --data_path DIR_WITH_THE_FOUR_GZ_FILES   # one GPU, < 8 min wall
    python benchmarks/gpu_check.py OUT_DIR --quick                                   # CPU wiring check, seconds

Four parts, each with its own time budget:

(a) ``throughput``: every phase of an epoch (warm-up step, eval-train pass, DivideMix and InstanceGM steps, test
    pass) on the device pipeline against the original's pattern (``benchmarks/throughput.py``: per-sample PIL
    loaders with 5 workers, a new DataLoader iterator per generative step, per-sample loss loop in eval_train,
    batch B for evaluation), at the paper's width 64 and batch 64, CIFAR-10's shape (60,000 images);
(b) ``options``: the InstanceGM step's network work in fp32, channels_last, bf16 autocast (+ channels_last),
    fp16 autocast and torch.compile, with the loss and gradient difference of each from fp32;
(c) ``train``: the Fashion-MNIST preset (60,000 images padded to 32x32x3, IDN 40 %, width 64) for as many
    epochs as fit in ``--train_budget_s``, with the test accuracy of every epoch;
(d) ``concurrency`` (run before (c)): the aggregate co-training images/s of 1, 2 and 4 runs sharing the GPU as
    separate processes (the sweep's ``--cells_per_gpu``), with the hours per 300-epoch CIFAR-10 cell it implies.

Each part has a time budget (``--phases_budget_s``, ``--options_budget_s``; the training run gets what is left
of ``--budget_s``, at most ``--train_budget_s``), printed with its spend. The defaults are sized for 8 minutes on
one GPU, start-up included; part (a)'s size is fixed by its arguments, so its budget is reported against, not
enforced. A part or an option that fails on this machine is reported as skipped with its reason and the check
goes on; the report is written after every part, so a check stopped by a timeout still leaves one. Parts (a)
and (b) run with cudnn.benchmark on, as training does.

Writes ``OUT_DIR/gpu_check.md``, ``OUT_DIR/gpu_check.json`` and (matplotlib permitting) ``gpu_check.png``. Needs
only torch, torchvision, numpy, scipy, scikit-learn, tqdm (matplotlib for the figure); wandb is never imported.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import throughput  # noqa: E402
from training import Config  # noqa: E402
from training.metrics import MetricSink  # noqa: E402
from training.runtime import autocast_factory, resolve_device, seed_everything  # noqa: E402
from training.trainer import CoTrainer  # noqa: E402

log = logging.getLogger("training")

OPTIONS_GPU = ["fp32", "channels_last", "bf16", "bf16+channels_last", "fp16", "compile"]
OPTIONS_CPU_QUICK = ["fp32", "bf16"]  # compiling takes a minute on a CPU


# ================================================================ (a) + (b) ====================================
def throughput_args(args: argparse.Namespace, device: torch.device) -> argparse.Namespace:
    """``benchmarks/throughput.py``'s settings for this check (its own defaults; fewer repetitions)."""
    argv = ["--device", str(device), "--width", str(args.width), "--batch_size", str(args.batch_size),
            "--paths", "device", "naive", "--reps", str(args.reps), "--steps", "2", "--warmup_iters", "2",
            "--num_train", str(args.num_train), "--num_test", "10000"]  # fmt: skip
    if args.quick:
        argv = ["--quick", "--device", str(device), "--threads", "1", "--paths", "device", "naive", "--no_floor",
                "--num_train", "512", "--num_test", "128"]  # fmt: skip
    return throughput.parse_args(argv)


def _bench_config(targs: argparse.Namespace, device: torch.device) -> Config:
    return Config(
        dataset="cifar10", num_classes=10, width=targs.width, batch_size=targs.batch_size,
        method="instancegm", device=str(device), seed=0,
    )  # fmt: skip


def run_phases(args: argparse.Namespace, device: torch.device, budget_s: float) -> dict[str, Any]:
    """(a) the phases per data path, through ``benchmarks/throughput.py`` (its size is fixed by the arguments:
    the budget is reported against, not enforced)."""
    targs = throughput_args(args, device)
    arrays = throughput.synthetic_arrays(targs.num_train, targs.num_test, 32, 10)
    t0 = time.perf_counter()
    phases = throughput.measure_phases(throughput.Bench.build(_bench_config(targs, device), device), arrays, targs)
    out: dict[str, Any] = {"settings": vars(targs) | {"out": None}, "phases": phases}
    out["phases_s"] = time.perf_counter() - t0
    out["summary"] = throughput.summary(phases, device)
    return out


def run_options(args: argparse.Namespace, device: torch.device, budget_s: float) -> dict[str, Any]:
    """(b) the network options; an option not started within ``budget_s`` is a skipped row."""
    targs = throughput_args(args, device)
    t0 = time.perf_counter()
    options = OPTIONS_CPU_QUICK if args.quick or device.type != "cuda" else OPTIONS_GPU
    if args.no_compile:
        options = [o for o in options if o != "compile"]
    rows = throughput.measure_options(_bench_config(targs, device), device, options, targs, deadline=t0 + budget_s)
    return {"options": rows, "options_s": time.perf_counter() - t0}


# ================================================================ (d) ==========================================
CONCURRENCY_LEVELS = (1, 2, 4)
CONCURRENCY_QUICK = (1, 2)
CIFAR_CELL_IMAGES = 300 * 2 * 50_000  # a 300-epoch CIFAR-10 cell: two nets, ~N co-training images per epoch


def concurrency_worker(device: str, width: int, batch_size: int, index: int, levels: list[int]) -> dict[str, Any]:
    """Worker ``index`` of the concurrent runs: InstanceGM co-training steps (benchmarks/throughput.py's floor
    step) on ``device``. Once warmed up it prints ``ready`` and reads ``start_at window_s`` from stdin: window j
    (``window_s`` wall-clock seconds, the first opening at ``start_at``) measures ``levels[j]`` runs at once, the
    workers with ``index < levels[j]`` stepping, the others waiting. Prints (as JSON) and returns this worker's
    images/s per window (``rates``, None where it waited)."""
    dev = torch.device(device)
    if dev.type == "cpu":  # K runs on a few cores: one thread each, as the sweep's CPU cells
        torch.set_num_threads(1)
    seed_everything(0)
    bench = throughput.Bench.build(_bench_config(argparse.Namespace(width=width, batch_size=batch_size), dev), dev)
    t = bench.floor_tensors()
    for _ in range(3):  # cuDNN autotuning, allocator warm-up
        bench.floor_step(t, True)
    throughput.sync(dev)
    print("ready", flush=True)
    start_at, window_s = (float(v) for v in sys.stdin.readline().split())
    rates: list[float | None] = []
    for j, runs in enumerate(levels):
        opens, closes = start_at + j * window_s, start_at + (j + 1) * window_s
        while time.time() < opens:
            time.sleep(0.005)
        if index >= runs:
            rates.append(None)
            continue
        steps, t0 = 0, time.time()
        while time.time() < closes:
            bench.floor_step(t, True)
            steps += 1
            throughput.sync(dev)  # a step ends on the GPU before the clock is read
        rates.append(steps * 2 * batch_size / max(time.time() - t0, 1e-9))
    out = {"rates": rates}
    print(json.dumps(out), flush=True)
    return out


_WORKER_CODE = (
    "import json, sys; sys.path.insert(0, sys.argv[1]); from benchmarks.gpu_check import concurrency_worker; "
    "concurrency_worker(*json.loads(sys.argv[2]))"
)


def run_concurrency(args: argparse.Namespace, device: torch.device, budget_s: float) -> dict[str, Any]:
    """(d) aggregate co-training images/s of K runs sharing the GPU (separate processes, as the sweep's
    ``--cells_per_gpu K`` starts them), for K = 1, 2, 4. The processes start once; the levels follow each other
    in windows of equal length that share the budget left after the start-up."""
    levels = list(CONCURRENCY_QUICK if args.quick else CONCURRENCY_LEVELS)
    t0 = time.perf_counter()
    procs = []
    for index in range(max(levels)):
        spec = [str(device), args.width, args.batch_size, index, levels]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _WORKER_CODE, str(ROOT), json.dumps(spec)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        # Every run built and warmed up first, whatever that costs here; the windows share what is left.
        ready = [proc.stdout.readline().strip() == "ready" for proc in procs]
        start_s = time.perf_counter() - t0
        window_s = max(1.0, (budget_s - start_s) / len(levels))
        start_at = time.time() + 0.5
        for proc, ok in zip(procs, ready):
            if not all(ready):  # one run could not start: the others would wait for a window forever
                proc.kill()
            elif ok:
                proc.stdin.write(f"{start_at!r} {window_s!r}\n")
                proc.stdin.flush()
        rates, errors = [], []
        for proc, ok in zip(procs, ready):
            out, err = proc.communicate(timeout=len(levels) * window_s + 120)
            if proc.returncode == 0:
                rates.append(json.loads(out.strip().splitlines()[-1]))
            elif not ok:  # the run that failed, not the ones stopped because of it
                errors.append((err.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:200])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    if errors or len(rates) < len(procs):
        raise RuntimeError(f"a concurrent run failed: {errors[0] if errors else 'no result'}")
    rows = []
    for j, runs in enumerate(levels):
        total = sum(r["rates"][j] for r in rates if r["rates"][j] is not None)
        rows.append({"runs": runs, "aggregate_images_per_s": total, "per_run_images_per_s": total / runs,
                     "cifar10_cell_h": CIFAR_CELL_IMAGES / max(total / runs, 1e-9) / 3600,
                     "cells_per_day": 24 * 3600 * total / CIFAR_CELL_IMAGES})  # fmt: skip
    for row in rows:
        row["speedup_vs_1"] = row["aggregate_images_per_s"] / max(rows[0]["aggregate_images_per_s"], 1e-9)
    return {"rows": rows, "window_s": window_s, "start_s": start_s, "width": args.width, "batch_size": args.batch_size}


def concurrency_markdown(part: dict[str, Any]) -> list[str]:
    out = [
        "",
        f"## Runs sharing one GPU (width {part['width']}, batch {part['batch_size']}, {part['window_s']:.0f} s window)",
        "",
        "Co-training images/s (InstanceGM step) of K separate processes at once; a 300-epoch CIFAR-10 cell is "
        "estimated as 300 x 2 nets x 50,000 images at the per-run rate (evaluation passes and warm-up left out).",
        "",
        "| runs | aggregate images/s | per run | vs 1 run | h per CIFAR-10 cell | cells per day |",
        "|---|---|---|---|---|---|",
    ]
    for r in part["rows"]:
        out.append(
            f"| {r['runs']} | {r['aggregate_images_per_s']:.0f} | {r['per_run_images_per_s']:.0f} "
            f"| {r.get('speedup_vs_1', 1.0):.2f}x | {r['cifar10_cell_h']:.1f} | {r['cells_per_day']:.1f} |"
        )
    return out


# ================================================================ (c) ==========================================
class _OutOfTime(Exception):
    pass


class TimeBoxedTrainer(CoTrainer):
    """The engine's trainer, stopped after the epoch past which the next one would not fit the budget; it
    keeps no checkpoints (the check needs only the per-epoch record)."""

    deadline: float = float("inf")

    def save_checkpoint(self, epoch: int) -> None:
        last = self.history[-1]["time/epoch_s"]
        if time.perf_counter() + last > self.deadline:
            raise _OutOfTime(epoch)


def train_config(args: argparse.Namespace, device: torch.device, out_dir: Path) -> Config:
    import instanceGM

    cfg = instanceGM.PRESETS["fashionmnist"].replace(
        data_path=args.data_path, r=args.r, width=args.width, batch_size=args.batch_size, device=str(device),
        amp=args.amp, output_dir=str(out_dir), run_name="train", noise_dir=str(out_dir / "noise"), wandb="off",
        num_epochs=args.max_epochs, log_interval=100,
    )  # fmt: skip
    if args.quick:
        cfg = cfg.replace(train_subset=100, balanced_subset=True, test_subset=64, width=8, batch_size=16,
                          warm_up=1, num_epochs=2, lr_drop_epoch=2, rampup_length=2.0)  # fmt: skip
    return cfg.validate()


def run_training(args: argparse.Namespace, device: torch.device, out_dir: Path, budget_s: float) -> dict[str, Any]:
    """(c): the Fashion-MNIST preset for as many epochs as fit in ``budget_s`` (set-up included)."""
    from dataloaders import build_data
    from training.launch import build_peers

    cfg = train_config(args, device, out_dir)
    run_dir = out_dir / "train"
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    seed_everything(cfg.seed)
    data = build_data(cfg, device)
    peers = build_peers(cfg, device)
    trainer = TimeBoxedTrainer(
        cfg, data, peers, device, autocast_factory(cfg.amp, device), MetricSink(run_dir), run_dir
    )
    setup_s = time.perf_counter() - t0
    trainer.deadline = t0 + budget_s
    stopped = "num_epochs reached"
    try:
        trainer.fit()
    except _OutOfTime as stop:
        stopped = f"time budget ({budget_s:.0f} s) after epoch {stop.args[0] + 1}"
    curve = [
        {
            "epoch": r["epoch"] + 1,
            "phase": r["phase"],
            "test_acc": r["test/acc"],
            "net1_acc": r["test/net1/acc"],
            "net2_acc": r["test/net2/acc"],
            "labeled": r.get("split/net1/labeled"),
            "split_auc": r.get("split/net1/auc"),
            "epoch_s": r["time/epoch_s"],
        }
        for r in trainer.history
    ]
    noise = getattr(data, "noise_info", {}) or {}
    return {
        "config": {k: cfg.to_dict()[k] for k in ("dataset", "r", "width", "batch_size", "warm_up", "lr", "amp")},
        "num_train": data.num_train,
        "realised_noise_rate": noise.get("realised_rate"),
        "setup_s": setup_s,
        "wall_s": time.perf_counter() - t0,
        "stopped": stopped,
        "curve": curve,
    }


# ================================================================ report =======================================
def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    out = [f"# GPU check: {env.get('gpu', env.get('cpu', ''))}", ""]
    out.append(
        f"{env['date']}, torch {env['torch']}, device {env['device']}, cudnn.benchmark "
        f"{env.get('cudnn_benchmark')}; wall {report['wall_s']:.0f} s."
    )
    budget = report.get("budget", {})
    if budget:
        spent = ", ".join(
            f"{name} {p['spent_s']:.0f}/{p['budget_s']:.0f} s"
            + (f" (skipped: {p['skipped']})" if "skipped" in p else "")
            for name, p in budget["parts"].items()
        )
        out.append(f"Time budget {budget['total_s']:.0f} s; spent/budget per part: {spent or 'none run yet'}.")
    t = report.get("throughput", {})
    if "phases" in t or "options" in t:
        out += ["", "## Throughput per phase (device pipeline vs the original's pattern)", ""]
        out.append(
            throughput.markdown(
                {"phases": t.get("phases", []), "summary": t.get("summary", {}), "options": t.get("options", [])}
            )
        )
    if report.get("concurrency", {}).get("rows"):
        out += concurrency_markdown(report["concurrency"])
    tr = report.get("train")
    if tr and "curve" in tr:
        c = tr["config"]
        out += ["", "## Fashion-MNIST, IDN {:.0%}, width {}, batch {} ({} training images)".format(
            c["r"], c["width"], c["batch_size"], tr["num_train"]), ""]  # fmt: skip
        out.append(f"Stopped: {tr['stopped']}; setup {tr['setup_s']:.0f} s, wall {tr['wall_s']:.0f} s.")
        out += ["", "| epoch | phase | test acc % | net1 | net2 | labeled (net1) | split AUC | epoch s |",
                "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in tr["curve"]:
            auc = "" if r["split_auc"] is None else f"{r['split_auc']:.3f}"
            out.append(
                f"| {r['epoch']} | {r['phase']} | {r['test_acc']:.2f} | {r['net1_acc']:.2f} | {r['net2_acc']:.2f} "
                f"| {r['labeled'] or ''} | {auc} | {r['epoch_s']:.1f} |"
            )
    return "\n".join(out) + "\n"


def plot(curve: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["epoch"] for r in curve], [r["test_acc"] for r in curve], marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy % (ensemble)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    p.add_argument("out_dir", type=Path, help="folder for gpu_check.md / .json / .png (created)")
    p.add_argument("--data_path", default="/usr/share/datasets/fashion-mnist", help="folder with the four .gz files")
    p.add_argument("--quick", action="store_true", help="tiny CPU wiring check (seconds)")
    p.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--num_train", type=int, default=60_000, help="images of the synthetic throughput set")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions per phase")
    p.add_argument("--r", type=float, default=0.4, help="IDN rate of the training run")
    p.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off", help="precision of the training run")
    budgets = (
        ("--budget_s", 450.0, "wall-clock budget of the whole check (start-up aside); the training run gets the rest"),
        ("--phases_budget_s", 120.0, "budget of part (a), reported against"),
        ("--options_budget_s", 90.0, "budget of part (b): options not started within it are skipped"),
        ("--concurrency_budget_s", 150.0, "budget of part (d): 1, 2 and 4 runs at once on the GPU"),
        ("--train_budget_s", 240.0, "most wall-clock time of the training run"),
    )
    for flag, default, text in budgets:
        p.add_argument(flag, type=float, default=default, help=text)
    p.add_argument("--max_epochs", type=int, default=300)
    p.add_argument("--no_compile", action="store_true", help="skip torch.compile in the options")
    p.add_argument(
        "--skip", nargs="*", choices=("throughput", "concurrency", "train"), default=[], help="parts to leave out"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.device = "cpu" if args.device == "auto" else args.device
        args.train_budget_s = min(args.train_budget_s, 30.0)
        args.concurrency_budget_s = min(args.concurrency_budget_s, 30.0)
    return args


def write_report(report: dict[str, Any], out_dir: Path, t0: float) -> None:
    """Both files as they stand: written after every part, so a run stopped by a timeout still leaves one."""
    report["wall_s"] = time.perf_counter() - t0
    report["markdown"] = markdown(report)
    (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    (out_dir / "gpu_check.md").write_text(report["markdown"])


def _train_part(args: argparse.Namespace, device: torch.device, budget_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=args.out_dir) as tmp:  # noise cache and metrics: scratch
        return run_training(args, device, Path(tmp), budget_s)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if device.type != "cuda" and not args.quick:
        raise SystemExit("error: no CUDA GPU is visible to PyTorch; run on a GPU machine, or pass --quick (CPU)")
    if "train" not in args.skip and not Path(args.data_path).is_dir():
        raise SystemExit(
            f"error: --data_path {args.data_path} does not exist: pass the folder with Fashion-MNIST's four .gz "
            "files, or --skip train"
        )
    if args.quick:
        torch.set_num_threads(1)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # (a) and (b) are timed under the cuDNN settings a training run uses (seed_everything: cudnn.benchmark on)
    seed_everything(0)
    report: dict[str, Any] = {"settings": {k: str(v) for k, v in vars(args).items()},
                              "environment": throughput.environment(device)
                              | {"cudnn_benchmark": torch.backends.cudnn.benchmark},
                              "budget": {"total_s": args.budget_s, "parts": {}}}  # fmt: skip
    parts = []
    if "throughput" not in args.skip:
        parts += [("phases", run_phases, args.phases_budget_s), ("options", run_options, args.options_budget_s)]
    if "concurrency" not in args.skip:
        parts.append(("concurrency", run_concurrency, args.concurrency_budget_s))
    if "train" not in args.skip:
        parts.append(("train", _train_part, None))
    for name, run_part, budget_s in parts:
        if budget_s is None:  # the training run: what the total leaves, at most --train_budget_s
            budget_s = max(0.0, min(args.train_budget_s, args.budget_s - (time.perf_counter() - t0)))
        print(f"gpu_check part {name}: budget {budget_s:.0f} s", flush=True)
        t_part = time.perf_counter()
        spend: dict[str, Any] = {"budget_s": budget_s}
        try:
            result = run_part(args, device, budget_s)
        except Exception as err:  # noqa: BLE001 -- a part that fails on this machine is reported, the rest runs
            spend["skipped"] = throughput.failure_reason(err)
            log.exception("gpu_check part %s failed", name)
            result = {"skipped": spend["skipped"]}
        spend["spent_s"] = time.perf_counter() - t_part
        report["budget"]["parts"][name] = spend
        if name in ("train", "concurrency"):
            report[name] = result
        else:
            report.setdefault("throughput", {}).update(result)
        print(f"gpu_check part {name}: spent {spend['spent_s']:.0f} s of {budget_s:.0f} s", flush=True)
        write_report(report, args.out_dir, t0)
    if "curve" in report.get("train", {}) and plot(report["train"]["curve"], args.out_dir / "gpu_check.png"):
        report["figure"] = "gpu_check.png"
    write_report(report, args.out_dir, t0)
    print(report["markdown"])
    print(f"wrote {args.out_dir / 'gpu_check.md'} and gpu_check.json")
    return report


if __name__ == "__main__":
    main()
