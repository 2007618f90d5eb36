"""The one run configuration: a frozen dataclass, its command line, and its JSON form.

Precedence is dataclass default < dataset preset (entry script) < command line. Every magic number of the
original scripts is a field whose default is the original value; the CLI keeps the original flag spellings
(``--r``, ``--num_class``, ``--data_path``, ``--lambda_u``, ``--p_threshold``, ``--T``, ...), so the commands
of the original README work unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, get_args, get_origin, get_type_hints

METHODS = ("instancegm", "dividemix", "ce")
NOISE_MODES = ("instance", "sym", "asym", "human", "real")


class ConfigError(ValueError):
    """A configuration the run cannot start with; the message says what to change."""


@dataclass(frozen=True)
class Config:
    # ---------------- data ----------------
    dataset: str = "cifar10"  # dataset name: cifar10, cifar100, fashionmnist, animal10n, red_mini, clothing1m, ...
    data_path: str = "./cifar-10"  # dataset root folder (original flag --data_path)
    num_classes: int = 10  # K: number of classes (original flag --num_class)
    train_subset: int = 0  # use only the first N training samples (0: all); for quick runs
    balanced_subset: bool = False  # with train_subset: take N/K samples of each class instead of the first N
    test_subset: int = 0  # evaluate on the first N test images only (0: all); for quick CPU runs
    data_pipeline: str = "auto"  # auto | device (batched augmentation on the device) | pil (per-sample PIL)
    num_workers: int = 4  # DataLoader workers for the per-sample (PIL) pipelines
    saved: bool = (
        True  # Animal-10N / Red Mini-ImageNet: reuse the decoded-image cache (original flag; parsed as a real boolean)
    )
    num_batches: int = 1000  # Clothing1M: batches per epoch; subsets are num_batches * batch_size images
    # ---------------- label noise ----------------
    noise_mode: str = "instance"  # instance (Xia et al. IDN) | sym | asym | human (CIFAR-N file) | real
    r: float = 0.5  # synthetic noise rate (original flag --r); for Red Mini-ImageNet it selects the split
    noise_file: str = ""  # explicit label file: human (CIFAR-N .pt) labels, or a saved noisy-label array
    noise_key: str = ""  # key inside a CIFAR-N .pt dict (default worse_label / noisy_label)
    noise_dir: str = ""  # where generated noisy labels are cached (default: data_path)
    noise_seed: int = 123  # seed of the noise generator (the original seeds it with 123)
    noise_norm_std: float = 0.1  # sd of the truncated normal of per-sample flip rates (Xia et al.)
    # ---------------- model ----------------
    backbone: str = "preact_resnet18"  # classifier: preact_resnet18 | preact_resnet34 | vgg19_bn | resnet50
    width: int = 64  # PreAct ResNet base width (64 = the paper's ResNet-18; smaller for CPU runs)
    pretrained: bool = False  # ImageNet weights for resnet50 (Clothing1M); --no-pretrained turns them off
    weights_path: str = ""  # local file with the ImageNet weights (otherwise torchvision's cache)
    vae_size: int = 32  # input resolution of the generative model's architecture: 32, 64 or 224
    z_dim: int = 25  # d: latent size of the generative model
    channels_last: bool = False  # memory format for the convolutions (a speed option; same results)
    # ---------------- optimisation ----------------
    batch_size: int = 64  # B: labeled (and unlabeled) batch; warm-up and VAE batches are 2B
    lr: float = 0.02  # classifier SGD learning rate
    momentum: float = 0.9  # classifier SGD momentum
    weight_decay: float = 5e-4  # classifier SGD weight decay
    lr_drop_epoch: int = 150  # the classifier lr is divided by lr_drop_factor from this epoch on
    lr_drop_factor: float = 10.0  # step-schedule divisor
    vae_lr: float = 1e-3  # Adam lr of the generative model (the original's hard-coded effective value)
    vae_beta1: float = 0.9  # Adam beta1 of the generative model
    vae_beta2: float = 0.999  # Adam beta2 of the generative model
    # ---------------- DivideMix ----------------
    method: str = "instancegm"  # instancegm | dividemix (no generative part) | ce (cross-entropy only)
    p_threshold: float = 0.5  # tau: clean-probability threshold on the GMM posterior
    selection: str = (
        "gmm"  # gmm (p > p_threshold) | noise_rate: label the (1 - estimated noise rate) lowest-loss fraction
    )
    T: float = 0.5  # sharpening temperature
    alpha: float = 4.0  # MixMatch Beta(alpha, alpha) parameter
    lambda_u: float = 25.0  # weight of the unlabeled (L2) loss after the ramp
    rampup_length: float = 16.0  # epochs of the linear lambda_u ramp after warm-up
    mix_unlabeled: bool = True  # False: Clothing1M's labeled-only MixMatch, no Lu term
    warmup_penalty: bool = False  # add the negative-entropy confidence penalty to the warm-up CE
    gmm_max_iter: int = 10  # GaussianMixture max_iter
    gmm_tol: float = 1e-2  # GaussianMixture tol
    gmm_reg_covar: float = 5e-4  # GaussianMixture reg_covar
    loss_history: int = 5  # epochs of normalised losses averaged for the GMM at high noise
    history_noise_rate: float = 0.9  # r at which that averaging is used (the original: r == 0.9)
    # ---------------- generative (InstanceGM) ----------------
    recon_weight: float = 1.0  # w1: continuous-Bernoulli reconstruction term
    noisy_label_weight: float = 1.0  # w2: noisy-label cross-entropy of the head p(y~|x^, y^)
    y_prior_weight: float = 1e-5  # w3: "uniform prior on y" term (a constant in the original)
    kl_weight: float = 3e-4  # w4: Gaussian prior on z, -w4 * sum(1 + logvar - mu^2 - var)
    gumbel_tau: float = 1.0  # Gumbel-softmax temperature of the clean-label sample y^
    gaussian_reparam: bool = False  # fix: N(0,1) reparameterisation noise (original: Uniform[0,1))
    single_sigmoid: bool = False  # fix: one sigmoid on the decoder output (original: two)
    kl_reduction: str = "sum"  # sum (original: summed over the batch) | mean (per-sample mean)
    y_prior: str = "constant"  # constant (original, no gradient) | kl (KL of y^ to the uniform prior)
    encoder_on_noisy_label: bool = False  # condition q(z|x, .) on the noisy label (paper figure) not on y^
    vae_batch: str = "random"  # random: fresh 2B samples of the whole set (original) | dm: the DivideMix batch
    vae_fixed_subset: bool = False  # Clothing1M: VAE batches only from the epoch-0 warm-up subset (original)
    normalize_inputs: bool = False  # fix: normalise classifier inputs with dataset mean/std (original: none)
    # ---------------- schedule ----------------
    num_epochs: int = 300  # epochs run (the original's last loop iteration crashed, so it ran exactly these)
    warm_up: int = 10  # cross-entropy warm-up epochs
    select_on_val: bool = False  # keep best-validation weights per net and test them at the end (Clothing1M)
    # ---------------- run ----------------
    seed: int = 123  # seeds python, numpy and torch (CPU and CUDA)
    deterministic: bool = False  # cudnn deterministic mode instead of cudnn.benchmark
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "off"  # off | bf16 | fp16 autocast for the networks (losses and the GMM stay fp32)
    output_dir: str = "./runs"  # parent folder of run folders
    run_name: str = ""  # run folder name (default: derived from dataset, noise, method and seed)
    resume: str = ""  # "" | auto (this run's checkpoint if any) | path to a checkpoint.pt
    wandb: str = "off"  # off | offline | online
    wandb_project: str = "instanceGM"  # wandb project name
    log_interval: int = 50  # steps between progress-bar/loss updates (each one is a host sync)
    sync_bn: bool = False  # multi-process runs: SyncBatchNorm across processes (off: per-process BN, as on one GPU)
    smoke: bool = False  # tiny wiring run: a few batches, two epochs, CPU when no GPU, wandb off

    # ------------------------------------------------------------------
    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Config:
        """Rebuild a config from JSON; unknown keys (from a newer version) are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def validate(self) -> Config:
        """Raise ConfigError with a one-line fix for settings the run cannot use."""
        if self.method not in METHODS:
            raise ConfigError(f"--method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.noise_mode not in NOISE_MODES:
            raise ConfigError(f"--noise_mode {self.noise_mode!r}: choose one of {', '.join(NOISE_MODES)}")
        if self.noise_mode in ("instance", "sym", "asym") and not 0.0 <= self.r < 1.0:
            raise ConfigError(f"--r {self.r}: the noise rate must be in [0, 1), e.g. --r 0.4")
        if self.noise_mode == "human" and not self.noise_file:
            raise ConfigError("--noise_mode human needs --noise_file PATH (a CIFAR-N .pt file, e.g. CIFAR-10_human.pt)")
        if self.num_classes < 2:
            raise ConfigError(f"--num_class {self.num_classes}: need at least 2 classes")
        if self.batch_size < 1 or self.num_epochs < 1 or self.warm_up < 0:
            raise ConfigError("--batch_size and --num_epochs must be >= 1 and --warm_up >= 0")
        if self.method != "ce" and self.warm_up >= self.num_epochs:
            raise ConfigError(
                f"--warm_up {self.warm_up} >= --num_epochs {self.num_epochs}: no co-training epoch would run; "
                "lower --warm_up or raise --num_epochs"
            )
        if not 0.0 <= self.p_threshold <= 1.0:
            raise ConfigError(f"--p_threshold {self.p_threshold}: must be a probability in [0, 1]")
        if self.T <= 0 or self.alpha <= 0:
            raise ConfigError("--T and --alpha must be > 0")
        for name, choices in (
            ("amp", ("off", "bf16", "fp16")),
            ("wandb", ("off", "offline", "online")),
            ("kl_reduction", ("sum", "mean")),
            ("y_prior", ("constant", "kl")),
            ("vae_batch", ("random", "dm")),
            ("data_pipeline", ("auto", "device", "pil")),
            ("selection", ("gmm", "noise_rate")),
        ):
            if getattr(self, name) not in choices:
                raise ConfigError(f"--{name} {getattr(self, name)!r}: choose one of {', '.join(choices)}")
        if self.selection == "noise_rate" and self.method == "ce":
            raise ConfigError(
                "--selection noise_rate selects samples for co-training: use --method instancegm or dividemix"
            )
        if self.vae_size not in (32, 64, 224):
            raise ConfigError(f"vae_size {self.vae_size}: the generative model exists for 32, 64 and 224 pixels")
        return self

    def default_run_name(self) -> str:
        """The run folder name when --run_name is not given: what distinguishes runs of one dataset."""
        if self.noise_mode in ("instance", "sym", "asym"):
            noise = f"{self.noise_mode}{self.r:g}"
        elif self.noise_mode == "human":
            noise = f"human-{self.noise_key or 'default'}"
        else:
            noise = f"real{self.r:g}" if self.dataset.startswith("red") else "real"
        name = f"{self.dataset}_{noise}_{self.method}_seed{self.seed}"
        if self.smoke:
            name += "_smoke"
        return re.sub(r"[^A-Za-z0-9_.+-]", "-", name)


# Original flag spellings (and the other scripts' variants) -> field names.
ALIASES: dict[str, str] = {
    "num_class": "num_classes",
    "learning_rate": "lr",
    "vae_learning_rate": "vae_lr",
    "epochs": "num_epochs",
    "warmup": "warm_up",
    # torchrun's own parser takes "--r" for an abbreviation of its --rdzv* options: use --noise_rate there.
    "noise_rate": "r",
}
# Flags the original scripts accepted that carry no information here; accepted so old commands still run.
IGNORED_FLAGS = ("id", "gpuid")


def bool_flag(value: str) -> bool:
    """Parse a boolean the way a person writes it (the original's type=bool made '--saved False' true)."""
    v = str(value).strip().lower()
    if v in ("1", "true", "yes", "on", "y", "t"):
        return True
    if v in ("0", "false", "no", "off", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def _field_parser(tp: Any):
    if tp is bool:
        return bool_flag
    if tp in (int, float, str):
        return tp
    origin = get_origin(tp)
    if origin is not None:  # Optional[...] etc.
        inner = [a for a in get_args(tp) if a is not type(None)]
        return _field_parser(inner[0])
    return str


def build_parser(base: Config, description: str = "") -> argparse.ArgumentParser:
    """An argparse parser with one flag per Config field; defaults come from ``base`` (the preset)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = get_type_hints(Config)
    reverse: dict[str, list[str]] = {}
    for alias, name in ALIASES.items():
        reverse.setdefault(name, []).append(alias)
    for f in fields(Config):
        flags = [f"--{f.name}"] + [f"--{a}" for a in reverse.get(f.name, [])]
        kind = hints[f.name]
        kwargs: dict[str, Any] = dict(dest=f.name, default=getattr(base, f.name), type=_field_parser(kind))
        if kind is bool:
            kwargs["nargs"] = "?"
            kwargs["const"] = True  # "--smoke" alone means true; "--smoke false" also works
            flags.append(f"--no-{f.name.replace('_', '-')}")
            parser.add_argument(*flags[:-1], **kwargs)
            parser.add_argument(flags[-1], dest=f.name, action="store_false", help=argparse.SUPPRESS)
        else:
            parser.add_argument(*flags, **kwargs)
    for name in IGNORED_FLAGS:
        parser.add_argument(f"--{name}", default=None, help="accepted for compatibility; unused")
    return parser


def parse_cli(
    presets: Mapping[str, Config], default: str, argv: Sequence[str] | None = None, description: str = ""
) -> Config:
    """Pick the preset named by --dataset (or ``default``), then apply every other flag on top of it."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--dataset", default=default)
    known, _ = pre.parse_known_args(argv)
    key = known.dataset.lower().replace("-", "").replace("_", "")
    lookup = {k.lower().replace("-", "").replace("_", ""): k for k in presets}
    if key not in lookup:
        raise ConfigError(f"--dataset {known.dataset!r}: this script knows {', '.join(presets)}")
    base = presets[lookup[key]]
    parser = build_parser(base, description)
    args = parser.parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in fields(Config)}
    values["dataset"] = base.dataset  # canonical spelling of the preset
    if args.gpuid is not None and values["device"] == "auto":
        values["device"] = f"cuda:{args.gpuid}"
    if args.id and not values["run_name"]:
        values["run_name"] = args.id
    return Config(**values).validate()


def config_to_json(cfg: Config, **extra: Any) -> str:
    return json.dumps({**cfg.to_dict(), **extra}, indent=2, sort_keys=True)
