"""One command for a CUDA GPU: throughput per phase, precision and compile options, and a time-boxed
full-size Fashion-MNIST IDN training run, written as a markdown table and JSON.

    python benchmarks/gpu_check.py OUT_DIR --data_path DIR_WITH_THE_FOUR_GZ_FILES   # one GPU, < 8 min wall
    python benchmarks/gpu_check.py OUT_DIR --quick                                   # CPU wiring check, seconds

Three parts, each with its own time budget:

(a) ``throughput``: every phase of an epoch (warm-up step, eval-train pass, DivideMix and InstanceGM steps, test
    pass) on the device pipeline against the original's pattern (``benchmarks/throughput.py``: per-sample PIL
    loaders with 5 workers, a new DataLoader iterator per generative step, per-sample loss loop in eval_train,
    batch B for evaluation), at the paper's width 64 and batch 64, CIFAR-10's shape (60,000 images);
(b) ``options``: the InstanceGM step's network work in fp32, channels_last, bf16 autocast (+ channels_last),
    fp16 autocast and torch.compile, with the loss and gradient difference of each from fp32;
(c) ``train``: the Fashion-MNIST preset (60,000 images padded to 32x32x3, IDN 40 %, width 64) for as many
    epochs as fit in ``--train_budget_s``, with the test accuracy of every epoch.

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
        ("--train_budget_s", 240.0, "most wall-clock time of the training run"),
    )
    for flag, default, text in budgets:
        p.add_argument(flag, type=float, default=default, help=text)
    p.add_argument("--max_epochs", type=int, default=300)
    p.add_argument("--no_compile", action="store_true", help="skip torch.compile in the options")
    p.add_argument("--skip", nargs="*", choices=("throughput", "train"), default=[], help="parts to leave out")
    args = p.parse_args(argv)
    if args.quick:
        args.device = "cpu" if args.device == "auto" else args.device
        args.train_budget_s = min(args.train_budget_s, 30.0)
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
        if name == "train":
            report["train"] = result
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
