"""The co-training engine shared by every entry script: warm-up, divide, co-train, evaluate (docs/design.md: One run).

``CoTrainer.fit`` reads like the algorithm. Each branch is a :class:`Peer` (network, generative model,
optimisers, loss history); the loop runs over the two of them, each trained on the split chosen by the other.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from training import checkpoint as ckpt_lib
from training import dashboards, dividemix, faults, generative, noise_rate
from training import distributed as dist_lib
from training.config import Config
from training.metrics import MetricSink, RunningMeans, split_quality, summarise
from training.progress import StartupTimer, remaining_time_text
from training.rundir import resume_command
from training.runtime import capture_rng_state, eval_batch_size, git_sha

log = logging.getLogger("training")


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the message points at the last good checkpoint."""


def joint_step(scaler: torch.amp.GradScaler, loss: Tensor, *opts: torch.optim.Optimizer | None) -> None:
    """One joint (scaled) backward, then a step of every given optimiser (SGD on the net, Adam on the VAE)."""
    opts = tuple(o for o in opts if o is not None)
    for opt in opts:
        opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    for opt in opts:
        scaler.step(opt)
    scaler.update()


@dataclass
class Peer:
    """One branch of the co-training: a classifier, its generative model and their optimisers."""

    name: str
    net: nn.Module
    opt: torch.optim.Optimizer
    vae: nn.Module | None = None
    opt_vae: torch.optim.Optimizer | None = None
    loss_history: list[Tensor] = field(default_factory=list)  # recent normalised per-sample losses
    ddp_net: nn.Module | None = None  # DistributedDataParallel wrappers in multi-process runs
    ddp_vae: nn.Module | None = None
    rate_estimator: noise_rate.NoiseRateEstimator | None = None  # --selection noise_rate only

    @property
    def train_net(self) -> nn.Module:
        """The module to run forwards with gradient through (the DDP wrapper when there is one)."""
        return self.ddp_net if self.ddp_net is not None else self.net

    @property
    def train_vae(self) -> nn.Module | None:
        return self.ddp_vae if self.ddp_vae is not None else self.vae

    def state_dict(self) -> dict:
        return {
            "net": self.net.state_dict(),
            "opt": self.opt.state_dict(),
            "vae": None if self.vae is None else self.vae.state_dict(),
            "opt_vae": None if self.opt_vae is None else self.opt_vae.state_dict(),
            "loss_history": [h.clone() for h in self.loss_history],
        } | ({} if self.rate_estimator is None else {"noise_rate": self.rate_estimator.state_dict()})

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        if self.vae is not None and state.get("vae") is not None:
            self.vae.load_state_dict(state["vae"])
            self.opt_vae.load_state_dict(state["opt_vae"])
        self.loss_history = list(state.get("loss_history", []))
        if self.rate_estimator is not None and state.get("noise_rate") is not None:
            self.rate_estimator.load_state_dict(state["noise_rate"])


@dataclass
class Split:
    """The division one peer produced for the other: who is clean, with what probability (docs/design.md:
    The divide)."""

    labeled: Tensor  # sample indices judged clean
    labeled_prob: Tensor  # their clean probabilities (label-refinement weights)
    unlabeled: Tensor  # the remaining indices
    prob: Tensor  # clean probability of every evaluated sample
    indices: Tensor  # the evaluated samples (all, or a per-epoch subset)


class CoTrainer:
    def __init__(
        self,
        cfg: Config,
        data,
        peers: list[Peer],
        device: torch.device,
        autocast: Callable,
        sink: MetricSink,
        run_dir: Path,
        start_epoch: int = 0,
        history: list[dict] | None = None,
        best: dict | None = None,
        dist_info: dist_lib.DistInfo = dist_lib.SINGLE,
        config_history: list[dict] | None = None,
    ):
        self.cfg, self.data, self.peers, self.device = cfg, data, peers, device
        self.autocast, self.sink, self.run_dir = autocast, sink, run_dir
        self.dist = dist_info
        # A fixed batch for the reconstruction grids (only when a dashboard is on).
        self._recon_images = data.sample_images(dashboards.RECON_IMAGES)[0] if sink.wandb is not None else None
        self.start_epoch = start_epoch
        self.history: list[dict] = list(history or [])
        self.best: dict = dict(best or {})  # best-validation accuracy per peer (select_on_val)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
        self.eval_batch = eval_batch_size(cfg, device)
        self._vae_iter: Iterator | None = None
        self._vae_pool: Tensor | None = None  # Clothing1M: the fixed subset the VAE batches come from
        self.config_history: list[dict] = list(config_history or [])  # segments whose settings changed
        self._data_identity = data.identity()  # checked by the next resume

    def resume_from(self, state: dict) -> None:
        """The run state a checkpoint carries beyond the peers' weights and optimisers."""
        self._vae_pool = state["vae_pool"]
        if state.get("scaler") and self.scaler.is_enabled():  # a checkpoint of another --amp has none to give
            self.scaler.load_state_dict(state["scaler"])

    # ================================================================ the algorithm ==========================
    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.dist.is_main and self.start_epoch < cfg.num_epochs:
            warm = "epoch 1" if cfg.warm_up == 1 else f"epochs 1-{cfg.warm_up}"
            plan = "cross-entropy" if cfg.method == "ce" else f"{warm}: warm-up; then divide + co-train"
            log.info(
                "training epochs %d-%d of %d (%s); a line per finished epoch, progress bars on a terminal",
                self.start_epoch + 1,
                cfg.num_epochs,
                cfg.num_epochs,
                plan,
            )
        for epoch in range(self.start_epoch, cfg.num_epochs):
            t0 = time.perf_counter()
            self.set_learning_rates(epoch)
            record: dict[str, Any] = {"epoch": epoch, "lr": self.peers[0].opt.param_groups[0]["lr"]}
            if cfg.method == "ce" or epoch < cfg.warm_up:
                # ============ warm-up: cross-entropy on all (noisy) samples ============
                record["phase"] = "warmup" if cfg.method != "ce" else "ce"
                for peer in self.peers:
                    record.update(self.warmup_epoch(epoch, peer))
                    faults.point(f"epoch{epoch}/warmup/{peer.name}")
            else:
                record["phase"] = "train"
                # ============ divide: per-sample loss -> 2-component GMM -> clean probability ============
                # Both splits come before either net trains (the original's ordering).
                splits = {peer.name: self.divide(peer, record) for peer in self.peers}
                # ============ co-train: each net learns from the split chosen by the *other* net ============
                for peer, other in zip(self.peers, reversed(self.peers)):
                    record.update(self.train_epoch(epoch, peer, other, splits[other.name]))
                    faults.point(f"epoch{epoch}/train/{peer.name}")
            record["time/train_s"] = time.perf_counter() - t0
            # ============ evaluate: ensemble of summed logits, and each net alone ============
            faults.point(f"epoch{epoch}/evaluate")
            record.update(self.evaluate(epoch))
            record["time/epoch_s"] = time.perf_counter() - t0
            self.history.append(record)
            if self.dist.is_main:
                # The checkpoint first: metrics.jsonl never holds an epoch the checkpoint lacks.
                self.save_checkpoint(epoch)
                faults.point(f"epoch{epoch}/saved")
                self.sink.log_epoch(record)
                dashboards.log_reconstructions(self.sink, self.peers[0], self._recon_images, epoch)
                log.info(self.format_epoch(record) + remaining_time_text(self.history, cfg))
        return self.finish()

    # ================================================================ phases ==================================
    def set_learning_rates(self, epoch: int) -> None:
        """Step schedule of the classifiers; the generative model's Adam lr is constant (docs/design.md:
        Hyper-parameters)."""
        lr = self.cfg.lr / (self.cfg.lr_drop_factor if epoch >= self.cfg.lr_drop_epoch else 1.0)
        for peer in self.peers:
            for group in peer.opt.param_groups:
                group["lr"] = lr
            if peer.opt_vae is not None:
                for group in peer.opt_vae.param_groups:
                    group["lr"] = self.cfg.vae_lr
                    group["betas"] = (self.cfg.vae_beta1, self.cfg.vae_beta2)

    def warmup_epoch(self, epoch: int, peer: Peer) -> dict[str, float]:
        """One epoch of cross-entropy on the noisy labels, batch 2B, train augmentation (docs/design.md: One epoch)."""
        cfg = self.cfg
        peer.net.train()
        meters = RunningMeans()
        loader = self.data.warmup_loader(2 * cfg.batch_size)
        seen, t0 = 0, time.perf_counter()
        timer = self._startup_timer(epoch, peer, loader)
        bar = self._bar(loader, f"epoch {epoch + 1}/{cfg.num_epochs} warm-up {peer.name}")
        for i, (x, y, _idx) in enumerate(bar):
            x = self._prep(x)
            with self.autocast():
                logits = peer.train_net(x)
            loss, ce = dividemix.warmup_loss(logits, y, cfg.warmup_penalty)
            self._optimize(loss, peer.opt)
            meters.update(loss=loss, ce=ce)
            seen += x.size(0)
            if timer is not None and (text := timer.step_done(i)):
                log.info(text)
            if (i + 1) % cfg.log_interval == 0:
                self._check_finite(meters, epoch, peer, bar)
        means = self._check_finite(meters, epoch, peer, bar)
        # Every rank's BatchNorm statistics the same before they are used (eval-mode peer, divide, test, checkpoint)
        dist_lib.average_buffers(self.dist, peer.net)
        if cfg.vae_fixed_subset and getattr(self.data, "last_warmup_indices", None) is not None:
            # NOTE(original): Clothing1M's VAE loader is the last warm-up subset (net2's, epoch 0), kept for
            # the whole run (README Differences #10).
            self._vae_pool, self._vae_iter = self.data.last_warmup_indices, None
        return self._prefixed(f"train/{peer.name}/warmup", means) | {
            f"time/{peer.name}/images_per_s": seen / max(time.perf_counter() - t0, 1e-9)
        }

    def divide(self, peer: Peer, record: dict) -> Split:
        """Per-sample losses of ``peer.net`` -> min-max normalise -> GMM -> clean probability (docs/design.md:
        The divide)."""
        cfg = self.cfg
        # --selection noise_rate: the same pass also records the features the noise-rate estimator needs.
        with noise_rate.HeadCapture(peer.net, enabled=peer.rate_estimator is not None) as head:
            losses, indices = dividemix.per_sample_losses(
                peer.net,
                self._bar(
                    self.data.eval_train_loader(self.eval_batch), f"epoch {record['epoch'] + 1} divide {peer.name}"
                ),
                self.autocast,
                prep=self._prep,
            )
        head.indices = indices  # this rank's samples, in the order the head's rows were captured
        # Multi-process: every rank evaluated its shard; the divide is global, in dataset-index order.
        losses, indices = dist_lib.gather_by_index(self.dist, losses, indices)
        norm = dividemix.normalise_losses(losses)
        gmm_input = norm
        if len(indices) == self.data.num_train:  # history only makes sense over the same (full) sample set
            peer.loss_history = (peer.loss_history + [norm])[-cfg.loss_history :]
            if cfg.noise_mode != "real" and math.isclose(cfg.r, cfg.history_noise_rate):
                # NOTE(original): at r = 0.9 the GMM sees the mean of the last 5 epochs' losses.
                gmm_input = torch.stack(peer.loss_history).mean(0)
        gmm = dividemix.GMMSplit(torch.zeros(len(indices)), (math.nan, math.nan), False)
        if self.dist.is_main:  # fitted once; every rank gets rank 0's clean probabilities
            gmm = dividemix.gmm_clean_probability(
                gmm_input, max_iter=cfg.gmm_max_iter, tol=cfg.gmm_tol, reg_covar=cfg.gmm_reg_covar
            )
        gmm = gmm._replace(prob=dist_lib.broadcast(self.dist, gmm.prob))
        labeled, labeled_prob, unlabeled = dividemix.co_divide(gmm.prob, indices, cfg.p_threshold)
        if peer.rate_estimator is not None:
            # ============ noise-rate curriculum (ECCV 2024): the (1 - ε̂) lowest-loss fraction is labeled ============
            labeled, labeled_prob, unlabeled = self._select_by_noise_rate(
                peer, head, gmm_input, gmm.prob, indices, record
            )
        if len(labeled) == 0:
            # Documented recovery: an empty labeled set cannot drive an epoch; keep the B most likely clean.
            k = min(cfg.batch_size, len(indices))
            top = torch.topk(gmm.prob, k).indices
            keep = torch.zeros(len(indices), dtype=torch.bool)
            keep[top] = True
            labeled, labeled_prob, unlabeled = indices[keep], gmm.prob[keep], indices[~keep]
            log.warning(
                "%s: no sample above p_threshold=%.3g; using the %d most likely clean samples as labeled",
                peer.name,
                cfg.p_threshold,
                k,
            )
        if self.dist.is_main:  # splits.pt for the plots; clean-probability histograms for the dashboard
            dashboards.record_split(
                self.sink,
                self.run_dir,
                record["epoch"],
                peer.name,
                gmm.prob,
                indices,
                self.data.is_clean,
                losses=gmm_input,
            )
        record[f"split/{peer.name}/labeled"] = len(labeled)
        record[f"split/{peer.name}/gmm_clean_mean"] = gmm.means[0]
        record[f"split/{peer.name}/gmm_noisy_mean"] = gmm.means[1]
        is_clean = self.data.is_clean
        if is_clean is not None:
            quality = split_quality(gmm.prob, is_clean[indices], cfg.p_threshold)
            record.update(self._prefixed(f"split/{peer.name}", quality))
        return Split(labeled, labeled_prob, unlabeled, gmm.prob, indices)

    def train_epoch(self, epoch: int, peer: Peer, other: Peer, split: Split) -> dict[str, float]:
        """One DivideMix + generative epoch of ``peer`` on the split chosen by ``other`` (docs/design.md:
        The DivideMix step; The generative step)."""
        cfg = self.cfg
        B = cfg.batch_size
        peer.train_net.train()
        other.net.eval()
        if peer.vae is not None:
            peer.vae.train()
        labeled = self.data.labeled_loader(split.labeled, split.labeled_prob, B)
        unlabeled = self.data.unlabeled_loader(split.unlabeled, B) if len(split.unlabeled) else None
        if unlabeled is None:
            log.warning("%s: the unlabeled set is empty; training on the labeled samples only", peer.name)
        u_iter = iter(unlabeled) if unlabeled is not None else None
        # NOTE(original): the ramp's denominator is one more than the number of steps; per process under DDP.
        num_iter = math.ceil(len(split.labeled) / self.dist.world_size) // B + 1
        meters = RunningMeans()
        seen, t0 = 0, time.perf_counter()
        bar = self._bar(labeled, f"epoch {epoch + 1}/{cfg.num_epochs} train {peer.name}")
        for i, (x1, x2, y, w, _idx) in enumerate(bar):
            u1 = u2 = uy = None
            if u_iter is not None:
                try:
                    u1, u2, uy, _ = next(u_iter)
                except StopIteration:  # the labeled loader drives the epoch; restart the unlabeled one
                    u_iter = iter(unlabeled)
                    u1, u2, uy, _ = next(u_iter)
            x1, x2 = self._prep(x1), self._prep(x2)
            if u1 is not None:
                u1, u2 = self._prep(u1), self._prep(u2)
            lambda_u = dividemix.linear_rampup(epoch + i / num_iter, cfg.warm_up, cfg.lambda_u, cfg.rampup_length)
            with self.autocast():
                dm = dividemix.step(
                    peer.train_net,
                    other.net,
                    x1,
                    x2,
                    y,
                    w,
                    u1,
                    u2,
                    num_classes=cfg.num_classes,
                    T=cfg.T,
                    alpha=cfg.alpha,
                    lambda_u=lambda_u,
                    mix_unlabeled=cfg.mix_unlabeled,
                )
            loss = dm.loss
            logs = {"dm/lx": dm.lx, "dm/lu": dm.lu, "dm/penalty": dm.penalty, "dm/loss": dm.loss}
            if peer.vae is not None:
                xv, yv = self._vae_batch(x1, y, u1, uy)
                gen = generative.step(
                    peer.train_vae,
                    peer.train_net,
                    xv,
                    yv,
                    num_classes=cfg.num_classes,
                    weights=generative.loss_weights(cfg),
                    encoder_on_noisy_label=cfg.encoder_on_noisy_label,
                    autocast=self.autocast,
                )
                loss = loss + gen.loss
                logs.update(
                    {
                        "vae/loss": gen.loss,
                        "vae/recon": gen.recon,
                        "vae/noisy_label_ce": gen.noisy_label_ce,
                        "vae/y_prior": gen.y_prior,
                        "vae/kl_z": gen.kl_z,
                        "vae/noisy_label_acc": gen.noisy_label_acc,
                    }
                )
            self._optimize(loss, peer.opt, peer.opt_vae)
            meters.update(loss=loss, **logs)
            seen += x1.size(0) + (u1.size(0) if u1 is not None else 0)
            if (i + 1) % cfg.log_interval == 0:
                self._check_finite(meters, epoch, peer, bar)
        means = self._check_finite(meters, epoch, peer, bar)
        dist_lib.average_buffers(self.dist, peer.net, peer.vae)  # as after the warm-up
        means["lambda_u"] = dividemix.linear_rampup(epoch + 1, cfg.warm_up, cfg.lambda_u, cfg.rampup_length)
        return self._prefixed(f"train/{peer.name}", means) | {
            f"time/{peer.name}/images_per_s": seen / max(time.perf_counter() - t0, 1e-9)
        }

    @torch.no_grad()
    def evaluate(self, epoch: int) -> dict[str, float]:
        """Test accuracy of argmax(net1 + net2 logits) and of each net alone; validation when available."""
        out = self._accuracy(self._bar(self.data.test_loader(self.eval_batch), f"epoch {epoch + 1} test"), "test")
        if self.cfg.select_on_val:
            val_loader = self.data.val_loader(self.eval_batch)
            if val_loader is not None:
                val = self._accuracy(self._bar(val_loader, f"epoch {epoch + 1} validation"), "val")
                out.update(val)
                for peer in self.peers:
                    acc = val[f"val/{peer.name}/acc"]
                    if acc > self.best.get(peer.name, {}).get("acc", -1.0):
                        self.best[peer.name] = {"acc": acc, "epoch": epoch}
                        if self.dist.is_main:
                            ckpt_lib.save_atomic(peer.net.state_dict(), self.run_dir / f"best_{peer.name}.pt")
        return out

    def _accuracy(self, loader, prefix: str) -> dict[str, float]:
        for peer in self.peers:
            peer.net.eval()
        # counts[:-1]: correct predictions of the ensemble and of each net; counts[-1]: images seen
        counts = torch.zeros(len(self.peers) + 2, device=self.device)
        for x, y in loader:
            x = self._prep(x)
            with self.autocast():
                logits = [peer.net(x).float() for peer in self.peers]
            preds = [sum(logits).argmax(1)] + [lg.argmax(1) for lg in logits]
            counts[:-1] += torch.stack([(p == y).sum() for p in preds]).float()
            counts[-1] += y.size(0)
        counts = dist_lib.all_reduce_sum(self.dist, counts)  # every rank evaluated its shard
        acc = (100.0 * counts[:-1] / counts[-1].clamp_min(1)).tolist()
        out = {f"{prefix}/acc": acc[0]}
        out.update({f"{prefix}/{peer.name}/acc": a for peer, a in zip(self.peers, acc[1:])})
        return out

    def finish(self) -> dict[str, Any]:
        """After the last epoch: summary (last, best, mean of last 10) and, if asked, the best-val test."""
        summary: dict[str, Any] = {"test/acc": summarise(self.history, "test/acc")}
        for peer in self.peers:
            summary[f"test/{peer.name}/acc"] = summarise(self.history, f"test/{peer.name}/acc")
        if self.cfg.select_on_val and self.best:
            # As DivideMix on Clothing1M: test the ensemble of each net's best-validation weights.
            dist_lib.barrier(self.dist)  # rank 0 wrote them
            for peer in self.peers:
                path = self.run_dir / f"best_{peer.name}.pt"
                if path.exists():
                    peer.net.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))
            summary["best_val"] = {name: dict(v) for name, v in self.best.items()}
            summary["test_at_best_val"] = self.evaluate_test_only()
        noise = getattr(self.data, "noise_info", {}) or {}
        if "realised_rate" in noise:
            summary["noise/realised_rate"] = noise["realised_rate"]
        return summary

    @torch.no_grad()
    def evaluate_test_only(self) -> dict[str, float]:
        return self._accuracy(self.data.test_loader(self.eval_batch), "test")

    # ================================================================ helpers =================================
    def _select_by_noise_rate(
        self, peer: Peer, head: noise_rate.HeadCapture, scores: Tensor, prob: Tensor, indices: Tensor, record: dict
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Fit ``peer``'s noise-rate estimator on the divide's pass, then label the best (1 - ε̂) fraction.

        Global like the divide: every rank's captured rows are gathered, rank 0 fits, ε̂ is broadcast.
        """
        rows, _ = dist_lib.gather_by_index(self.dist, head.rows(), head.indices)  # row i: sample indices[i]
        rate = torch.zeros(1, dtype=torch.float64)
        if self.dist.is_main:
            k = self.cfg.num_classes
            noisy = self.data.noisy_labels[indices]
            rate[0] = peer.rate_estimator.fit(rows[:, :-k], rows[:, -k:], noisy)
        rate = float(dist_lib.broadcast(self.dist, rate)[0])
        peer.rate_estimator.rate = rate
        selected = noise_rate.select_by_rate(scores, rate)
        record[f"noise/{peer.name}/estimated_rate"] = rate
        rates = [record[key] for p in self.peers if (key := f"noise/{p.name}/estimated_rate") in record]
        record["noise/estimated_rate"] = sum(rates) / len(rates)  # the mean over the classifiers divided so far
        is_clean = self.data.is_clean
        if is_clean is not None:
            record["noise/realised_rate"] = 1.0 - float(is_clean[indices].float().mean())
            record.update(
                self._prefixed(f"split/{peer.name}", noise_rate.selection_quality(selected, is_clean[indices]))
            )
        return indices[selected], prob[selected], indices[~selected]

    def _startup_timer(self, epoch: int, peer: Peer, loader) -> StartupTimer | None:
        """A timer for the run's first warm-up steps (the first net's, on the process that logs), else None."""
        if epoch != self.start_epoch or peer is not self.peers[0] or not self.dist.is_main:
            return None
        batch = 2 * self.cfg.batch_size
        steps = len(loader) if hasattr(loader, "__len__") else math.ceil(self.data.num_train / batch)
        labels = getattr(self.data, "test_labels", None)
        num_test = len(labels) if labels is not None else self.cfg.test_subset
        return StartupTimer(self.cfg, steps, self.data.num_train, num_test, epoch, self.device.type)

    def _vae_batch(self, x1: Tensor, y: Tensor, u1: Tensor | None, uy: Tensor | None) -> tuple[Tensor, Tensor]:
        """The generative step's batch: fresh 2B random training samples (original) or the DivideMix batch."""
        if self.cfg.vae_batch == "dm":
            # DIVERGES(original): reuse the labeled + unlabeled first views with their noisy labels.
            if u1 is None:
                return x1, y
            return torch.cat([x1, u1]), torch.cat([y, uy])
        if self._vae_iter is None:
            # One persistent random-batch source for the whole run: no loader is rebuilt per step.
            self._vae_iter = self.data.vae_batches(2 * self.cfg.batch_size, **self._vae_pool_kw())
        xv, yv, _ = next(self._vae_iter)
        return self._prep(xv), yv

    def _vae_pool_kw(self) -> dict:
        return {} if self._vae_pool is None else {"indices": self._vae_pool}

    def _prep(self, x: Tensor) -> Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def _optimize(self, loss: Tensor, *opts: torch.optim.Optimizer | None) -> None:
        joint_step(self.scaler, loss, *opts)

    def _check_finite(self, meters: RunningMeans, epoch: int, peer: Peer, bar) -> dict[str, float]:
        """Sync the running means (the only host sync of the loop), show them, stop on NaN/inf."""
        means = meters.means()
        if hasattr(bar, "set_postfix"):
            bar.set_postfix({k.split("/")[-1]: f"{v:.3f}" for k, v in means.items() if "acc" not in k}, refresh=False)
        bad = [k for k, v in means.items() if not math.isfinite(v)]
        if bad:
            last = self.run_dir / ckpt_lib.FILENAME
            raise TrainingDiverged(
                f"{peer.name}: the loss became NaN/inf in epoch {epoch + 1} (non-finite: {', '.join(bad)}); "
                + (
                    f"the last good checkpoint is {last}: continue it, with a lower --lr or --amp off, with: "
                    f"{resume_command(self.run_dir)} --lr <lower> --allow_config_change"
                    if last.exists()
                    else "no epoch completed yet: start again after lowering --lr or with --amp off"
                )
            )
        return means

    def _bar(self, loader, desc: str):
        disable = None if self.dist.is_main else True  # None: only on a terminal
        return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=disable, mininterval=2.0)

    @staticmethod
    def _prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
        return {f"{prefix}/{k}": v for k, v in values.items()}

    def save_checkpoint(self, epoch: int) -> None:
        state = {
            "format": ckpt_lib.FORMAT,
            "epoch": epoch,
            "config": self.cfg.to_dict(),
            "peers": {peer.name: peer.state_dict() for peer in self.peers},
            "best": self.best,
            "history": self.history,
            "rng": capture_rng_state(self.device),
            "data": self.data.state_dict(),
            "vae_pool": self._vae_pool,
            "data_identity": self._data_identity,
            "config_history": self.config_history,
            # fp16: the loss scale and its growth counter; without them a resume restarts at 2^16 and skips
            # the steps whose gradients overflow until the scale has backed off again ({} when disabled).
            "scaler": self.scaler.state_dict(),
            "git_sha": git_sha(),
        }
        ckpt_lib.save_atomic(state, self.run_dir / ckpt_lib.FILENAME)

    def format_epoch(self, r: dict) -> str:
        parts = [
            f"epoch {r['epoch'] + 1}/{self.cfg.num_epochs} [{r['phase']}]",
            f"test {r['test/acc']:.2f}% ("
            + ", ".join(f"{p.name} {r[f'test/{p.name}/acc']:.2f}" for p in self.peers)
            + ")",
        ]
        if r["phase"] == "train":
            parts.append("labeled " + "/".join(str(r[f"split/{p.name}/labeled"]) for p in self.peers))
            if f"split/{self.peers[0].name}/auc" in r:
                parts.append("split AUC " + "/".join(f"{r[f'split/{p.name}/auc']:.3f}" for p in self.peers))
            p = self.peers[0].name
            parts.append(f"lx {r[f'train/{p}/dm/lx']:.3f} lu {r[f'train/{p}/dm/lu']:.4f}")
            if f"train/{p}/vae/recon" in r:
                parts.append(f"recon {r[f'train/{p}/vae/recon']:.4f} kl_z {r[f'train/{p}/vae/kl_z']:.3f}")
        else:
            p = self.peers[0].name
            parts.append(f"ce {r[f'train/{p}/warmup/ce']:.3f}")
        parts.append(f"{r['time/epoch_s']:.1f}s")
        return " | ".join(parts)
