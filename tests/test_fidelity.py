"""Step-for-step fidelity to the original scripts (instanceGM*.py, DivideMix's Train_*.py), for every preset.

What the original does, pinned as module-call sequences: which network (or part of the generative model) runs,
in which mode (train/eval: decides whether BatchNorm running statistics move), on which batch, with or without
gradient, and in which order; the optimiser calls and the hyper-parameters in force at each step. The expected
sequences are read off the original ``train``/``warmup``/``eval_train``/``test``/``val`` functions:

* co-training step: ``net(u1), net(u2), net2(u1), net2(u2)`` (co-guessing), then ``net(x1), net(x2)`` (label
  refinement), all without gradient, ``net`` in train mode and ``net2`` in eval mode; ``net(mixed)``; then the
  generative model's forward ``vae(v, net)`` on a fresh batch v: ``net(v)`` in train mode with gradient,
  encoder, decoder, noisy-label head; zero_grad of SGD and Adam, one backward, SGD step, Adam step.
* warm-up: ``net1`` on every warm-up batch (train mode, gradient), then ``net2``;
* divide: ``net1`` on every eval batch (eval mode, no gradient), then ``net2``, before either trains;
* test: ``net1(x)``, ``net2(x)`` per batch, both in eval mode.
"""

from __future__ import annotations

import contextlib
import math
from functools import partial

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import instanceGM
import instanceGM_animal10N
import instanceGM_clothing1M
import instanceGM_redMini
import models
from training import dividemix as dm
from training import generative
from training.launch import build_peers
from training.metrics import MetricSink
from training.trainer import CoTrainer, Split

PRESETS = {
    "cifar10": instanceGM.PRESETS["cifar10"],
    "cifar100": instanceGM.PRESETS["cifar100"],
    "animal10n": instanceGM_animal10N.PRESETS["animal10n"],
    "red_mini": instanceGM_redMini.PRESETS["red_mini"],
    "clothing1m": instanceGM_clothing1M.PRESETS["clothing1m"],
}


# ================================================================ recording ================================
class CallTrace:
    """Forward pre-hooks and optimiser wrappers that log every call as a tuple.

    A forward is logged as (module, "train"/"eval", batch, "grad"/"no_grad"); the batch is the name given to
    an equal tensor with :meth:`name` (the latest such name), "other" for an unnamed image batch (the VAE's
    reconstruction), "-" for non-image inputs (latent codes).
    """

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self._named: list[tuple[str, Tensor]] = []

    def name(self, label: str, tensor: Tensor) -> Tensor:
        self._named.append((label, tensor))
        return tensor

    def batch(self, x: Tensor) -> str:
        if x.dim() != 4:
            return "-"
        for label, t in reversed(self._named):
            if t.shape == x.shape and torch.equal(t, x):
                return label
        return "other"

    def watch(self, label: str, module: nn.Module) -> None:
        module.register_forward_pre_hook(partial(self._forward, label))

    def _forward(self, label: str, module: nn.Module, args: tuple) -> None:
        mode = "train" if module.training else "eval"
        self.calls.append((label, mode, self.batch(args[0]), "grad" if torch.is_grad_enabled() else "no_grad"))

    def watch_optimizer(self, label: str, opt: torch.optim.Optimizer) -> None:
        """Logs (label + ".zero_grad") and (label + ".step", settings in force, every parameter has a gradient)."""
        zero_grad = opt.zero_grad

        def logged_zero_grad(*args, **kwargs):
            self.calls.append((f"{label}.zero_grad",))
            return zero_grad(*args, **kwargs)

        opt.zero_grad = logged_zero_grad

        def pre_step(optimizer, args, kwargs):
            group = optimizer.param_groups[0]
            keys = ("lr", "momentum", "weight_decay", "nesterov", "dampening", "betas", "eps", "amsgrad")
            settings = {k: group[k] for k in keys if k in group}
            has_grads = all(p.grad is not None for g in optimizer.param_groups for p in g["params"])
            self.calls.append((f"{label}.step", settings, has_grads))

        opt.register_step_pre_hook(pre_step)

    def forwards(self, *labels: str) -> list[tuple]:
        return [c for c in self.calls if len(c) == 4 and (not labels or c[0] in labels)]


class TinyNet(nn.Module):
    """A classifier with BatchNorm (whose running statistics record the order of train-mode forwards)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean((2, 3)))


def bn_buffers(net: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}


def name_mixed_inputs(monkeypatch, trace: CallTrace, labeled_rows: int | None) -> None:
    """Name the MixMatch input the net trains on "mixed" (only the first ``labeled_rows`` rows if given)."""
    mixmatch = dm.mixmatch

    def named(inputs, *args, **kwargs):
        out = mixmatch(inputs, *args, **kwargs)
        trace.name("mixed", out[0] if labeled_rows is None else out[0][:labeled_rows])
        return out

    monkeypatch.setattr(dm, "mixmatch", named)


def dividemix_forwards(net: str, peer: str) -> list[tuple]:
    """The original's forwards of one DivideMix step: co-guessing, label refinement, the MixMatch forward."""
    return [
        (net, "train", "u1", "no_grad"),
        (net, "train", "u2", "no_grad"),
        (peer, "eval", "u1", "no_grad"),
        (peer, "eval", "u2", "no_grad"),
        (net, "train", "x1", "no_grad"),
        (net, "train", "x2", "no_grad"),
        (net, "train", "mixed", "grad"),
    ]


# ================================================================ the DivideMix step =======================
def original_order_step(net, peer, x1, x2, y, w, u1, u2, *, K, T, alpha, lambda_u, mix_unlabeled):
    """The original ``train`` body written out in its order (CIFAR/Animal/Red; Clothing1M: labeled rows only)."""
    b = x1.size(0)
    with torch.no_grad():
        pu = sum(torch.softmax(m(u), 1) for m, u in ((net, u1), (net, u2), (peer, u1), (peer, u2))) / 4
        tu = pu ** (1 / T) / (pu ** (1 / T)).sum(1, keepdim=True)
        px = (torch.softmax(net(x1), 1) + torch.softmax(net(x2), 1)) / 2
        onehot = torch.zeros(b, K).scatter_(1, y.view(-1, 1), 1)
        px = w.view(-1, 1) * onehot + (1 - w.view(-1, 1)) * px
        tx = px ** (1 / T) / (px ** (1 / T)).sum(1, keepdim=True)
    lam = np.random.beta(alpha, alpha)
    lam = max(lam, 1 - lam)
    inputs, targets = torch.cat([x1, x2, u1, u2]), torch.cat([tx, tx, tu, tu])
    idx = torch.randperm(inputs.size(0))
    rows = slice(None) if mix_unlabeled else slice(0, 2 * b)
    mixed_x = lam * inputs[rows] + (1 - lam) * inputs[idx][rows]
    mixed_t = lam * targets[rows] + (1 - lam) * targets[idx][rows]
    logits = net(mixed_x)
    lx = -torch.mean(torch.sum(torch.log_softmax(logits[: 2 * b], 1) * mixed_t[: 2 * b], 1))
    lu = torch.mean((torch.softmax(logits[2 * b :], 1) - mixed_t[2 * b :]) ** 2) if mix_unlabeled else 0.0
    prior = torch.ones(K) / K
    penalty = torch.sum(prior * torch.log(prior / torch.softmax(logits, 1).mean(0)))
    return lx + lambda_u * lu + penalty


@pytest.mark.parametrize("mix_unlabeled", [True, False], ids=["cifar-animal-red", "clothing1m"])
def test_dividemix_step_runs_the_originals_forwards_in_its_order(monkeypatch, mix_unlabeled):
    torch.manual_seed(0)
    K, b = 5, 4
    net, peer = TinyNet(K), TinyNet(K)
    net.train(), peer.eval()
    trace = CallTrace()
    trace.watch("net", net)
    trace.watch("peer", peer)
    gen = torch.Generator().manual_seed(1)
    x1, x2, u1, u2 = (trace.name(n, torch.rand(b, 3, 8, 8, generator=gen)) for n in ("x1", "x2", "u1", "u2"))
    y, w = torch.tensor([0, 1, 2, 3]), torch.tensor([0.9, 0.2, 0.6, 1.0])
    name_mixed_inputs(monkeypatch, trace, None if mix_unlabeled else 2 * b)
    start = bn_buffers(net)
    np.random.seed(3), torch.manual_seed(3)
    out = dm.step(net, peer, x1, x2, y, w, u1, u2, num_classes=K, T=0.5, alpha=4.0, lambda_u=2.0,
                  mix_unlabeled=mix_unlabeled)  # fmt: skip
    assert trace.forwards() == dividemix_forwards("net", "peer")
    ours = bn_buffers(net)

    # The same step in the original's written order, from the same weights and random draws: equal loss and
    # equal BatchNorm running statistics, bit for bit.
    net.load_state_dict({**net.state_dict(), **start})
    np.random.seed(3), torch.manual_seed(3)
    expected = original_order_step(net, peer, x1, x2, y, w, u1, u2, K=K, T=0.5, alpha=4.0, lambda_u=2.0,
                                   mix_unlabeled=mix_unlabeled)  # fmt: skip
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    for key, value in bn_buffers(net).items():
        assert torch.equal(ours[key], value), key

    # Refinement before co-guessing (the order this test guards against) moves the statistics elsewhere.
    net.load_state_dict({**net.state_dict(), **start})
    with torch.no_grad():
        for x in (x1, x2, u1, u2):
            net(x)
    assert not torch.allclose(bn_buffers(net)["features.1.running_mean"], ours["features.1.running_mean"])


# ================================================================ the engine, per preset ===================
class NamedBatches:
    """A data module whose every batch is a fresh random tensor named in ``trace`` (x1, x2, u1, u2, v, w0, ...).

    B labeled samples make one co-training step; ``num_train`` = 4B samples, seen in two eval batches.
    """

    def __init__(self, trace: CallTrace, image_size: int, num_classes: int, batch_size: int, val: bool) -> None:
        self.trace, self.size, self.K, self.B, self.has_val = trace, image_size, num_classes, batch_size, val
        self.num_train = 4 * batch_size
        self.is_clean = None
        self.last_warmup_indices = None
        self.noise_info: dict = {}
        self.gen = torch.Generator().manual_seed(0)

    def _images(self, label: str, n: int) -> Tensor:
        return self.trace.name(label, torch.rand(n, 3, self.size, self.size, generator=self.gen))

    def _labels(self, n: int) -> Tensor:
        return torch.randint(0, self.K, (n,), generator=self.gen)

    def warmup_loader(self, batch_size: int):
        return [(self._images(f"w{i}", batch_size), self._labels(batch_size), None) for i in range(2)]

    def eval_train_loader(self, batch_size: int):
        half = self.num_train // 2
        return [(self._images(f"e{i}", half), self._labels(half), torch.arange(i * half, (i + 1) * half))
                for i in range(2)]  # fmt: skip

    def labeled_loader(self, indices: Tensor, prob: Tensor, batch_size: int):
        n = len(indices)
        return [(self._images("x1", n), self._images("x2", n), self._labels(n), prob.float(), indices)]

    def unlabeled_loader(self, indices: Tensor, batch_size: int):
        n = min(len(indices), batch_size)
        return [(self._images("u1", n), self._images("u2", n), self._labels(n), indices[:n])]

    def vae_batches(self, batch_size: int, indices: Tensor | None = None):
        while True:
            yield self._images("v", batch_size), self._labels(batch_size), None

    def test_loader(self, batch_size: int):
        return [(self._images("t0", self.B), self._labels(self.B))]

    def val_loader(self, batch_size: int):
        return [(self._images("val0", self.B), self._labels(self.B))] if self.has_val else None

    def state_dict(self) -> dict:
        return {}

    def identity(self) -> dict:
        return {}


def make_trainer(preset: str, tmp_path, monkeypatch, batch_size: int = 2):
    """The preset's engine with tiny classifiers (the generative model at the preset's resolution)."""
    cfg = PRESETS[preset].replace(batch_size=batch_size, pretrained=False, device="cpu", log_interval=1)
    monkeypatch.setattr(models, "build_classifier", lambda name, k, **kw: TinyNet(k))
    torch.manual_seed(0)
    peers = build_peers(cfg, torch.device("cpu"))
    trace = CallTrace()
    for peer in peers:
        trace.watch(peer.name, peer.net)
        for part in ("z_encoder", "x_decoder", "t_decoder"):
            trace.watch(f"{peer.name}.vae.{part}", getattr(peer.vae, part))
        trace.watch_optimizer(f"{peer.name}.sgd", peer.opt)
        trace.watch_optimizer(f"{peer.name}.adam", peer.opt_vae)
    data = NamedBatches(trace, cfg.vae_size, cfg.num_classes, batch_size, val=cfg.select_on_val)
    run_dir = tmp_path / preset
    run_dir.mkdir()
    trainer = CoTrainer(cfg, data, peers, torch.device("cpu"), contextlib.nullcontext, MetricSink(run_dir), run_dir)
    return cfg, trainer, trace


# The original scripts' optimiser settings in force at every co-training step of epoch `warm_up`
# (SGD: instanceGM*.py `optim.SGD(...)` and the epoch loop's lr; Adam: `adjust_learning_rate` before the step).
ORIGINAL_STEP_SETTINGS = {
    # preset: (SGD lr, SGD weight decay, Adam lr, first epoch with lr / 10)
    "cifar10": (0.02, 5e-4, 1e-3, 150),
    "cifar100": (0.02, 5e-4, 1e-3, 150),
    "animal10n": (0.002, 5e-4, 1e-3, 50),
    "red_mini": (0.02, 5e-4, 1e-4, 150),
    "clothing1m": (0.002, 1e-3, 1e-3, 40),
}


@pytest.mark.parametrize("preset", ["cifar10", "cifar100", "animal10n", "red_mini", "clothing1m"])
def test_instancegm_step_sequence_and_settings_per_preset(tmp_path, monkeypatch, preset):
    # B = 1 at 224 px keeps the generative model's step short (its batch is 2B)
    cfg, trainer, trace = make_trainer(preset, tmp_path, monkeypatch, batch_size=1 if preset == "clothing1m" else 2)
    net1, net2 = trainer.peers
    name_mixed_inputs(monkeypatch, trace, None if cfg.mix_unlabeled else 2 * cfg.batch_size)
    B = cfg.batch_size
    split = Split(
        torch.arange(B), torch.full((B,), 0.75), torch.arange(B, 4 * B), torch.zeros(4 * B), torch.arange(4 * B)
    )
    epoch = cfg.warm_up
    trainer.set_learning_rates(epoch)
    net1.net.eval(), net2.net.train()  # whatever the modes before: the phase sets its own
    trainer.train_epoch(epoch, net1, net2, split)
    sgd_lr, wd, adam_lr, drop = ORIGINAL_STEP_SETTINGS[preset]
    sgd = {"lr": sgd_lr, "momentum": 0.9, "weight_decay": wd, "nesterov": False, "dampening": 0}
    adam = {"lr": adam_lr, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0, "amsgrad": False}
    assert trace.calls == dividemix_forwards("net1", "net2") + [
        # generative step on a fresh batch: the classifier first (train mode: BN statistics move), then the VAE
        ("net1", "train", "v", "grad"),
        ("net1.vae.z_encoder", "train", "v", "grad"),
        ("net1.vae.x_decoder", "train", "-", "grad"),
        ("net1.vae.t_decoder", "train", "other", "grad"),  # the reconstruction, not v
        # zero_grad of both optimisers, one backward, SGD step, then Adam step
        ("net1.sgd.zero_grad",),
        ("net1.adam.zero_grad",),
        ("net1.sgd.step", sgd, True),
        ("net1.adam.step", adam, True),
    ]
    assert trace.batch(trace._named[-1][1]) == "v" and len(trace._named[-1][1]) == 2 * B  # the VAE batch is 2B
    trainer.set_learning_rates(drop)
    assert net1.opt.param_groups[0]["lr"] == pytest.approx(sgd_lr / 10)
    assert net1.opt_vae.param_groups[0]["lr"] == adam_lr  # constant (the plan's decay starts at epoch 1000)
    trainer.set_learning_rates(drop - 1)
    assert net1.opt.param_groups[0]["lr"] == sgd_lr


@pytest.mark.parametrize("preset", ["cifar10", "clothing1m"])
def test_warmup_divide_and_evaluation_sequences(tmp_path, monkeypatch, preset):
    cfg, trainer, trace = make_trainer(preset, tmp_path, monkeypatch)
    net1, net2 = trainer.peers
    for peer in trainer.peers:
        trainer.warmup_epoch(0, peer)
    warm = [c for c in trace.calls if not c[0].endswith("zero_grad")]
    sgd = [c for c in warm if c[0].endswith(".step")]
    assert [c[0] for c in sgd] == ["net1.sgd.step"] * 2 + ["net2.sgd.step"] * 2
    assert [c for c in warm if len(c) == 4] == [
        ("net1", "train", "w0", "grad"),
        ("net1", "train", "w1", "grad"),
        ("net2", "train", "w0", "grad"),
        ("net2", "train", "w1", "grad"),
    ]  # the same loader object for both nets (CIFAR); Clothing1M draws a subset per net: here both named w*
    assert not any(c[0].startswith(("net1.adam", "net2.adam")) for c in trace.calls)  # no VAE in warm-up

    # Divide: net1 on every training sample, then net2, eval mode, no gradient, before either trains.
    trace.calls.clear()
    record = {"epoch": cfg.warm_up}
    for peer in trainer.peers:
        trainer.divide(peer, record)
    assert trace.forwards() == [
        ("net1", "eval", "e0", "no_grad"),
        ("net1", "eval", "e1", "no_grad"),
        ("net2", "eval", "e0", "no_grad"),
        ("net2", "eval", "e1", "no_grad"),
    ]
    # Test: net1(x) then net2(x) per batch, both in eval mode; validation (Clothing1M) likewise. The original's
    # val() runs net1 over the whole set before net2: in eval mode without gradient the order changes nothing.
    trace.calls.clear()
    net1.net.train(), net2.net.train()
    out = trainer.evaluate(cfg.warm_up)
    expected = [("net1", "eval", "t0", "no_grad"), ("net2", "eval", "t0", "no_grad")]
    if cfg.select_on_val:
        expected += [("net1", "eval", "val0", "no_grad"), ("net2", "eval", "val0", "no_grad")]
        assert {"val/net1/acc", "val/net2/acc"} <= set(out)
    assert trace.forwards() == expected


def test_fit_runs_the_phases_in_the_originals_order(tmp_path, monkeypatch):
    """Epoch 0 warm-up (net1, net2), test; epoch 1: divide net1, divide net2, train net1, train net2, test."""
    cfg, trainer, trace = make_trainer("cifar10", tmp_path, monkeypatch)
    trainer.cfg = cfg.replace(warm_up=1, num_epochs=2)
    phases: list[str] = []
    for name in ("warmup_epoch", "divide", "train_epoch", "evaluate"):
        method = getattr(trainer, name)

        def logged(*args, _name=name, _method=method):
            peer = next((a.name for a in args if hasattr(a, "net")), "")
            phases.append(f"{_name} {peer}".strip())
            return _method(*args)

        monkeypatch.setattr(trainer, name, logged)
    trainer.fit()
    assert phases == [
        "warmup_epoch net1", "warmup_epoch net2", "evaluate",
        "divide net1", "divide net2", "train_epoch net1", "train_epoch net2", "evaluate",
    ]  # fmt: skip
    trained = [c for c in trace.forwards() if c[3] == "grad" and c[0] in ("net1", "net2")]
    assert {c[1] for c in trained} == {"train"}
    # co-guessing: the trained net in train mode, its peer in eval mode, in each phase
    guesses = [c[:2] for c in trace.forwards("net1", "net2") if c[2] in ("u1", "u2")]
    assert (
        guesses == [("net1", "train")] * 2 + [("net2", "eval")] * 2 + [("net2", "train")] * 2 + [("net1", "eval")] * 2
    )


# ================================================================ hyper-parameters per preset ==============
# The original scripts' argparse defaults and hard-coded values (docs/design.md: Hyper-parameters), one row per preset.
ORIGINAL_HYPERPARAMETERS = {
    # backbone, vae_size, z_dim, B, alpha, lambda_u, p_threshold, T, warm_up, epochs, (w1, w2, w3, w4), warm-up penalty
    "cifar10": ("preact_resnet18", 32, 25, 64, 4.0, 25.0, 0.5, 0.5, 10, 300, (1.0, 1.0, 1e-5, 3e-4), False),
    "cifar100": ("preact_resnet18", 32, 25, 64, 4.0, 25.0, 0.5, 0.5, 30, 300, (1.0, 1.0, 1e-5, 3e-4), False),
    "animal10n": ("vgg19_bn", 64, 64, 64, 4.0, 25.0, 0.08, 0.5, 40, 300, (1.0, 8e-5, 8e-5, 8e-5), False),
    # Red: warm_up 30 (one stored version of the script has 1: README differences, row 27)
    "red_mini": ("preact_resnet18", 32, 64, 64, 4.0, 25.0, 0.5, 0.5, 30, 300, (1.0, 1.0, 3e-4, 3e-4), False),
    "clothing1m": ("resnet50", 224, 25, 32, 0.5, 0.0, 0.5, 0.5, 1, 80, (1.0, 1.0, 6e-6, 6e-6), True),
}


@pytest.mark.parametrize("preset", sorted(ORIGINAL_HYPERPARAMETERS))
def test_preset_hyperparameters_are_the_originals(preset):
    cfg = PRESETS[preset]
    backbone, size, z, B, alpha, lam_u, tau, T, warm, epochs, weights, penalty = ORIGINAL_HYPERPARAMETERS[preset]
    got = (cfg.backbone, cfg.vae_size, cfg.z_dim, cfg.batch_size, cfg.alpha, cfg.lambda_u, cfg.p_threshold, cfg.T)
    assert got == (backbone, size, z, B, alpha, lam_u, tau, T)
    assert (cfg.warm_up, cfg.num_epochs, cfg.warmup_penalty) == (warm, epochs, penalty)
    w = generative.loss_weights(cfg)
    assert (w["recon_weight"], w["noisy_label_weight"], w["y_prior_weight"], w["kl_weight"]) == weights
    assert (w["kl_reduction"], w["y_prior"]) == ("sum", "constant")
    # the original's quirks are on by default in every preset (README "Differences from the original code")
    assert not (cfg.gaussian_reparam or cfg.single_sigmoid or cfg.encoder_on_noisy_label or cfg.normalize_inputs)
    assert cfg.vae_batch == "random" and cfg.gumbel_tau == 1.0 and cfg.rampup_length == 16.0
    assert (cfg.gmm_max_iter, cfg.gmm_tol, cfg.gmm_reg_covar) == (10, 1e-2, 5e-4)
    assert cfg.mix_unlabeled == (preset != "clothing1m")
    assert cfg.select_on_val == cfg.vae_fixed_subset == (preset == "clothing1m")
    assert cfg.num_classes == {"cifar100": 100, "red_mini": 100, "clothing1m": 14}.get(preset, 10)


def test_generative_loss_per_preset_on_hand_made_inputs():
    """l1 + w2 CE + l3 + l4 of the original vae_loss, per preset weights, on inputs whose terms are known."""
    x = torch.full((2, 3, 2, 2), 0.25)
    x_hat = torch.full((2, 3, 2, 2), 0.5)  # CB(0.5) is uniform on [0, 1]: log density 0, l1 = 0
    noisy_logits = torch.zeros(2, 4)  # CE = log 4
    mu, log_var = torch.ones(2, 3), torch.zeros(2, 3)  # sum(1 + 0 - 1 - 1) = -6
    y_hat = torch.full((2, 4), 0.25)
    for preset, row in ORIGINAL_HYPERPARAMETERS.items():
        _, _, _, _, _, _, _, _, _, _, (w1, w2, w3, w4), _ = row
        out = generative.vae_objective(x, x_hat, noisy_logits, torch.tensor([0, 1]), mu, log_var, y_hat,
                                       num_classes=4, **generative.loss_weights(PRESETS[preset]))  # fmt: skip
        expected = w1 * 0.0 + w2 * math.log(4) - w3 * -math.log(1 / 4 + 1e-8) - w4 * -6.0
        assert out.loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-7), preset


def test_seeding_gives_the_originals_streams():
    """Animal-10N, Red Mini-ImageNet and Clothing1M seed ``random`` and torch with --seed (123); numpy they leave
    unseeded (here it is seeded too: README differences, row 13). The seeded streams are the original's."""
    import random

    from training.runtime import seed_everything

    random.seed(123), torch.manual_seed(123)
    expected = (random.random(), torch.rand(3), torch.randperm(10))
    seed_everything(123)
    assert random.random() == expected[0]
    assert torch.equal(torch.rand(3), expected[1]) and torch.equal(torch.randperm(10), expected[2])
    assert np.random.get_state()[1][0] == np.random.RandomState(123).get_state()[1][0]


# ================================================================ numerics of the penalties ================
def original_prior_penalty(logits: Tensor, K: int) -> Tensor:
    """The original's formula: prior * log(prior / mean softmax)."""
    prior = torch.ones(K) / K
    return torch.sum(prior * torch.log(prior / torch.softmax(logits, dim=1).mean(0)))


def test_penalties_equal_the_originals_and_stay_finite_where_a_probability_underflows():
    """A collapsed prediction (Clothing1M from scratch on a few hundred images): a class whose mean probability
    underflows to 0 makes the original's prior penalty inf and its NegEntropy NaN, which stopped the run.
    Both are evaluated in the log domain here: the original's values where those are finite, the exact value
    (float64 reference) where they are not."""
    moderate = torch.tensor([[2.0, -1.0, 0.5, 0.0], [0.3, 0.2, -2.0, 1.0]])
    assert dm.uniform_prior_penalty(moderate, 4).item() == pytest.approx(original_prior_penalty(moderate, 4).item())
    probs = torch.softmax(moderate, 1)
    assert dm.neg_entropy(moderate).item() == pytest.approx(torch.mean(torch.sum(probs.log() * probs, 1)).item())

    collapsed = torch.tensor([[60.0, 0.0, -60.0, 0.0], [55.0, 1.0, -70.0, 2.0]], requires_grad=True)
    assert torch.isinf(original_prior_penalty(collapsed.detach(), 4))
    p = torch.softmax(collapsed.detach(), 1)
    assert torch.isnan(torch.mean(torch.sum(p.log() * p, 1)))
    log_mean = torch.logsumexp(torch.log_softmax(collapsed.detach().double(), 1), 0) - math.log(2)
    exact = torch.sum(0.25 * (math.log(0.25) - log_mean)).item()  # about 29: a strong pull back, not inf
    penalty = dm.uniform_prior_penalty(collapsed, 4)
    assert penalty.item() == pytest.approx(exact, rel=1e-5)
    entropy = dm.neg_entropy(collapsed)
    assert torch.isfinite(entropy) and entropy.item() == pytest.approx(0.0, abs=1e-6)
    (penalty + entropy).backward()
    assert torch.isfinite(collapsed.grad).all() and collapsed.grad.abs().max() > 0
