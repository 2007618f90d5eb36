"""Throughput of each phase of an InstanceGM epoch, against the original's data access and the compute floor.

Phases (docs/design.md: One run; Where the compute goes), each
timed through the engine's own functions on a synthetic dataset of the chosen shape
(default: CIFAR-10, 50,000 + 10,000 images of 32x32x3 uint8, random pixels and labels):

* ``warmup step``: a 2B batch from ``warmup_loader``, forward, ``dividemix.warmup_loss``, SGD step;
* ``eval-train``: ``dividemix.per_sample_losses`` over ``eval_train_loader`` batches; ``gmm``: min-max
  normalisation + ``dividemix.gmm_clean_probability`` on a full-size loss vector;
* ``dm step``: one DivideMix step (labeled + unlabeled batches, ``dividemix.step``, backward, SGD);
* ``igm step``: the InstanceGM step: the same plus ``generative.step`` on a fresh 2B batch from
  ``vae_batches`` and one joint backward (SGD + Adam). Its generative part is ``igm step - dm step``;
  ``igm breakdown`` times the parts of one step with a device sync between them;
* ``test``: the ensemble test pass (both nets, summed logits).

Data paths, measured side by side in one process: ``device`` (the default: the uint8 set on the device,
batched augmentation), ``pil`` (this implementation's per-sample PIL loaders, persistent random VAE batches)
and ``naive`` (the original's pattern, ``instanceGM.py``'s ``warmup``/``eval_train``/``train``/``test``:
per-sample PIL transforms in 5-worker DataLoaders for every loader, a NEW shuffled 5-worker DataLoader iterator
per step for the VAE batch, first batch only (README Differences #19); evaluation in batches of B, with eval_train's
per-sample Python loop writing each loss into a host vector and test's host read of the count per batch; the
warm-up loss read on the host every step). The ``floor`` is the same step's network passes alone: in-memory
tensors, no data loading, no augmentation, no targets or metrics; the gap of a step to its floor is the engine's
overhead.

``--options`` times the floor of the InstanceGM step under speed options (channels_last, bf16 autocast,
torch.compile, oneDNN off), round-robin, and measures their accuracy cost: the loss and gradients of one step
from the same weights and inputs, compared with fp32. ``--eval_batch_sizes`` times the divide's forward pass at
several batch sizes (images/s, CPU time and minor page faults per image).

    python benchmarks/throughput.py --device cpu --paths device naive     # the paper's width 64, CIFAR-10 shape
    python benchmarks/throughput.py --device cuda --amp bf16 --channels_last
    python benchmarks/throughput.py --paths device --options fp32 channels_last bf16 compile
    python benchmarks/throughput.py --quick                                # seconds (tests/test_benchmarks.py)

Prints a markdown table; writes JSON (default ``benchmarks/results/throughput_<device>_w<width>_b<batch>.json``).
Times are medians over ``--reps`` repetitions of ``--steps`` steps after ``--warmup_iters`` untimed ones,
with the interquartile range and min-max; peak memory is ``torch.cuda.max_memory_allocated`` on CUDA and the
main process's peak RSS (VmHWM, reset per phase) on the CPU.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from dataloaders.base import InMemoryDataModule  # noqa: E402
from dataloaders.transforms import AugSpec, pil_test_transform, pil_train_transform  # noqa: E402
from models import memory_format  # noqa: E402
from models.preact_resnet import preact_resnet18  # noqa: E402
from training import Config, dividemix, generative  # noqa: E402
from training.config import HelpFormatter  # noqa: E402
from training.launch import build_peers  # noqa: E402
from training.metrics import RunningMeans  # noqa: E402
from training.runtime import autocast_factory, eval_batch_size, resolve_device  # noqa: E402
from training.trainer import joint_step  # noqa: E402

RESULTS_DIR = ROOT / "benchmarks" / "results"
PATHS = ("device", "pil", "naive")
OPTIONS = ("fp32", "channels_last", "bf16", "bf16+channels_last", "fp16", "compile", "no_onednn")
ORIGINAL_WORKERS = 5  # num_workers of every DataLoader in the original (DivideMix's dataloader_cifar.py)


# ================================================================ measurement ==================================
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _vm_hwm_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory of the code inside the block, in MiB.

    CUDA: ``max_memory_allocated`` after a reset. CPU: the process's peak RSS (VmHWM) after resetting it
    through ``/proc/self/clear_refs``; where that is not possible, the process-lifetime peak (``ru_maxrss``)
    and ``kind`` says so. The CPU figure includes everything resident (dataset, models), not only the phase.
    """

    def __init__(self, device: torch.device):
        self.device, self.mb, self.kind = device, None, ""

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "cuda max_memory_allocated"
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self.kind = "peak RSS (VmHWM, reset per phase)"
            except OSError:
                self.kind = "peak RSS since start (ru_maxrss)"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            hwm = _vm_hwm_mb() if "VmHWM" in self.kind else None
            self.mb = hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def summarise_times(times: list[float]) -> dict[str, float]:
    """Median, quartiles and range of per-step times (seconds -> milliseconds)."""
    ms = np.asarray(times) * 1e3
    q1, med, q3 = np.percentile(ms, [25, 50, 75])
    return {
        "ms_median": float(med),
        "ms_q1": float(q1),
        "ms_q3": float(q3),
        "ms_min": float(ms.min()),
        "ms_max": float(ms.max()),
        "reps": len(times),
    }


def time_steps(fn: Callable[[], Any], device: torch.device, *, warmup: int, reps: int, steps: int) -> dict:
    """Per-step time of ``fn``: ``warmup`` untimed calls, then ``reps`` timed blocks of ``steps`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    with PeakMemory(device) as mem:
        for _ in range(reps):
            sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            sync(device)
            times.append((time.perf_counter() - t0) / steps)
    return summarise_times(times) | {"steps_per_rep": steps, "peak_mem_mb": mem.mb, "mem_kind": mem.kind}


# ================================================================ data =========================================
def synthetic_arrays(num_train: int, num_test: int, size: int, num_classes: int, seed: int = 0) -> dict:
    """Random uint8 images (N, H, W, 3) and labels in the shape of a CIFAR-like dataset."""
    rs = np.random.RandomState(seed)
    return dict(
        train_images=rs.randint(0, 256, size=(num_train, size, size, 3), dtype=np.uint8),
        noisy_labels=rs.randint(0, num_classes, size=num_train),
        test_images=rs.randint(0, 256, size=(num_test, size, size, 3), dtype=np.uint8),
        test_labels=rs.randint(0, num_classes, size=num_test),
    )


class OriginalStyleDataset(Dataset):
    """What the original ``cifar_dataset.__getitem__`` does per sample: a PIL image through unseeded
    torchvision transforms (one or two views), returned with the label (and clean probability, index)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, transform, *, views: int = 1,
                 weights: np.ndarray | None = None, with_index: bool = True):  # fmt: skip
        self.images, self.labels, self.indices, self.transform = images, labels, indices, transform
        self.views, self.weights, self.with_index = views, weights, with_index

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        idx = int(self.indices[i])
        img = Image.fromarray(self.images[idx])
        out = [self.transform(img) for _ in range(self.views)]
        out.append(int(self.labels[idx]))
        if self.weights is not None:
            out.append(float(self.weights[i]))
        if self.with_index:
            out.append(idx)
        return tuple(out)


def _to_device(loader: DataLoader, device: torch.device) -> Iterator[tuple]:
    """Batches of ``loader`` with every tensor but the trailing index moved to ``device``."""
    for *tensors, last in loader:
        yield (*(t.to(device, non_blocking=True) for t in tensors), last)


class NaiveData:
    """The original's loaders (README Datasets; Differences #19): a new per-sample PIL DataLoader per mode, 5 workers,
    and for the VAE a NEW shuffled DataLoader iterator on every step of which only the first batch is used."""

    def __init__(self, arrays: dict, device: torch.device, workers: int = ORIGINAL_WORKERS):
        self.a, self.device, self.workers = arrays, device, workers
        size = arrays["train_images"].shape[1]
        self.train_tf, self.test_tf = pil_train_transform(size, AugSpec()), pil_test_transform()
        self.num_train = len(arrays["noisy_labels"])

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=self.workers)

    def _train_set(self, indices, views=1, weights=None, transform=None) -> OriginalStyleDataset:
        a = self.a
        return OriginalStyleDataset(
            a["train_images"], a["noisy_labels"], indices, transform or self.train_tf, views=views, weights=weights
        )

    def warmup_loader(self, batch_size: int):
        return _to_device(self._loader(self._train_set(np.arange(self.num_train)), batch_size, True), self.device)

    def eval_train_loader(self, batch_size: int):
        ds = self._train_set(np.arange(self.num_train), transform=self.test_tf)
        return _to_device(self._loader(ds, batch_size, False), self.device)

    def labeled_loader(self, indices, prob, batch_size: int):
        ds = self._train_set(np.asarray(indices), views=2, weights=np.asarray(prob, dtype=np.float32))
        return _to_device(self._loader(ds, batch_size, True), self.device)

    def unlabeled_loader(self, indices, batch_size: int):
        return _to_device(self._loader(self._train_set(np.asarray(indices), views=2), batch_size, True), self.device)

    def test_loader(self, batch_size: int):
        a = self.a
        ds = OriginalStyleDataset(
            a["test_images"], a["test_labels"], np.arange(len(a["test_labels"])), self.test_tf, with_index=False
        )
        loader = self._loader(ds, batch_size, False)
        return ((x.to(self.device), y.to(self.device)) for x, y in loader)

    def vae_batches(self, batch_size: int) -> Iterator[tuple]:
        dataset = self._train_set(np.arange(self.num_train))
        while True:
            # NOTE(original): train_vae builds an iterator over a 5-worker shuffled loader and keeps one batch.
            x, y, idx = next(iter(self._loader(dataset, batch_size, True)))
            yield x.to(self.device), y.to(self.device), idx


@torch.no_grad()
def original_eval_train(net: torch.nn.Module, batches, num_train: int) -> torch.Tensor:
    """The original ``eval_train`` loop: per-sample losses written one by one (a Python loop over the batch,
    one element copy each) into a host vector of the training-set size."""
    net.eval()
    losses = torch.zeros(num_train)
    for x, y, index in batches:
        loss = F.cross_entropy(net(x), y, reduction="none")
        for b in range(x.size(0)):
            losses[index[b]] = loss[b]
    return losses


@torch.no_grad()
def original_test(nets: list[torch.nn.Module], batches) -> float:
    """The original ``test`` loop: both nets, summed logits, a host read (``.item()``) of the count per batch."""
    for net in nets:
        net.eval()
    correct = total = 0
    for x, y in batches:
        predicted = sum(net(x) for net in nets).argmax(1)
        total += y.size(0)
        correct += predicted.eq(y).cpu().sum().item()
    return 100.0 * correct / max(total, 1)


def build_data(path: str, arrays: dict, device: torch.device, args: argparse.Namespace):
    """The data side of a path: the engine's ``InMemoryDataModule`` (device / pil) or the original's loaders."""
    if path == "naive":
        return NaiveData(arrays, device, args.naive_workers)
    return InMemoryDataModule(
        "synthetic",
        arrays["train_images"],
        arrays["noisy_labels"],
        arrays["test_images"],
        arrays["test_labels"],
        int(arrays["noisy_labels"].max()) + 1,
        pipeline=path,
        device=device,
        num_workers=args.workers,
        seed=0,
    )


def endless(make: Callable[[], Any]) -> Iterator:
    """Batches of ``make()`` (a loader), starting a new pass when one ends (as epochs do)."""
    while True:
        yield from make()


# ================================================================ the engine's step ============================
@dataclass
class Bench:
    """Everything a timed phase needs: config, device, precision, the two peers."""

    cfg: Config
    device: torch.device
    autocast: Callable
    peers: list
    scaler: torch.amp.GradScaler

    @classmethod
    def build(cls, cfg: Config, device: torch.device, compile_nets: bool = False) -> Bench:
        torch.manual_seed(cfg.seed)
        peers = build_peers(cfg, device)
        if compile_nets:
            for peer in peers:
                peer.net = torch.compile(peer.net)
        scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
        return cls(cfg, device, autocast_factory(cfg.amp, device), peers, scaler)

    def prep(self, x: torch.Tensor) -> torch.Tensor:
        """As ``CoTrainer._prep``: to the device, channels_last if asked."""
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def optimize(self, loss: torch.Tensor, *opts) -> None:
        """As ``CoTrainer._optimize``: one (scaled) backward, then each optimiser's step."""
        joint_step(self.scaler, loss, *opts)

    def vae_weights(self) -> dict:
        return generative.loss_weights(self.cfg)

    # ---------------- steps as CoTrainer runs them ----------------
    def warmup_step(self, batches: Iterator, meters: RunningMeans, host_read: bool = False) -> None:
        """``host_read``: read the loss on the host every step (the original prints it each iteration)."""
        peer = self.peers[0]
        peer.net.train()
        x, y, _ = next(batches)
        x = self.prep(x)
        with self.autocast():
            logits = peer.net(x)
        loss, ce = dividemix.warmup_loss(logits, y, self.cfg.warmup_penalty)
        self.optimize(loss, peer.opt)
        if host_read:
            loss.item()
        else:
            meters.update(loss=loss, ce=ce)

    def train_step(self, labeled: Iterator, unlabeled: Iterator, vae_batches: Iterator | None,
                   meters: RunningMeans, marks: list | None = None) -> None:  # fmt: skip
        """One co-training step of net1 (peer net2), as ``CoTrainer.train_epoch``'s loop body.

        ``vae_batches`` None: DivideMix only. ``marks``: append (name, time) after each part, with a device
        sync (the breakdown run only).
        """
        cfg, (peer, other) = self.cfg, self.peers
        peer.net.train()  # as at the start of CoTrainer.train_epoch (other phases are interleaved with this one)
        other.net.eval()
        if vae_batches is not None:
            peer.vae.train()

        def mark(name: str) -> None:
            if marks is not None:
                sync(self.device)
                marks.append((name, time.perf_counter()))

        mark("start")
        x1, x2, y, w, _ = next(labeled)
        u1, u2, _uy, _ = next(unlabeled)
        x1, x2, u1, u2 = self.prep(x1), self.prep(x2), self.prep(u1), self.prep(u2)
        mark("data: labeled + unlabeled batches")
        with self.autocast():
            dm = dividemix.step(
                peer.net, other.net, x1, x2, y, w, u1, u2,
                num_classes=cfg.num_classes, T=cfg.T, alpha=cfg.alpha, lambda_u=cfg.lambda_u,
                mix_unlabeled=cfg.mix_unlabeled,
            )  # fmt: skip
        loss = dm.loss
        logs = {"dm/lx": dm.lx, "dm/lu": dm.lu, "dm/penalty": dm.penalty}
        mark("DivideMix forward (targets, MixMatch, loss)")
        if vae_batches is not None:
            xv, yv, _ = next(vae_batches)
            xv = self.prep(xv)
            mark("data: generative batch")
            gen = generative.step(
                peer.vae, peer.net, xv, yv,
                num_classes=cfg.num_classes, weights=self.vae_weights(),
                encoder_on_noisy_label=cfg.encoder_on_noisy_label, autocast=self.autocast,
            )  # fmt: skip
            loss = loss + gen.loss
            logs.update({"vae/recon": gen.recon, "vae/noisy_label_ce": gen.noisy_label_ce, "vae/kl_z": gen.kl_z})
            mark("generative forward (classifier + VAE, objective)")
        self.optimize(loss, peer.opt, peer.opt_vae if vae_batches is not None else None)
        mark("joint backward + SGD/Adam updates")
        meters.update(loss=loss, **logs)
        mark("metrics")

    def test_pass(self, batches: Iterator, count: int) -> None:
        """``count`` batches of the ensemble test pass, as ``CoTrainer._accuracy``."""
        for peer in self.peers:
            peer.net.eval()
        correct = torch.zeros(len(self.peers) + 1, device=self.device)
        with torch.no_grad():
            for x, y in itertools.islice(batches, count):
                x = self.prep(x)
                with self.autocast():
                    logits = [peer.net(x).float() for peer in self.peers]
                preds = [sum(logits).argmax(1)] + [lg.argmax(1) for lg in logits]
                correct += torch.stack([(p == y).sum() for p in preds]).float()
        correct.cpu()  # the host reads the counts once per pass

    # ---------------- the floor: the same network passes on in-memory tensors ----------------
    def floor_tensors(self, seed: int = 0) -> dict[str, torch.Tensor]:
        cfg, B, s = self.cfg, self.cfg.batch_size, 32
        g = torch.Generator().manual_seed(seed)

        def images(n: int) -> torch.Tensor:
            return self.prep(torch.rand(n, 3, s, s, generator=g))

        return {
            "x1": images(B), "x2": images(B), "u1": images(B), "u2": images(B), "mixed": images(4 * B),
            "mixed_target": torch.softmax(torch.randn(4 * B, cfg.num_classes, generator=g), 1).to(self.device),
            "xv": images(2 * B), "yv": torch.randint(0, cfg.num_classes, (2 * B,), generator=g).to(self.device),
            "x_warm": images(2 * B), "y_warm": torch.randint(0, cfg.num_classes, (2 * B,), generator=g).to(self.device),
        }  # fmt: skip

    def floor_loss(self, t: dict[str, torch.Tensor], with_vae: bool) -> torch.Tensor:
        """The network work of one step: 6B no-grad forwards (co-guessing, refinement), the 4B MixMatch
        forward, and (InstanceGM) the classifier + VAE forward on 2B images; losses kept minimal."""
        (peer, other), cfg = self.peers, self.cfg
        peer.net.train()
        other.net.eval()
        with self.autocast():
            with torch.no_grad():
                for x in (t["x1"], t["x2"], t["u1"], t["u2"]):
                    peer.net(x)
                for x in (t["u1"], t["u2"]):
                    other.net(x)
            logits = peer.net(t["mixed"]).float()
            loss = -(F.log_softmax(logits, 1) * t["mixed_target"]).sum(1).mean()
            if with_vae:
                out = peer.vae(t["xv"], peer.net)
        if with_vae:
            gen = generative.vae_objective(
                t["xv"], out.x_hat, out.noisy_logits, t["yv"], out.mu, out.log_var, out.y_hat,
                num_classes=cfg.num_classes, **self.vae_weights(),
            )  # fmt: skip
            loss = loss + gen.loss
        return loss

    def floor_step(self, t: dict[str, torch.Tensor], with_vae: bool) -> None:
        peer = self.peers[0]
        loss = self.floor_loss(t, with_vae)
        self.optimize(loss, peer.opt, peer.opt_vae if with_vae else None)

    def floor_warmup_step(self, t: dict[str, torch.Tensor]) -> None:
        peer = self.peers[0]
        peer.net.train()
        with self.autocast():
            logits = peer.net(t["x_warm"])
        self.optimize(F.cross_entropy(logits.float(), t["y_warm"]), peer.opt)


# ================================================================ phases =======================================
STEP_PHASES = ("warmup step", "dm step", "igm step")
PASS_PHASES = ("eval-train pass", "test pass")


class PathRunner:
    """The phases of one data path (or of the floor) as zero-argument calls; loaders and iterators persist
    across calls, as they do across the steps of an epoch."""

    def __init__(self, bench: Bench, path: str, arrays: dict, args: argparse.Namespace):
        self.bench, self.path, self.args = bench, path, args
        B = bench.cfg.batch_size
        self.n_train, self.n_test = len(arrays["noisy_labels"]), len(arrays["test_labels"])
        self.data = None if path == "floor" else build_data(path, arrays, bench.device, args)
        self.tensors = bench.floor_tensors() if path == "floor" else None
        # The original evaluates in batches of B; the engine in the trainer's batch.
        self.eval_batch = B if path == "naive" else eval_batch_size(bench.cfg, bench.device)
        self.meters = RunningMeans()
        self._iters: dict[str, Iterator] = {}
        # A fixed division: labeled_fraction of the samples "clean" with probabilities in [0.5, 1).
        perm = torch.randperm(self.n_train, generator=torch.Generator().manual_seed(0))
        self.n_labeled = int(args.labeled_fraction * self.n_train)
        self.labeled_idx, self.unlabeled_idx = perm[: self.n_labeled], perm[self.n_labeled :]
        self.labeled_prob = torch.empty(self.n_labeled).uniform_(0.5, 1.0, generator=torch.Generator().manual_seed(1))

    @property
    def phases(self) -> tuple[str, ...]:
        return STEP_PHASES if self.path == "floor" else STEP_PHASES + PASS_PHASES

    def _iter(self, name: str, make: Callable[[], Iterator]) -> Iterator:
        if name not in self._iters:
            self._iters[name] = make()
        return self._iters[name]

    def call(self, phase: str) -> Callable[[], None]:
        b, B, data, args = self.bench, self.bench.cfg.batch_size, self.data, self.args
        if self.path == "floor":
            t = self.tensors
            return {
                "warmup step": lambda: b.floor_warmup_step(t),
                "dm step": lambda: b.floor_step(t, with_vae=False),
                "igm step": lambda: b.floor_step(t, with_vae=True),
            }[phase]
        if phase == "warmup step":
            warm = self._iter("warmup", lambda: endless(lambda: data.warmup_loader(2 * B)))
            return lambda: b.warmup_step(warm, self.meters, host_read=self.path == "naive")
        if phase in ("dm step", "igm step"):
            labeled = self._iter(
                "labeled", lambda: endless(lambda: data.labeled_loader(self.labeled_idx, self.labeled_prob, B))
            )
            unlabeled = self._iter("unlabeled", lambda: endless(lambda: data.unlabeled_loader(self.unlabeled_idx, B)))
            vae = self._iter("vae", lambda: data.vae_batches(2 * B)) if phase == "igm step" else None
            return lambda marks=None: b.train_step(labeled, unlabeled, vae, self.meters, marks)
        if phase == "eval-train pass":
            evals = self._iter("eval", lambda: endless(lambda: data.eval_train_loader(self.eval_batch)))
            net = b.peers[0].net
            if self.path == "naive":
                return lambda: original_eval_train(net, itertools.islice(evals, args.eval_batches), self.n_train)
            return lambda: dividemix.per_sample_losses(
                net, itertools.islice(evals, args.eval_batches), b.autocast, prep=b.prep
            )
        tests = self._iter("test", lambda: endless(lambda: data.test_loader(self.eval_batch)))
        if self.path == "naive":
            nets = [peer.net for peer in b.peers]
            return lambda: original_test(nets, itertools.islice(tests, args.eval_batches))
        return lambda: b.test_pass(tests, args.eval_batches)

    def images(self, phase: str) -> int:
        B = self.bench.cfg.batch_size
        return self.args.eval_batches * self.eval_batch if phase in PASS_PHASES else 2 * B

    def calls_per_epoch(self, phase: str) -> float:
        """How many such calls one epoch of that kind makes (two nets; the split of labeled_fraction)."""
        B = self.bench.cfg.batch_size
        return {
            "warmup step": self.n_train / B,  # 2 nets x N / 2B
            "dm step": 2 * self.n_labeled / B,
            "igm step": 2 * self.n_labeled / B,
            "eval-train pass": 2 * self.n_train / self.images(phase),
            "test pass": self.n_test / self.images(phase),
        }[phase]

    def close(self) -> None:
        """Stop the loaders' worker processes."""
        for it in self._iters.values():
            it.close()
        self._iters.clear()


def time_interleaved(calls: dict[Any, Callable[[], Any]], device: torch.device, *, warmup: int, reps: int,
                     steps: int) -> dict[Any, dict]:  # fmt: skip
    """Per-step times of several calls, measured round-robin (path A block, path B block, ..., repeated) so
    that load changing on a shared machine hits every path alike; ``warmup`` untimed calls of each first."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times: dict[Any, list[float]] = {name: [] for name in calls}
    peaks: dict[Any, float] = {}
    kinds: dict[Any, str] = {}
    for _ in range(reps):
        for name, fn in calls.items():
            with PeakMemory(device) as mem:
                sync(device)
                t0 = time.perf_counter()
                for _ in range(steps):
                    fn()
                sync(device)
            times[name].append((time.perf_counter() - t0) / steps)
            peaks[name], kinds[name] = max(peaks.get(name, 0.0), mem.mb or 0.0), mem.kind
    return {
        name: summarise_times(times[name])
        | {"steps_per_rep": steps, "peak_mem_mb": peaks[name], "mem_kind": kinds[name]}
        for name in calls
    }


def measure_phases(bench: Bench, arrays: dict, args: argparse.Namespace) -> list[dict]:
    """Every phase of every data path and of the floor, interleaved across paths; one row per (path, phase)."""
    paths = (["floor"] if not args.no_floor else []) + list(args.paths)
    runners = {path: PathRunner(bench, path, arrays, args) for path in paths}
    rows: list[dict] = []
    try:
        # The DivideMix and InstanceGM steps share one round-robin: their difference is the generative part.
        for group in (("warmup step",), ("dm step", "igm step"), ("eval-train pass",), ("test pass",)):
            calls = {(path, ph): r.call(ph) for ph in group for path, r in runners.items() if ph in r.phases}
            if not calls:
                continue
            is_pass = group[0] in PASS_PHASES
            stats = time_interleaved(
                calls,
                bench.device,
                warmup=1 if is_pass else args.warmup_iters,
                reps=args.reps,
                steps=1 if is_pass else args.steps,
            )
            for (path, phase), s in stats.items():
                r = runners[path]
                rows.append(
                    {"path": path, "phase": phase, **s, "images_per_step": r.images(phase),
                     "images_per_s": r.images(phase) / (s["ms_median"] / 1e3),
                     "epoch_s": r.calls_per_epoch(phase) * s["ms_median"] / 1e3}
                )  # fmt: skip
            print(f"[throughput] {', '.join(group)}: done", file=sys.stderr, flush=True)
        if not args.no_breakdown:
            rows += measure_breakdown(bench, runners, args)
    finally:
        for r in runners.values():
            r.close()
    rows += measure_gmm(bench, len(arrays["noisy_labels"]), args)
    # The generative part of a step: InstanceGM step minus DivideMix step, per path.
    get = {(r["path"], r["phase"]): r for r in rows}
    for path in paths:
        igm, dm = get.get((path, "igm step")), get.get((path, "dm step"))
        if igm and dm:
            ms = igm["ms_median"] - dm["ms_median"]
            epoch_units = igm["epoch_s"] / (igm["ms_median"] / 1e3)
            rows.append(
                {"path": path, "phase": "generative part", "ms_median": ms, "images_per_step": igm["images_per_step"],
                 "epoch_s": epoch_units * ms / 1e3, "note": "igm step - dm step"}
            )  # fmt: skip
    order = {p: i for i, p in enumerate(paths + ["any"])}
    names = STEP_PHASES + ("generative part", "igm step breakdown") + PASS_PHASES + ("gmm fit",)
    phase_order = {p: i for i, p in enumerate(names)}
    return sorted(rows, key=lambda r: (order[r["path"]], phase_order[r["phase"]]))


def measure_breakdown(bench: Bench, runners: dict[str, PathRunner], args: argparse.Namespace) -> list[dict]:
    """The parts of the InstanceGM step, with a device sync between them (round-robin over the paths)."""
    calls = {path: r.call("igm step") for path, r in runners.items() if path != "floor"}
    parts: dict[str, dict[str, list[float]]] = {path: {} for path in calls}
    for _ in range(args.reps * args.steps):
        for path, fn in calls.items():
            marks: list = []
            fn(marks)
            for (_, t0), (name, t1) in zip(marks, marks[1:]):
                parts[path].setdefault(name, []).append(t1 - t0)
    return [
        {"path": path, "phase": "igm step breakdown",
         "breakdown_ms": {name: float(np.median(v) * 1e3) for name, v in p.items()}}
        for path, p in parts.items()
    ]  # fmt: skip


def measure_gmm(bench: Bench, n_train: int, args: argparse.Namespace) -> list[dict]:
    """Min-max normalisation + the 2-component GMM on N per-sample losses (host-side; the same on every path)."""
    cfg = bench.cfg
    rng = np.random.RandomState(0)  # a clean (low-loss) and a noisy (high-loss) mode, as the GMM sees them
    half = n_train // 2
    losses = torch.from_numpy(np.concatenate([rng.gamma(2, 0.1, half), rng.gamma(8, 0.3, n_train - half)]))

    def gmm() -> None:
        dividemix.gmm_clean_probability(dividemix.normalise_losses(losses), max_iter=cfg.gmm_max_iter,
                                        tol=cfg.gmm_tol, reg_covar=cfg.gmm_reg_covar)  # fmt: skip

    s = time_steps(gmm, torch.device("cpu"), warmup=1, reps=args.reps, steps=1)
    return [{"path": "any", "phase": "gmm fit", **s, "images_per_step": n_train,
             "images_per_s": n_train / (s["ms_median"] / 1e3), "epoch_s": 2 * s["ms_median"] / 1e3}]  # fmt: skip


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure_eval_batches(bench: Bench, arrays: dict, sizes: list[int], args: argparse.Namespace) -> list[dict]:
    """The divide's forward pass (``per_sample_losses`` on the device pipeline) at several batch sizes, timed
    round-robin over the same images: images/s, process CPU time and minor page faults per image."""
    data = build_data("device", arrays, bench.device, args)
    net = bench.peers[0].net
    images = max(sizes) * args.eval_batches
    per: dict[int, dict[str, list[float]]] = {n: {"wall": [], "cpu": [], "faults": []} for n in sizes}

    def run(n: int) -> None:
        batches = itertools.islice(data.eval_train_loader(n), images // n)
        dividemix.per_sample_losses(net, batches, bench.autocast, prep=bench.prep)

    for n in sizes:
        run(n)  # untimed: oneDNN primitives and allocator warm-up
    for _ in range(args.reps):
        for n in sizes:
            sync(bench.device)
            f0, c0, t0 = _minor_faults(), time.process_time(), time.perf_counter()
            run(n)
            sync(bench.device)
            per[n]["wall"].append(time.perf_counter() - t0)
            per[n]["cpu"].append(time.process_time() - c0)
            per[n]["faults"].append(_minor_faults() - f0)
    return [
        {"eval_batch": n, "images": images, "images_per_s": images / float(np.median(v["wall"])),
         "cpu_ms_per_image": 1e3 * float(np.median(v["cpu"])) / images,
         "minor_faults_per_image": float(np.median(v["faults"])) / images, "reps": args.reps}
        for n, v in per.items()
    ]  # fmt: skip


# Self CPU time of the profiled step, by layer type (PyTorch op names, CPU and CUDA kernels alike).
OP_GROUPS = {
    "convolution forward": ("aten::mkldnn_convolution", "aten::_convolution", "aten::convolution",
                            "aten::cudnn_convolution", "aten::_slow_conv2d_forward", "aten::slow_conv_transpose2d"),
    "convolution backward": ("aten::convolution_backward", "aten::mkldnn_convolution_backward",
                             "aten::_slow_conv2d_backward", "aten::cudnn_convolution_backward"),
    "batch norm": ("aten::native_batch_norm", "aten::_batch_norm_impl_index", "aten::native_batch_norm_backward",
                   "aten::batch_norm"),
    "relu": ("aten::relu", "aten::relu_", "aten::clamp_min", "aten::clamp_min_", "aten::threshold_backward"),
    "linear": ("aten::addmm", "aten::mm", "aten::bmm", "aten::linear"),
    "elementwise": ("aten::add", "aten::add_", "aten::mul", "aten::mul_", "aten::sub", "aten::div", "aten::div_",
                    "aten::log", "aten::exp", "aten::pow", "aten::sigmoid", "aten::softmax", "aten::_softmax"),
    "optimiser": ("aten::_foreach_add_", "aten::_foreach_mul_", "aten::_foreach_addcmul_",
                  "aten::_foreach_addcdiv_", "aten::_foreach_sqrt", "aten::_foreach_div_", "aten::_foreach_lerp_",
                  "aten::_foreach_add", "aten::_foreach_mul"),
    "memory (alloc, copy, layout)": ("aten::empty", "aten::empty_strided", "aten::copy_", "aten::clone",
                                     "aten::zeros", "aten::zero_", "aten::fill_", "aten::contiguous",
                                     "aten::to_mkldnn"),
}  # fmt: skip


def measure_profile(bench: Bench) -> dict[str, Any]:
    """Where one InstanceGM step's network work (the floor) spends its time, per layer type, against the
    compute floor: the step's convolution FLOPs at the rate of a large fp32 matrix product on this device."""
    from torch.profiler import ProfilerActivity, profile

    t = bench.floor_tensors()
    flops = {"no_grad": 0.0, "grad": 0.0}

    def count(module: torch.nn.Module, _inp, out: torch.Tensor) -> None:
        k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        flops["grad" if torch.is_grad_enabled() else "no_grad"] += 2.0 * out.numel() * k

    modules = [m for p in bench.peers for part in (p.net, p.vae) for m in part.modules()]
    hooks = [
        m.register_forward_hook(count) for m in modules if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))
    ]
    bench.floor_step(t, True)
    for h in hooks:
        h.remove()
    # A forward with gradient is followed by two backward products of the same size (input and weight grads).
    conv_flops = flops["no_grad"] + 3 * flops["grad"]
    bench.floor_step(t, True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bench.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        bench.floor_step(t, True)
        sync(bench.device)
        wall = time.perf_counter() - t0
    self_s = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    total = sum(self_s.values())
    by_type = {g: sum(self_s.get(n, 0.0) for n in names) for g, names in OP_GROUPS.items()}
    by_type["other"] = total - sum(by_type.values())
    a = torch.randn(2048, 2048, device=bench.device)
    torch.mm(a, a)
    sync(bench.device)
    t0 = time.perf_counter()
    for _ in range(5):
        torch.mm(a, a)
    sync(bench.device)
    gemm = 5 * 2 * 2048**3 / (time.perf_counter() - t0)
    conv_s = by_type["convolution forward"] + by_type["convolution backward"]
    return {
        "step_s_profiled": wall, "self_s_total": total, "by_type_s": by_type, "conv_gflop": conv_flops / 1e9,
        "conv_gflop_per_s": conv_flops / max(conv_s, 1e-9) / 1e9, "gemm_gflop_per_s": gemm / 1e9,
        "compute_floor_s": conv_flops / gemm, "threads": torch.get_num_threads(),
    }  # fmt: skip


# ================================================================ speed options ================================
def channels_last_problem(cfg: Config, device: torch.device) -> str:
    """Why channels_last cannot run here ('' if it can): the engine's own refusal (models/memory_format.py)."""
    if not cfg.channels_last:
        return ""
    return memory_format.channels_last_problem(preact_resnet18(cfg.num_classes, cfg.width), device)


def option_config(base: Config, option: str) -> tuple[Config, bool]:
    amp = "bf16" if "bf16" in option else "fp16" if option == "fp16" else "off"
    return base.replace(amp=amp, channels_last="channels_last" in option), option == "compile"


def step_gradients(bench: Bench, t: dict, seed: int = 1) -> tuple[float, torch.Tensor]:
    """Loss and flattened gradients (classifier + VAE) of one floor step, no update."""
    peer = bench.peers[0]
    for p in list(peer.net.parameters()) + list(peer.vae.parameters()):
        p.grad = None
    torch.manual_seed(seed)  # the Gumbel and reparameterisation noise
    loss = bench.floor_loss(t, with_vae=True)
    loss.backward()
    params = list(peer.net.parameters()) + list(peer.vae.parameters())
    grads = torch.cat([p.grad.float().flatten() for p in params if p.grad is not None]).cpu()
    return loss.item(), grads


def _option_call(option: str, fn: Callable[[], Any]) -> Callable[[], Any]:
    """``no_onednn``: the same call with PyTorch's oneDNN (mkldnn) CPU kernels switched off."""
    if option != "no_onednn":
        return fn

    def call() -> Any:
        with torch.backends.mkldnn.flags(enabled=False):
            return fn()

    return call


def failure_reason(err: BaseException) -> str:
    """One line for a report row: the exception's type and the first line of its message."""
    first = (str(err).strip().splitlines() or [""])[0][:200]
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def measure_options(
    base: Config,
    device: torch.device,
    options: list[str],
    args: argparse.Namespace,
    deadline: float | None = None,
) -> list[dict]:
    """Floor of the InstanceGM step per speed option, and its accuracy cost against fp32.

    The options are timed round-robin (one block of each, repeated), so that load changing on a shared machine
    hits every option alike. An option that fails on this machine (torch.compile without a C compiler, bf16 on
    a GPU without bf16 units, ...) or that starts after ``deadline`` (``time.perf_counter()``) is a row with
    ``skipped``: its reason; only fp32, the reference, may not fail.
    """
    rows, reference, calls = [], None, {}
    for option in ["fp32"] + [o for o in options if o != "fp32"]:
        if option == "fp16" and device.type != "cuda":
            rows.append({"option": option, "skipped": "fp16 autocast needs CUDA"})
            continue
        if reference is not None and deadline is not None and time.perf_counter() > deadline:
            rows.append({"option": option, "skipped": "out of this part's time budget"})
            continue
        cfg, compile_nets = option_config(base, option)
        problem = channels_last_problem(cfg, device)
        if problem:
            rows.append({"option": option, "skipped": problem})
            continue
        try:
            bench = Bench.build(cfg, device, compile_nets)
            state = [
                ({k.removeprefix("_orig_mod."): v.clone() for k, v in p.net.state_dict().items()},) for p in bench.peers
            ]
            t = bench.floor_tensors()
            t0 = time.perf_counter()
            # first call: includes compilation for torch.compile
            loss, grads = _option_call(option, lambda b=bench, t=t: step_gradients(b, t))()
        except Exception as err:  # noqa: BLE001 -- any failure of an option is its row's result
            if reference is None:
                raise
            rows.append({"option": option, "skipped": failure_reason(err)})
            continue
        first_s = time.perf_counter() - t0
        calls[option] = _option_call(option, lambda b=bench, t=t: b.floor_step(t, True))
        if reference is None:
            reference = (loss, grads, state)
        row = {"option": option, "first_step_s": first_s, "loss": loss}
        ref_loss, ref_grads, ref_state = reference
        same_init = all(torch.equal(a[0][k].float(), b[0][k].float()) for a, b in zip(state, ref_state) for k in a[0])
        row["loss_abs_diff"] = abs(loss - ref_loss)
        row["grad_rel_l2"] = float((grads - ref_grads).norm() / ref_grads.norm().clamp_min(1e-30))
        row["grad_max_abs_diff"] = float((grads - ref_grads).abs().max())
        row["grad_cosine"] = float(F.cosine_similarity(grads.double(), ref_grads.double(), dim=0))
        row["same_init"] = same_init
        rows.append(row)
    stats = time_interleaved(calls, device, warmup=args.warmup_iters, reps=args.reps, steps=args.steps)
    for row in rows:
        row.update(stats.get(row["option"], {}))
    fp32 = stats["fp32"]["ms_median"]
    for row in rows:
        if "ms_median" in row:
            row["speedup_vs_fp32"] = fp32 / row["ms_median"]
    return rows


# ================================================================ report =======================================
def environment(device: torch.device) -> dict:
    info = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load_average_1min": os.getloadavg()[0],
        "device": str(device),
    }
    try:
        text = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name"))
        flags = next(ln for ln in text.splitlines() if ln.startswith("flags")).split()
        info["cpu_bf16"] = [f for f in flags if "bf16" in f or f.startswith("amx")]
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def markdown(report: dict) -> str:
    lines = [
        "| path | phase | ms/step median | IQR | min–max | images/s | s per epoch (projected) | peak mem MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["phases"]:
        if "breakdown_ms" in r:  # listed below the table
            continue
        if "ms_q1" not in r:  # derived rows (generative part)
            lines.append(f"| {r['path']} | {r['phase']} | {r['ms_median']:.1f} | | | | {r['epoch_s']:.1f} | |")
            continue
        mem = "—" if r.get("peak_mem_mb") is None else f"{r['peak_mem_mb']:.0f}"
        lines.append(
            f"| {r['path']} | {r['phase']} | {r['ms_median']:.1f} | {r['ms_q1']:.1f}–{r['ms_q3']:.1f} "
            f"| {r['ms_min']:.1f}–{r['ms_max']:.1f} | {r['images_per_s']:.0f} | {r['epoch_s']:.1f} | {mem} |"
        )
    out = "\n".join(lines) + "\n"
    s = report["summary"]
    if s:
        out += "\n" + "\n".join(f"- {k}: {v}" for k, v in s.items()) + "\n"
    for r in report["phases"]:
        if "breakdown_ms" in r:
            total = sum(r["breakdown_ms"].values())
            parts = ", ".join(f"{k} {v:.1f} ms ({v / total:.0%})" for k, v in r["breakdown_ms"].items())
            out += f"- igm step breakdown ({r['path']}, synced): {parts}\n"
    prof = report.get("profile")
    if prof:
        out += (
            f"\nProfile of one InstanceGM floor step ({prof['step_s_profiled']:.2f} s under the profiler, "
            f"{prof['threads']} threads): convolutions {prof['conv_gflop']:.0f} GFLOP at "
            f"{prof['conv_gflop_per_s']:.0f} GFLOP/s; a 2048² fp32 matrix product runs at "
            f"{prof['gemm_gflop_per_s']:.0f} GFLOP/s, so the convolutions alone need >= "
            f"{prof['compute_floor_s']:.2f} s."
            "\n\n| layer type | self time s | share |\n|---|---|---|\n"
        )
        for name, sec in sorted(prof["by_type_s"].items(), key=lambda kv: -kv[1]):
            out += f"| {name} | {sec:.2f} | {sec / prof['self_s_total']:.0%} |\n"
    if report.get("eval_batches"):
        out += "\n| eval batch | images/s | CPU ms per image | minor page faults per image |\n|---|---|---|---|\n"
        for r in report["eval_batches"]:
            out += (
                f"| {r['eval_batch']} | {r['images_per_s']:.1f} | {r['cpu_ms_per_image']:.1f} "
                f"| {r['minor_faults_per_image']:.0f} |\n"
            )
    if report.get("options"):
        out += (
            "\n| option | floor ms/step (igm) | IQR | speed-up vs fp32 | first step s | loss abs diff "
            "| grad rel L2 | grad cosine |\n|---|---|---|---|---|---|---|---|\n"
        )
        for r in report["options"]:
            if "skipped" in r:
                out += f"| {r['option']} | skipped: {r['skipped']} | | | | | | |\n"
                continue
            out += (
                f"| {r['option']} | {r['ms_median']:.1f} | {r['ms_q1']:.1f}–{r['ms_q3']:.1f} "
                f"| {r['speedup_vs_fp32']:.2f}× | {r['first_step_s']:.1f} | {r['loss_abs_diff']:.2e} "
                f"| {r['grad_rel_l2']:.2e} | {r['grad_cosine']:.6f} |\n"
            )
    return out


def summary(phases: list[dict], device: torch.device) -> dict[str, str]:
    """The checks of the issue: gap of the InstanceGM step to its floor, speed-up over the naive pattern."""
    get = {(r["path"], r["phase"]): r for r in phases}
    out: dict[str, str] = {}
    floor = get.get(("floor", "igm step"))
    for path in ("device", "pil"):
        step = get.get((path, "igm step"))
        if step and floor:
            gap = step["ms_median"] / floor["ms_median"] - 1
            verdict = "met" if gap <= 0.10 else "NOT met"
            out[f"igm step gap to floor ({path})"] = f"{gap:+.1%} (target <= +10%: {verdict})"
        naive = get.get(("naive", "igm step"))
        if step and naive:
            speed = naive["ms_median"] / step["ms_median"]
            need = 10.0 if device.type == "cuda" else 1.5
            out[f"igm step speed-up over naive ({path})"] = (
                f"{speed:.2f}x (target >= {need:g}x on {device.type}: {'met' if speed >= need else 'NOT met'})"
            )
    return out


# ================================================================ main =========================================
QUICK = dict(num_train=1024, num_test=256, width=8, batch_size=8, reps=2, steps=1, warmup_iters=1, eval_batches=1,
             workers=1, naive_workers=2)  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny shapes and repetitions (seconds)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--num_train", type=int, default=50_000, help="training set size (CIFAR-10: 50,000)")
    p.add_argument("--num_test", type=int, default=10_000, help="test set size (CIFAR-10: 10,000)")
    p.add_argument("--num_classes", type=int, default=10, help="K: number of classes")
    p.add_argument("--width", type=int, default=64, help="PreAct ResNet-18 base width (64: the paper's)")
    p.add_argument("--batch_size", type=int, default=64, help="B (warm-up and generative batches are 2B)")
    p.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off", help="autocast of the networks")
    p.add_argument("--channels_last", action="store_true", help="channels-last memory format for the convolutions")
    p.add_argument("--compile", action="store_true", help="torch.compile the classifiers for the phases")
    p.add_argument("--paths", nargs="*", choices=PATHS, default=list(PATHS), help="data paths to time (none: --paths)")
    p.add_argument("--options", nargs="*", choices=OPTIONS, default=[], help="speed options of the floor to compare")
    p.add_argument("--no_floor", action="store_true", help="skip the floor")
    p.add_argument("--no_breakdown", action="store_true", help="skip the synced breakdown of the InstanceGM step")
    p.add_argument("--eval_batch_sizes", nargs="*", type=int, default=[], help="divide batch sizes to compare")
    p.add_argument("--profile", action="store_true", help="per-layer-type profile of the InstanceGM floor step")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions (median, IQR, min-max over these)")
    p.add_argument("--steps", type=int, default=3, help="steps per repetition")
    p.add_argument("--warmup_iters", type=int, default=2, help="untimed steps before each timed phase")
    p.add_argument("--eval_batches", type=int, default=4, help="batches per repetition of the eval/test passes")
    p.add_argument("--labeled_fraction", type=float, default=0.5, help="labeled share of the split (epoch length)")
    p.add_argument("--workers", type=int, default=Config.num_workers, help="DataLoader workers of the pil path")
    p.add_argument("--naive_workers", type=int, default=ORIGINAL_WORKERS, help="workers of the naive path")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default under benchmarks/results/)")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cfg = Config(
        dataset="cifar10", num_classes=args.num_classes, width=args.width, batch_size=args.batch_size,
        amp=args.amp, channels_last=args.channels_last, method="instancegm", device=str(device), seed=0,
    )  # fmt: skip
    arrays = synthetic_arrays(args.num_train, args.num_test, 32, args.num_classes)
    report: dict[str, Any] = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": environment(device),
        "phases": [],
    }
    problem = channels_last_problem(cfg, device)
    if problem:
        raise SystemExit(f"error: {problem}; use --width 8, 16, ... or drop --channels_last")
    t_start = time.perf_counter()
    bench = Bench.build(cfg, device, args.compile)
    if args.paths or not args.no_floor:
        report["phases"] = measure_phases(bench, arrays, args)
    report["summary"] = summary(report["phases"], device)
    if args.profile:
        report["profile"] = measure_profile(bench)
    if args.eval_batch_sizes:
        report["eval_batches"] = measure_eval_batches(bench, arrays, args.eval_batch_sizes, args)
    if args.options:
        report["options"] = measure_options(cfg, device, args.options, args)
    report["environment"]["load_average_1min_end"] = os.getloadavg()[0]
    report["wall_s"] = time.perf_counter() - t_start
    report["markdown"] = markdown(report)
    out = args.out or RESULTS_DIR / (
        f"throughput_{device.type}_w{args.width}_b{args.batch_size}_{args.amp}"
        f"{'_cl' if args.channels_last else ''}{'_quick' if args.quick else ''}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(report["markdown"])
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
