"""``run(presets, default)``: what every entry script calls. Parse, set up the run folder, build, resume, fit."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from training import checkpoint as ckpt_lib
from training import dashboards
from training import distributed as dist_lib
from training.config import Config, ConfigError, parse_cli
from training.metrics import MetricSink, truncate_jsonl
from training.noise_rate import NoiseRateEstimator
from training.runtime import (
    atomic_write_text,
    autocast_factory,
    environment_info,
    resolve_device,
    restore_rng_state,
    seed_everything,
)
from training.trainer import CoTrainer, Peer, TrainingDiverged

log = logging.getLogger("training")


def apply_smoke(cfg: Config) -> Config:
    """A tiny wiring run: one warm-up and one co-training epoch on a few batches, narrow net, no wandb."""
    if not cfg.smoke:
        return cfg
    return cfg.replace(
        num_epochs=2,
        warm_up=1,
        train_subset=min(cfg.train_subset or 256, 256),
        batch_size=min(cfg.batch_size, 32),
        width=min(cfg.width, 16),
        wandb="off",
        num_batches=min(cfg.num_batches, 4),
        num_workers=0,
        log_interval=5,
    ).validate()


class _StdoutHandler(logging.StreamHandler):
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
        handler = _StdoutHandler()
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


def prepare_run_dir(cfg: Config, create: bool = True) -> tuple[Path, Path | None]:
    """The run folder, and the checkpoint to resume from (None: fresh start). Refuses to clobber a run."""
    run_dir = Path(cfg.output_dir) / (cfg.run_name or cfg.default_run_name())
    existing = run_dir / ckpt_lib.FILENAME
    if cfg.resume == "auto":
        resume = existing if existing.exists() else None
    elif cfg.resume:
        resume = Path(cfg.resume)
        if not resume.exists():
            raise ckpt_lib.CheckpointError(f"--resume {cfg.resume}: no such file")
    else:
        resume = None
        if existing.exists():
            raise ConfigError(
                f"{run_dir} already holds a run (checkpoint.pt); continue it with --resume auto, "
                "or start another with --run_name NAME"
            )
    if create:
        run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, resume


def main_run(cfg: Config) -> dict:
    """Everything after parsing: usable from Python (tests, benchmarks) with a Config.

    Under torchrun every process runs this; rank 0 alone writes the run folder's files.
    """
    from dataloaders import build_data

    cfg = apply_smoke(cfg.validate())
    info_dist = dist_lib.init_distributed(cfg.device)
    main = info_dist.is_main
    try:
        run_dir, resume_path = prepare_run_dir(cfg, create=main)
        setup_logging(run_dir if main else None, quiet=not main)
        device = dist_lib.device_for(info_dist, resolve_device(cfg.device))
        # Each process its own stream (Beta draws, Gumbel noise, ...); DDP makes the initial weights equal.
        seed_everything(cfg.seed + info_dist.rank, cfg.deterministic)
        autocast = autocast_factory(cfg.amp, device)
        log.info(
            "run folder %s | device %s | method %s | processes %d", run_dir, device, cfg.method, info_dist.world_size
        )

        # Rank 0 first: it may generate and cache the noisy labels, which the others then read.
        if not main:
            dist_lib.barrier(info_dist)
        data = build_data(cfg, device)
        if main:
            dist_lib.barrier(info_dist)
        data.set_distributed(info_dist.rank, info_dist.world_size, cfg.seed)
        peers = build_peers(cfg, device)
        start_epoch, history, best, vae_pool = 0, [], {}, None
        if resume_path is not None:
            state = ckpt_lib.load(resume_path)
            ckpt_lib.check_compatible(state["config"], cfg.to_dict(), resume_path)
            for peer in peers:
                peer.load_state_dict(state["peers"][peer.name])
            data.load_state_dict(state["data"])
            if info_dist.enabled:  # per-process streams cannot be restored from rank 0's: reseed them apart
                seed_everything(cfg.seed + info_dist.rank + 7919 * (state["epoch"] + 1), cfg.deterministic)
            else:
                restore_rng_state(state["rng"])
            start_epoch, history, best, vae_pool = (
                state["epoch"] + 1,
                state["history"],
                state["best"],
                state["vae_pool"],
            )
            if main:
                truncate_jsonl(run_dir / "metrics.jsonl", state["epoch"])
            log.info("resumed from %s at epoch %d", resume_path, start_epoch)
        wrap_distributed(peers, cfg, info_dist, device)

        info = {
            "config": cfg.to_dict(),
            "noise": getattr(data, "noise_info", {}),
            "environment": environment_info(device) | {"processes": info_dist.world_size},
            "num_train": data.num_train,
        }
        if main:
            atomic_write_text(run_dir / "config.json", json.dumps(info, indent=2, default=str))
        sink = MetricSink(run_dir, cfg.wandb if main else "off", cfg.wandb_project, run_dir.name, info)
        if start_epoch == 0 and main:
            dashboards.log_inputs(sink, data)
        trainer = CoTrainer(
            cfg, data, peers, device, autocast, sink, run_dir, start_epoch, history, best, dist_info=info_dist
        )
        trainer._vae_pool = vae_pool
        try:
            summary = trainer.fit()
        finally:
            sink.close()
        summary["run_dir"] = str(run_dir)
        if main:
            atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
        acc = summary.get("test/acc", {})
        if acc:
            log.info(
                "done: test accuracy last %.2f, best %.2f (epoch %d), mean of last 10 %.2f",
                acc["last"],
                acc["best"],
                acc["best_epoch"] + 1,
                acc["mean_last10"],
            )
        return summary
    finally:
        dist_lib.cleanup(info_dist)


def wrap_distributed(peers: list[Peer], cfg: Config, info: dist_lib.DistInfo, device: torch.device) -> None:
    """DistributedDataParallel around each net and generative model (optionally with SyncBatchNorm).

    The classifier runs two forwards with gradient per step (MixMatch and the generative model's Gumbel
    sample) before the one backward; autograd sums a parameter's gradient before DDP's hook sees it, so one
    all-reduce per step covers both.
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
        peer.ddp_net = DDP(peer.net, device_ids=ids)
        if peer.vae is not None:
            if cfg.sync_bn:
                peer.vae = nn.SyncBatchNorm.convert_sync_batchnorm(peer.vae)
            peer.ddp_vae = DDP(peer.vae, device_ids=ids)


# Errors a user can fix from the message alone: printed as one line, exit code 2, no traceback.
def _user_errors() -> tuple[type[BaseException], ...]:
    from dataloaders.base import DataConfigError, DatasetNotFoundError

    errors: list[type[BaseException]] = [
        ConfigError,
        DataConfigError,
        ckpt_lib.CheckpointError,
        DatasetNotFoundError,
        TrainingDiverged,
    ]
    try:
        from models import PretrainedWeightsMissing

        errors.append(PretrainedWeightsMissing)
    except ImportError:
        pass
    return tuple(errors)


def run(
    presets: Mapping[str, Config], default: str, argv: Sequence[str] | None = None, description: str = ""
) -> dict | None:
    """Entry-script main: parse the CLI over the presets and train; user errors exit with one line."""
    setup_logging()
    try:
        cfg = parse_cli(presets, default, argv, description)
        return main_run(cfg)
    except _user_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(
            "interrupted: the last completed epoch is in checkpoint.pt; continue with --resume auto",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
