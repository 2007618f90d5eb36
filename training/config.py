"""The one run configuration: a frozen dataclass, its command line, and its JSON form.

Precedence is dataclass default < dataset preset (entry script) < command line. Every magic number of the
original scripts is a field whose default is the original value; the CLI keeps the original flag spellings
(``--r``, ``--num_class``, ``--data_path``, ``--lambda_u``, ``--p_threshold``, ``--T``, ...), so the commands
of the original README work unchanged. Each field is declared with ``opt(default, help)``: its help text is
its ``--help`` line (grouped by SECTIONS), so a new field needs one to pass the tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, get_args, get_origin, get_type_hints

METHODS = ("instancegm", "dividemix", "ce")
NOISE_MODES = ("instance", "sym", "asym", "human", "real")
SELECTIONS = ("gmm", "noise_rate")


class ConfigError(ValueError):
    """A configuration the run cannot start with; the message says what to change."""


def opt(default: Any, help: str, choices: Sequence[Any] | None = None) -> Any:
    """A Config field with its --help text (and, for an enumeration, its allowed values): one source for both."""
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    return dataclasses.field(default=default, metadata=metadata)


# The --help sections, in field order: (title, first field of the section, what the section is about).
SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("data", "dataset", "which images, and how much of them"),
    ("label noise", "noise_mode", "where the noisy labels come from"),
    ("model", "backbone", "the two classifiers and their generative models"),
    ("optimisation", "batch_size", "SGD for the classifiers, Adam for the generative models"),
    (
        "DivideMix",
        "method",
        "each net's per-sample losses -> 2-component GMM -> clean/noisy split for the other net -> MixMatch",
    ),
    (
        "generative model (InstanceGM)",
        "recon_weight",
        "per classifier, q(z|x,y^), p(x|z,y^) and p(y~|x^,y^); its loss is added to the DivideMix loss",
    ),
    ("schedule", "num_epochs", "epochs: cross-entropy warm-up, then divide + co-train every epoch"),
    ("run and output", "seed", "seeding, device, the run folder, dashboards"),
    ("speed", "data_pipeline", "options for speed (amp also changes the numerics)"),
)


@dataclass(frozen=True)
class Config:
    # ---------------- data ----------------
    dataset: str = opt("cifar10", "preset of the entry script (its defaults are the ones shown here)")
    data_path: str = opt("./cifar-10", "dataset root folder (original flag --data_path)")
    num_classes: int = opt(10, "K: number of classes (original flag --num_class)")
    train_subset: int = opt(0, "train on the first N training samples only (0: all); for quick runs")
    balanced_subset: bool = opt(False, "with --train_subset: take N/K samples of each class instead of the first N")
    test_subset: int = opt(0, "evaluate on the first N test images only (0: all); for quick CPU runs")
    saved: bool = opt(
        True, "Animal-10N / Red Mini-ImageNet / image folders: reuse the decoded-image cache (false: decode again)"
    )
    num_batches: int = opt(1000, "Clothing1M: batches per epoch; its subsets are num_batches x batch_size images")
    # ---------------- label noise ----------------
    noise_mode: str = opt(
        "instance",
        "instance: Xia et al. part-dependent noise (the paper's IDN); sym/asym: DivideMix's symmetric/"
        "asymmetric noise; human: CIFAR-N labels (--noise_file); real: the dataset's own labels",
        NOISE_MODES,
    )
    r: float = opt(0.5, "synthetic noise rate (original flag --r; --noise_rate under torchrun); Red: the split")
    noise_file: str = opt(
        "",
        "explicit label file: CIFAR-N .pt (--noise_mode human), a saved noisy-label array, or the corrected labels "
        "of predict --relabel (also with --noise_mode real)",
    )
    noise_key: str = opt(
        "", "key inside a CIFAR-N .pt dict (empty: worse_label for CIFAR-10, noisy_label for CIFAR-100)"
    )
    noise_dir: str = opt(
        "",
        "where generated noisy labels are cached (empty: --data_path, or ~/.cache/instancegm/noise if read-only)",
    )
    noise_seed: int = opt(123, "seed of the noise generator (the original seeds it with 123)")
    noise_norm_std: float = opt(0.1, "sd of the truncated normal of per-sample flip rates (Xia et al.)")
    # ---------------- model ----------------
    backbone: str = opt(
        "preact_resnet18",
        "classifier architecture (two of them are co-trained)",
        ("preact_resnet18", "preact_resnet34", "vgg19_bn", "resnet50"),
    )
    width: int = opt(64, "PreAct ResNet base width (64: the paper's ResNet-18; 8-16 for CPU runs)")
    pretrained: bool = opt(False, "ImageNet weights for resnet50 (Clothing1M); --no-pretrained turns them off")
    weights_path: str = opt("", "local file with the ImageNet weights (otherwise torchvision's cache)")
    vae_size: int = opt(32, "input resolution of the generative model's architecture", (32, 64, 224))
    z_dim: int = opt(25, "d: latent size of the generative model")
    # ---------------- optimisation ----------------
    batch_size: int = opt(64, "B: labeled (and unlabeled) batch; warm-up and generative batches are 2B")
    lr: float = opt(0.02, "classifier SGD learning rate")
    momentum: float = opt(0.9, "classifier SGD momentum")
    weight_decay: float = opt(5e-4, "classifier SGD weight decay")
    lr_drop_epoch: int = opt(150, "the classifier lr is divided by --lr_drop_factor from this epoch on (0-based)")
    lr_drop_factor: float = opt(10.0, "step-schedule divisor")
    vae_lr: float = opt(1e-3, "Adam lr of the generative model (the original's hard-coded effective value)")
    vae_beta1: float = opt(0.9, "Adam beta1 of the generative model")
    vae_beta2: float = opt(0.999, "Adam beta2 of the generative model")
    # ---------------- DivideMix ----------------
    method: str = opt(
        "instancegm",
        "instancegm: DivideMix + generative model (the paper); dividemix: without the generative part; "
        "ce: cross-entropy only (a baseline)",
        METHODS,
    )
    p_threshold: float = opt(0.5, "tau: a sample is 'clean' (labeled set) when its GMM clean probability exceeds it")
    selection: str = opt(
        "gmm",
        "gmm: labeled = GMM clean probability > p_threshold (the original); noise_rate: the (1 - estimated noise "
        "rate) lowest-loss fraction (Garg et al., ECCV 2024; see the README)",
        SELECTIONS,
    )
    T: float = opt(0.5, "sharpening temperature of the co-guessed / refined labels")
    alpha: float = opt(4.0, "MixMatch Beta(alpha, alpha) mixing parameter")
    lambda_u: float = opt(25.0, "weight of the unlabeled (L2) loss after the ramp")
    rampup_length: float = opt(16.0, "epochs of the linear lambda_u ramp after warm-up")
    mix_unlabeled: bool = opt(True, "false: Clothing1M's labeled-only MixMatch, no Lu term")
    warmup_penalty: bool = opt(False, "add DivideMix's negative-entropy confidence penalty to the warm-up CE")
    gmm_max_iter: int = opt(10, "GaussianMixture max_iter")
    gmm_tol: float = opt(1e-2, "GaussianMixture tol")
    gmm_reg_covar: float = opt(5e-4, "GaussianMixture reg_covar")
    loss_history: int = opt(5, "epochs of normalised losses averaged for the GMM at high noise")
    history_noise_rate: float = opt(0.9, "r at which that averaging is used (the original: r == 0.9)")
    # ---------------- generative (InstanceGM) ----------------
    recon_weight: float = opt(1.0, "w1: continuous-Bernoulli reconstruction term")
    noisy_label_weight: float = opt(1.0, "w2: noisy-label cross-entropy of the head p(y~|x^, y^)")
    y_prior_weight: float = opt(1e-5, "w3: 'uniform prior on y' term (a constant in the original)")
    kl_weight: float = opt(3e-4, "w4: Gaussian prior on z, -w4 * sum(1 + logvar - mu^2 - var)")
    gumbel_tau: float = opt(1.0, "Gumbel-softmax temperature of the clean-label sample y^")
    gaussian_reparam: bool = opt(False, "fix: N(0,1) reparameterisation noise (original: Uniform[0,1))")
    single_sigmoid: bool = opt(False, "fix: one sigmoid on the decoder output (original: two)")
    kl_reduction: str = opt(
        "sum", "sum: the KL on z summed over the batch (original); mean: per-sample mean", ("sum", "mean")
    )
    y_prior: str = opt(
        "constant",
        "constant: the original's term without gradient; kl: KL of y^ to the uniform prior",
        ("constant", "kl"),
    )
    encoder_on_noisy_label: bool = opt(False, "condition q(z|x, .) on the noisy label (the paper's figure), not on y^")
    vae_batch: str = opt(
        "random",
        "random: fresh 2B samples of the whole training set per step (original); dm: the DivideMix batch",
        ("random", "dm"),
    )
    vae_fixed_subset: bool = opt(
        False, "Clothing1M: generative batches only from the epoch-1 warm-up subset (original)"
    )
    normalize_inputs: bool = opt(False, "fix: normalise classifier inputs with dataset mean/std (original: none)")
    # ---------------- schedule ----------------
    num_epochs: int = opt(300, "epochs run (the original's last loop iteration crashed, so it ran exactly these)")
    warm_up: int = opt(10, "cross-entropy warm-up epochs (on all samples, before the first divide)")
    select_on_val: bool = opt(False, "keep best-validation weights per net and test them at the end (Clothing1M)")
    # ---------------- run ----------------
    seed: int = opt(123, "seeds python, numpy and torch (CPU and CUDA)")
    deterministic: bool = opt(False, "cudnn deterministic mode instead of cudnn.benchmark")
    device: str = opt("auto", "auto (CUDA when available) | cpu | cuda | cuda:N")
    output_dir: str = opt("./runs", "parent folder of run folders")
    run_name: str = opt("", "run folder name (empty: <dataset>_<noise>_<method>_seed<seed>)")
    resume: str = opt(
        "",
        "a run folder or a checkpoint.pt: continue that run with the settings it was started with (flags given "
        "change them, and are checked against the checkpoint); auto: continue the run these flags name, if it "
        "has a checkpoint",
    )
    allow_config_change: bool = opt(
        False, "with --resume: continue with changed hyper-parameters (config.json's config_history keeps each)"
    )
    lock_stale_min: float = opt(
        10.0,
        "a run.lock of another host (node, container) whose heartbeat (refreshed every minute) is older than this "
        "is taken over, with a warning; 0: never (the lock of a dead process on this host always is)",
    )
    force_unlock: bool = opt(
        False, "take over the run folder's lock of another host now (you know that run has stopped)"
    )
    wandb: str = opt("off", "wandb dashboards (offline: into the run folder, no account)", ("off", "offline", "online"))
    wandb_project: str = opt("instanceGM", "wandb project name")
    sync_bn: bool = opt(False, "multi-process runs: SyncBatchNorm across processes (off: per-process BN)")
    smoke: bool = opt(
        False,
        "wiring check (~30 s for Fashion-MNIST on 2 CPU cores): 2 epochs on 256 training and 256 test images, "
        "batch <= 16 (fewer images and smaller batches at 64 and 224 pixels), width <= 16, wandb off; says "
        "nothing about accuracy",
    )
    # ---------------- speed ----------------
    data_pipeline: str = opt(
        "auto",
        "auto: device for in-memory datasets; device: batched augmentation on the device; pil: per-sample PIL",
        ("auto", "device", "pil"),
    )
    num_workers: int = opt(4, "DataLoader workers for the per-sample (PIL) pipelines")
    channels_last: bool = opt(False, "channels-last memory format for the convolutions (same results up to rounding)")
    eval_batch_size: int = opt(
        0, "batch of the no-grad passes (divide, test); 0: B on the CPU (fastest there), max(256, 2B) on a GPU"
    )
    amp: str = opt(
        "off",
        "autocast for the networks (losses and the GMM stay fp32; results change); CPU bf16: 20x slower on AVX2, "
        "1.3x faster with AMX",
        ("off", "bf16", "fp16"),
    )
    tf32: str = opt(
        "conv",
        "TF32 on Ampere and newer GPUs: conv: cuDNN convolutions only (PyTorch's default since 1.12; the original's "
        "convolutions under every PyTorch); all: matmuls too (PyTorch <= 1.11); off: IEEE fp32 throughout",
        ("conv", "all", "off"),
    )
    log_interval: int = opt(50, "steps between progress-bar/loss updates (each one is a host sync)")
    threads: int = opt(
        0,
        "torch intra-op CPU threads (0: torch's default, one per core); 1 is faster on a CPU that other jobs "
        "share (README, Quick start); results are the same up to rounding",
    )

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
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices is not None and getattr(self, f.name) not in choices:
                allowed = ", ".join(str(c) for c in choices)
                raise ConfigError(f"--{f.name} {getattr(self, f.name)!r}: choose one of {allowed}")
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
        if self.threads < 0:
            raise ConfigError(f"--threads {self.threads}: pass a number of threads >= 1, or 0 for torch's default")
        if self.selection == "noise_rate" and self.method == "ce":
            raise ConfigError(
                "--selection noise_rate selects samples for co-training: use --method instancegm or dividemix"
            )
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
# Flags of the original scripts with no field of their own (parse_cli maps them onto fields).
COMPAT_FLAGS: dict[str, str] = {
    "id": "the original's run id: names the run folder when --run_name is not given",
    "gpuid": "the original's GPU index: the same as --device cuda:N",
}


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


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help that keeps the description's line breaks (example commands) and shows each option's default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and action.default not in (None, argparse.SUPPRESS) and "%(default)" not in text:
            text += f" (default: {show_default(action.default)})"
        return text


def show_default(value: Any) -> str:
    """A default as it is typed on the command line (``%`` escaped for argparse)."""
    if isinstance(value, bool):
        shown = str(value).lower()
    elif value == "":
        shown = '""'
    elif isinstance(value, (list, tuple)):
        shown = " ".join(str(v) for v in value)
    else:
        shown = str(value)
    return shown.replace("%", "%%")


def field_help(f: dataclasses.Field) -> str:
    """The --help text of a Config field ("" when it has none, which tests/test_cli_help.py reports)."""
    return f.metadata.get("help", "")


_METAVARS = {int: "N", float: "X", str: "VALUE"}


class _OneLineErrors(argparse.ArgumentParser):
    """Bad flags end like every other bad input: one line (``error: ...``), exit code 2, via ConfigError."""

    def error(self, message: str):
        raise ConfigError(f"{message} (python {self.prog} --help lists every option)")


def build_parser(
    base: Config, description: str = "", dataset_names: Sequence[str] = (), prog: str | None = None
) -> argparse.ArgumentParser:
    """An argparse parser with one flag per Config field, grouped by SECTIONS; defaults come from ``base``."""
    usage = "%(prog)s [--dataset NAME] [--OPTION VALUE ...]"
    parser = _OneLineErrors(prog=prog, description=description, usage=usage, formatter_class=HelpFormatter)
    hints = get_type_hints(Config)
    reverse: dict[str, list[str]] = {}
    for alias, name in ALIASES.items():
        reverse.setdefault(name, []).append(alias)
    starts = {first: (title, about) for title, first, about in SECTIONS}
    group: Any = parser
    for f in fields(Config):
        if f.name in starts:
            group = parser.add_argument_group(*starts[f.name])
        flags = [f"--{f.name}"] + [f"--{a}" for a in reverse.get(f.name, [])]
        kind = hints[f.name]
        text = (field_help(f) or "(no help text)").replace("%", "%%")
        if f.name == "dataset" and dataset_names:
            text += f"; this script knows {', '.join(dataset_names)}"
        kwargs: dict[str, Any] = dict(dest=f.name, default=getattr(base, f.name), type=_field_parser(kind), help=text)
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]  # shown as {a,b,c}
        elif kind in _METAVARS:
            kwargs["metavar"] = _METAVARS[kind]
        if kind is bool:
            kwargs.update(nargs="?", const=True, metavar="true|false")  # "--smoke" alone means true
            group.add_argument(*flags, **kwargs)
            group.add_argument(
                f"--no-{f.name.replace('_', '-')}", dest=f.name, action="store_false", help=argparse.SUPPRESS
            )
        else:
            group.add_argument(*flags, **kwargs)
        if f.name == "run_name":
            for name, text in COMPAT_FLAGS.items():
                group.add_argument(f"--{name}", default=None, help=text, metavar=name.upper().replace("GPUID", "N"))
    return parser


def parse_cli(
    presets: Mapping[str, Config],
    default: str,
    argv: Sequence[str] | None = None,
    description: str = "",
    restore: Callable[[str], Mapping[str, Any]] | None = None,
) -> Config:
    """Pick the preset named by --dataset (or ``default``), then apply every other flag on top of it.

    ``restore`` maps a ``--resume`` run folder or checkpoint to the settings saved with it: those then take the
    preset's place, so a run continues with its own settings, and only the flags given change them (the
    checkpoint is checked against the result before anything runs).
    """
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # "--r 0.4" is not "--resume 0.4"
    pre.add_argument("--dataset", default=None)
    pre.add_argument("--resume", default="")
    known, _ = pre.parse_known_args(argv)
    saved = restore(known.resume) if restore is not None and known.resume not in ("", "auto") else None
    name = known.dataset or (str(saved.get("dataset", default)) if saved is not None else default)
    key = name.lower().replace("-", "").replace("_", "")
    lookup = {k.lower().replace("-", "").replace("_", ""): k for k in presets}
    if key not in lookup:
        if known.dataset is None and saved is not None:
            raise ConfigError(
                f"--resume {known.resume}: a run of --dataset {name}, which this script does not train "
                f"(it knows {', '.join(presets)}); continue it with the entry script that started it"
            )
        raise ConfigError(f"--dataset {name!r}: this script knows {', '.join(presets)}")
    base = presets[lookup[key]]
    if saved is not None:
        base = Config.from_dict({**saved, "dataset": base.dataset})
    parser = build_parser(base, description, dataset_names=list(presets))
    args = parser.parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in fields(Config)}
    values["dataset"] = base.dataset  # canonical spelling of the preset
    if saved is not None:  # the checkpoint a run folder named, not the folder
        values["resume"] = base.resume
    if args.gpuid is not None and values["device"] == "auto":
        values["device"] = f"cuda:{args.gpuid}"
    if args.id and not values["run_name"]:
        values["run_name"] = args.id
    return Config(**values).validate()


def config_to_json(cfg: Config, **extra: Any) -> str:
    return json.dumps({**cfg.to_dict(), **extra}, indent=2, sort_keys=True)
