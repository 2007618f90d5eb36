"""``run(presets, default)``: what every entry script calls. Parse, set up the run folder, build, resume, fit."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training import checkpoint as ckpt_lib
from training import dashboards, faults, rundir, versions
from training import distributed as dist_lib
from training.config import Config, ConfigError, parse_cli
from training.metrics import MetricSink
from training.noise_rate import NoiseRateEstimator
from training.runtime import (
    atomic_write_text,
    autocast_factory,
    environment_info,
    resolve_device,
    restore_rng_state,
    seed_everything,
    set_tf32,
    use_device,
)
from training.trainer import CoTrainer, Peer

log = logging.getLogger("training")


def apply_smoke(cfg: Config) -> Config:
    """A wiring run of about a minute: one warm-up and one co-training epoch on a few batches, narrow net.

    Every phase runs (warm-up, divide, co-train with the generative model, evaluation, checkpoint), on so few
    images that its accuracy means nothing. Larger inputs get smaller budgets (SMOKE_BUDGET).
    """
    if not cfg.smoke:
        return cfg
    batch, train_images, test_images = SMOKE_BUDGET.get(cfg.vae_size, SMOKE_BUDGET[32])
    return cfg.replace(
        num_epochs=2,
        warm_up=1,
        train_subset=min(cfg.train_subset or train_images, train_images),
        test_subset=min(cfg.test_subset or test_images, test_images),
        batch_size=min(cfg.batch_size, batch),
        width=min(cfg.width, 16),
        wandb="off",
        num_batches=min(cfg.num_batches, 2),
        num_workers=0,
        log_interval=5,
    ).validate()


# --smoke, by input size: (batch B, training images, test images). 32x32 (CIFAR, Fashion-MNIST, Red): ~30 s on
# 2 CPU cores; VGG-19-BN at 64 and ResNet-50 at 224 cost far more per image (ResNet-50: ~0.3 s of CPU per image
# and pass). Clothing1M's epochs are num_batches (2) batches whatever its training set: only its evaluation is cut.
SMOKE_BUDGET = {32: (16, 256, 256), 64: (8, 128, 128), 224: (2, 256, 16)}


class StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is now (not the one at set-up: tests and notebooks swap it)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(run_dir: Path | None = None, quiet: bool = False) -> None:
    """Console log (and ``run_dir/log.txt``); ``quiet`` (ranks other than 0) keeps warnings only."""
    root = logging.getLogger()
    if not any(getattr(h, "_instancegm", False) for h in root.handlers):
        handler = StdoutHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        handler._instancegm = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    for h in [h for h in root.handlers if getattr(h, "_instancegm_file", False)]:
        root.removeHandler(h)  # one run folder per run, also when several runs share a process (tests)
        h.close()
    if run_dir is not None:
        fh = logging.FileHandler(run_dir / "log.txt")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        fh._instancegm_file = True  # type: ignore[attr-defined]
        root.addHandler(fh)


def build_peers(cfg: Config, device: torch.device) -> list[Peer]:
    """Two classifiers (and, for InstanceGM, one generative model each) with their optimisers."""
    from dataloaders import DATASET_STATS
    from models import build_classifier, build_vae
    from models.memory_format import channels_last_problem

    normalize = DATASET_STATS.get(cfg.dataset) if cfg.normalize_inputs else None
    peers = []
    for name in ("net1", "net2"):
        options = (
            {"width": cfg.width}
            if cfg.backbone.startswith("preact")
            else {"pretrained": cfg.pretrained, "weights_path": cfg.weights_path or None}
        )
        net = build_classifier(cfg.backbone, cfg.num_classes, normalize=normalize, **options).to(device)
        if cfg.channels_last:
            problem = channels_last_problem(net, device)
            if problem:
                raise ConfigError(problem)
            net = net.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        vae = opt_vae = None
        if cfg.method == "instancegm":
            vae = build_vae(
                cfg.vae_size,
                cfg.num_classes,
                cfg.z_dim,
                gaussian_reparam=cfg.gaussian_reparam,
                single_sigmoid=cfg.single_sigmoid,
                gumbel_tau=cfg.gumbel_tau,
            ).to(device)
            opt_vae = torch.optim.Adam(vae.parameters(), lr=cfg.vae_lr, betas=(cfg.vae_beta1, cfg.vae_beta2))
        estimator = None
        if cfg.selection == "noise_rate":  # one noise-rate estimator per classifier, like its GMM
            estimator = NoiseRateEstimator(cfg.num_classes, seed=cfg.seed + len(peers), device=device)
        peers.append(Peer(name, net, opt, vae, opt_vae, rate_estimator=estimator))
    return peers


def prepare_run_dir(cfg: Config, create: bool = True) -> rundir.RunFolder:
    """The locked run folder and the checkpoint to resume from (None: fresh start). Refuses to clobber a run."""
    return rundir.open_run_folder(
        cfg.output_dir,
        cfg.run_name or cfg.default_run_name(),
        cfg.resume,
        create,
        stale_after_s=60.0 * cfg.lock_stale_min,
        force_unlock=cfg.force_unlock,
    )


def saved_settings(resume: str) -> dict[str, Any]:
    """The settings of the run that ``--resume`` names (its folder or a checkpoint), to continue it with.

    A ``checkpoint.pt`` continues in its own folder, wherever that has moved since; any other file (a copy)
    continues in the folder its settings name, unless --output_dir / --run_name say otherwise.
    """
    path = Path(resume).expanduser()
    ckpt = path / ckpt_lib.FILENAME if path.is_dir() else path
    if not ckpt.is_file():
        what = f"{path} holds no {ckpt_lib.FILENAME}" if path.is_dir() else "no such file or run folder"
        raise ckpt_lib.CheckpointError(f"--resume {resume}: {what} (auto: the run these flags name)")
    settings = dict(ckpt_lib.load(ckpt)["config"])
    settings["resume"] = str(ckpt)
    if ckpt.name == ckpt_lib.FILENAME:
        folder = ckpt.parent if ckpt.parent.name else ckpt.resolve().parent
        settings.update(output_dir=str(folder.parent), run_name=folder.name)
    return settings


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or a stop signal) during a run; ``str()`` says what was saved and how to continue."""

    signum: int | None = None  # the signal that stopped the run (None: Ctrl-C)


class RunSignalled(KeyboardInterrupt):
    """Raised by the handler of a stop signal: the run unwinds as after a Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# SIGTERM: `docker stop`, Slurm's cancel, requeue and pre-emption, torchrun passing its own on; SIGUSR1/SIGUSR2:
# what `sbatch --signal` and submitit send ahead of a time limit. Their default actions end the process without
# releasing run.lock, and Python as a container's PID 1 ignores SIGTERM altogether.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


@contextlib.contextmanager
def stop_on_signals():
    """While a run trains, a stop signal ends it as Ctrl-C does: the last completed epoch's checkpoint stays,
    the lock is released, one line says how to continue. Further signals are ignored until it has unwound."""
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        yield
        return

    def handler(signum, _frame):
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise RunSignalled(signum)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _interrupted(run_dir: Path, training: bool, signum: int | None = None) -> RunInterrupted:
    if (run_dir / ckpt_lib.FILENAME).exists():
        stop = RunInterrupted(
            f"the last completed epoch is in {run_dir / ckpt_lib.FILENAME}; continue with: "
            + rundir.resume_command(run_dir)
        )
    elif not training:
        stop = RunInterrupted(START_UP_INTERRUPTED)
    else:
        stop = RunInterrupted(f"before the first epoch completed; nothing to resume in {run_dir}")
    stop.signum = signum
    return stop


def _stopped_by(err: BaseException) -> str:
    signum = getattr(err, "signum", None)
    return "interrupted" if signum is None else f"stopped by {signal.Signals(signum).name}"


START_UP_INTERRUPTED = "during start-up, before the first epoch completed"


def main_run(cfg: Config) -> dict:
    """Everything after parsing: usable from Python (tests, benchmarks) with a Config.

    Under torchrun every process runs this; rank 0 alone takes the run folder's lock and writes its files.
    """
    cfg = apply_smoke(cfg.validate())
    with stop_on_signals():
        return _main_run(cfg)


def _main_run(cfg: Config) -> dict:
    from dataloaders import build_data

    versions.check_torchvision()  # a mixed pair would fail later, in a traceback far from its cause
    if cfg.threads:  # before data and models are built, so that every phase runs on that many threads
        torch.set_num_threads(cfg.threads)
    info_dist = dist_lib.init_distributed(cfg.device)
    main = info_dist.is_main
    folder = None
    logging_to_run_dir = started = training = discard = False
    # A start-up that is refused (bad settings, another run's checkpoint, other data) leaves the folder as it was:
    # no log.txt lines, no new empty folder.
    target = Path(cfg.output_dir).expanduser() / (cfg.run_name or cfg.default_run_name())
    fresh_folder = not target.exists()
    log_before = (target / "log.txt").stat().st_size if (target / "log.txt").is_file() else None
    refused = False
    try:
        folder = prepare_run_dir(cfg, create=main)
        run_dir, resume_path = folder.path, folder.resume
        setup_logging(run_dir if main else None, quiet=not main)
        logging_to_run_dir = main
        if cfg.resume == "auto" and resume_path is None:  # "auto" names a run by the flags, not the last run
            log.info(
                "--resume auto: no checkpoint in %s, so a new run starts there; to continue another run pass "
                "its folder: --resume runs/<run>",
                run_dir,
            )
        device = dist_lib.device_for(info_dist, resolve_device(cfg.device))
        use_device(device)
        # Each process its own stream (Beta draws, Gumbel noise, ...); DDP makes the initial weights equal.
        seed_everything(cfg.seed + info_dist.rank, cfg.deterministic)
        set_tf32(cfg.tf32)
        autocast = autocast_factory(cfg.amp, device)
        log.info(
            "run folder %s | device %s | method %s | processes %d", run_dir, device, cfg.method, info_dist.world_size
        )

        state, changed = None, {}
        if resume_path is not None:  # checked before any data is read: a mismatch fails in a second
            state = ckpt_lib.load(resume_path)
            changed = ckpt_lib.check_compatible(state["config"], cfg.to_dict(), resume_path, cfg.allow_config_change)

        # Rank 0 first: it may generate and cache the noisy labels, which the others then read.
        if not main:
            dist_lib.barrier(info_dist)
        data = build_data(cfg, device)
        if main:
            dist_lib.barrier(info_dist)
        data.set_distributed(info_dist.rank, info_dist.world_size, cfg.seed)
        faults.point("build_peers")
        peers = build_peers(cfg, device)
        start_epoch, history, best, config_history = 0, [], {}, []
        if state is not None:
            ckpt_lib.check_same_data(state.get("data_identity"), data.identity(), resume_path)
            config_history = list(state.get("config_history", []))
            for peer in peers:
                peer.load_state_dict(state["peers"][peer.name])
            resumed_seed = cfg.seed + 7919 * (state["epoch"] + 1)
            data.resume(state["data"], resumed_seed)
            if info_dist.enabled:  # per-process streams cannot be restored from rank 0's: reseed them apart
                seed_everything(resumed_seed + info_dist.rank, cfg.deterministic)
            else:
                restore_rng_state(state["rng"], device)
            start_epoch, history, best = state["epoch"] + 1, state["history"], state["best"]
            if changed:  # every segment's settings stay on record; config.json below carries the new ones
                if not config_history:
                    config_history.append({"first_epoch": 1, "config": state["config"]})
                config_history.append({"first_epoch": start_epoch + 1, "config": cfg.to_dict(), "changed": changed})
                log.warning(
                    "resuming with changed settings from epoch %d: %s (kept in config.json's config_history)",
                    start_epoch + 1,
                    "; ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items()),
                )
            upcoming = f"next: epoch {start_epoch + 1}" if start_epoch < cfg.num_epochs else "nothing left to train"
            log.info("resumed from %s after epoch %d of %d; %s", resume_path, start_epoch, cfg.num_epochs, upcoming)
        if main:  # the checkpoint's history is the reference for metrics.jsonl, splits.pt and summary.json
            if resume_path is not None:
                rundir.adopt_checkpoint(resume_path, run_dir)
            rundir.sync_history(run_dir, history, start_epoch - 1, finished=start_epoch >= cfg.num_epochs)
        wrap_distributed(peers, cfg, info_dist, device)

        info = {
            "config": cfg.to_dict(),
            "noise": getattr(data, "noise_info", {}),
            "environment": environment_info(device) | {"processes": info_dist.world_size},
            "num_train": data.num_train,
        }
        if config_history:
            info["config_history"] = config_history
        started = True
        if main:
            atomic_write_text(run_dir / "config.json", json.dumps(info, indent=2, default=str))
        sink = MetricSink(run_dir, cfg.wandb if main else "off", cfg.wandb_project, run_dir.name, info)
        if start_epoch == 0 and main:
            dashboards.log_inputs(sink, data)
        trainer = CoTrainer(
            cfg,
            data,
            peers,
            device,
            autocast,
            sink,
            run_dir,
            start_epoch,
            history,
            best,
            dist_info=info_dist,
            config_history=config_history,
        )
        if state is not None:
            trainer.resume_from(state)
        training = True
        try:
            summary = trainer.fit()
        finally:
            sink.close()
        summary["run_dir"] = str(run_dir)
        if main:
            atomic_write_text(run_dir / rundir.SUMMARY_FILE, json.dumps(summary, indent=2))
        acc = summary.get("test/acc", {})
        if cfg.smoke and main:
            log.info(
                "smoke run done: data, warm-up, divide, co-training, evaluation and checkpoint are wired up; "
                "on %d training images and 2 epochs its accuracy means nothing",
                data.num_train,
            )
        elif acc:
            log.info(
                "done: test accuracy last %.2f, best %.2f (epoch %d), mean of last 10 %.2f",
                acc["last"],
                acc["best"],
                acc["best_epoch"],
                acc["mean_last10"],
            )
        return summary
    except BaseException as err:
        # Ctrl-C and write failures become one line that says what was kept; the run's log.txt gets it too.
        failure: BaseException | None = err
        if isinstance(err, KeyboardInterrupt) and folder is not None and not isinstance(err, RunInterrupted):
            failure = _interrupted(folder.path, training, getattr(err, "signum", None))
        elif isinstance(err, OSError):
            failure = rundir.write_error(err, folder.path if folder else None) or err
        refused = logging_to_run_dir and not started and _is_user_error(failure)
        if logging_to_run_dir and not refused:
            log_failure(failure)
        # A start that failed before training leaves no folder behind (the console showed why), not a lone log.txt.
        discard = folder is not None and folder.created and main and not training
        if discard:
            setup_logging(None)
        if failure is err:
            raise
        raise failure from None
    finally:
        if folder is not None:
            folder.close()
        if refused:  # a refusal puts an existing folder back as it was
            setup_logging(None)  # let go of log.txt first
            rundir.undo_start(target, fresh_folder, log_before)
        elif discard:
            rundir.discard_start(folder.path)
        dist_lib.cleanup(info_dist)


def log_failure(err: BaseException) -> None:
    """Put the error that ended a run into its log.txt (the console shows it already, once)."""
    if isinstance(err, KeyboardInterrupt):
        message, exc_info = f"{_stopped_by(err)}: {err}" if str(err) else _stopped_by(err), None
    elif _is_user_error(err):
        message, exc_info = f"error: {err}", None
    else:  # a bug or an environment problem: the traceback is what a report needs
        message, exc_info = f"failed: {type(err).__name__}: {err}", (type(err), err, err.__traceback__)
    record = logging.LogRecord(log.name, logging.ERROR, __file__, 0, message, None, exc_info)
    for handler in logging.getLogger().handlers:
        if getattr(handler, "_instancegm_file", False):
            handler.handle(record)


def wrap_distributed(peers: list[Peer], cfg: Config, info: dist_lib.DistInfo, device: torch.device) -> None:
    """DistributedDataParallel around each net and generative model (optionally with SyncBatchNorm).

    The classifier runs two forwards with gradient per step (MixMatch and the generative model's Gumbel
    sample) before the one backward; autograd sums a parameter's gradient before DDP's hook sees it, so one
    all-reduce per step covers both. Buffers are not broadcast at every forward: each rank keeps the running
    statistics of its own batches, and the trainer averages them at the end of every training phase
    (``distributed.average_buffers``), which is closer to one process's statistics than rank 0's alone.
    """
    if not info.enabled:
        if cfg.sync_bn:
            log.warning("--sync_bn has no effect in a single process")
        return
    if cfg.sync_bn and device.type != "cuda":
        raise ConfigError("--sync_bn needs CUDA devices (NCCL); drop it for CPU (gloo) runs")
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    for peer in peers:
        if cfg.sync_bn:
            peer.net = nn.SyncBatchNorm.convert_sync_batchnorm(peer.net)
        peer.ddp_net = DDP(peer.net, device_ids=ids, broadcast_buffers=False)
        if peer.vae is not None:
            if cfg.sync_bn:
                peer.vae = nn.SyncBatchNorm.convert_sync_batchnorm(peer.vae)
            peer.ddp_vae = DDP(peer.vae, device_ids=ids, broadcast_buffers=False)


# Errors a user can fix from the message alone: printed as one line, exit code 2, no traceback. Looked up
# among the modules already imported (an error class of a module never imported cannot have been raised), so
# that handling an exception never imports anything (a Ctrl-C may have stopped an import half-way).
_USER_ERRORS = {
    "training.config": ("ConfigError",),
    "training.checkpoint": ("CheckpointError",),
    "training.rundir": ("RunFolderError",),
    "training.trainer": ("TrainingDiverged",),
    "dataloaders.base": ("DataConfigError", "DatasetNotFoundError"),
    "models": ("PretrainedWeightsMissing",),
}


def _is_user_error(err: BaseException) -> bool:
    classes = [
        getattr(sys.modules[module], name)
        for module, names in _USER_ERRORS.items()
        if module in sys.modules
        for name in names
        if hasattr(sys.modules[module], name)
    ]
    return isinstance(err, tuple(classes))


def run(
    presets: Mapping[str, Config], default: str, argv: Sequence[str] | None = None, description: str = ""
) -> dict | None:
    """Entry-script main: parse the CLI over the presets and train; user errors exit with one line."""
    setup_logging()
    try:
        cfg = parse_cli(presets, default, argv, description, restore=saved_settings)
        return main_run(cfg)
    except KeyboardInterrupt as err:
        detail = str(err) if isinstance(err, RunInterrupted) else START_UP_INTERRUPTED
        print(f"{_stopped_by(err)}: {detail}", file=sys.stderr)
        signum = getattr(err, "signum", None)
        raise SystemExit(130 if signum is None else 128 + signum) from None
    except Exception as err:
        if not _is_user_error(err):
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
