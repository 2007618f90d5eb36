"""Estimated device hours of the paper's grids, from the arithmetic of one run and a measured throughput.

The arithmetic of a run is counted, not guessed: the forward FLOPs per image of each classifier and
generative model are measured with ``torch.utils.flop_counter`` on the real models, and the passes of one
epoch follow the engine (docs/design.md: Where the compute goes): a co-training step of B labeled + B unlabeled
samples makes 6B no-grad classifier passes (co-guessing, refinement), 4B (Clothing1M: 2B) MixMatch passes with
backward (x3) and, for InstanceGM, 2B classifier and generative passes with backward; each net does labeled/B
steps, with the labeled set taken as (1 - noise) of the samples it divides; every epoch adds the per-sample losses
of the whole training set (divide) and the test (and validation) passes; warm-up epochs are 3 passes per training
image and net.

The rate that turns FLOPs into hours comes from ``benchmarks/throughput.py``'s JSON (the InstanceGM step of its
``device`` data path): measured on your GPU with ``python benchmarks/throughput.py --device cuda``, or, without
one, an assumed sustained rate (``--tflops``), which makes every figure an estimate.

    python benchmarks/sweep_cost.py                                         # assumed 20 TFLOP/s per GPU
    python benchmarks/sweep_cost.py --throughput benchmarks/results/throughput_cuda_w64_b64_off.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from training.grid import load_grid  # noqa: E402

CPU_THROUGHPUT = ROOT / "benchmarks" / "results" / "throughput_cpu_w16_b64_off.json"


@dataclass(frozen=True)
class Recipe:
    """What one run of a dataset's preset computes: sizes from the datasets, the rest from the preset itself."""

    backbone: str
    image: int
    classes: int
    z_dim: int
    train: int  # images each net divides per epoch (Clothing1M: its per-epoch subset)
    warmup_images: int  # images each net trains on per warm-up epoch
    eval_images: int  # test (+ validation) images per epoch, through both nets
    batch: int
    epochs: int
    warm_up: int
    mix_unlabeled: bool = True
    real_noise: float | None = None  # real-noise datasets: the (approximate) noise rate


def preset_recipe(
    script: str, dataset: str, train: int, warmup_images: int, eval_images: int, real_noise: float | None = None
) -> Recipe:
    """The recipe of ``script``'s preset ``dataset``, read from the preset users run (one source of truth)."""
    cfg = importlib.import_module(script).PRESETS[dataset]
    return Recipe(
        cfg.backbone,
        cfg.vae_size,
        cfg.num_classes,
        cfg.z_dim,
        train,
        warmup_images,
        eval_images,
        cfg.batch_size,
        cfg.num_epochs,
        cfg.warm_up,
        cfg.mix_unlabeled,
        real_noise,
    )


RECIPES = {
    "cifar10": preset_recipe("instanceGM", "cifar10", 50_000, 50_000, 10_000),
    "cifar100": preset_recipe("instanceGM", "cifar100", 50_000, 50_000, 10_000),
    "red_mini": preset_recipe("instanceGM_redMini", "red_mini", 50_000, 50_000, 5_000),
    "animal10n": preset_recipe("instanceGM_animal10N", "animal10n", 50_000, 50_000, 5_000, real_noise=0.08),
    # 1000 batches: divide on 32,000 images, warm up on 64,000; 14,313 validation + 10,526 test images.
    "clothing1m": preset_recipe("instanceGM_clothing1M", "clothing1m", 32_000, 64_000, 24_839, real_noise=0.38),
}


def forward_flops(backbone: str, image: int, classes: int, z_dim: int, width: int = 64) -> tuple[float, float]:
    """Forward FLOPs per image of the classifier and of the generative model (encoder, decoder, noisy head)."""
    from models import build_classifier, build_vae

    opts = {"width": width} if backbone.startswith("preact") else {"pretrained": False, "weights_path": None}
    net = build_classifier(backbone, classes, **opts).eval()
    vae = build_vae(image, classes, z_dim).eval()
    x = torch.rand(2, 3, image, image)

    def count(fn) -> float:
        with torch.no_grad(), FlopCounterMode(display=False) as mode:
            fn()
        return mode.get_total_flops() / len(x)

    net_flops = count(lambda: net(x))
    return net_flops, count(lambda: vae(x, net)) - net_flops


def step_flops(net: float, vae: float, batch: int, method: str, mix_unlabeled: bool = True) -> float:
    """One co-training step of one net (forward = 1, backward = 2 units)."""
    passes = 6 * batch * net + 3 * (4 if mix_unlabeled else 2) * batch * net
    if method == "instancegm":
        passes += 3 * 2 * batch * (net + vae)
    return passes


def run_flops(recipe: Recipe, method: str, noise: float, net: float, vae: float) -> float:
    labeled = (1.0 - noise) * recipe.train
    train_epoch = 2 * (labeled / recipe.batch) * step_flops(net, vae, recipe.batch, method, recipe.mix_unlabeled)
    per_epoch_eval = 2 * recipe.eval_images * net
    warm = 2 * 3 * recipe.warmup_images * net + per_epoch_eval
    co = train_epoch + 2 * recipe.train * net + per_epoch_eval
    return recipe.warm_up * warm + (recipe.epochs - recipe.warm_up) * co


def measured_rate(path: Path) -> tuple[float, str]:
    """Sustained FLOP/s of the InstanceGM step in a throughput.py result (its width, batch and device)."""
    data = json.loads(path.read_text())
    settings = data["settings"]
    step = next(p for p in data["phases"] if p["path"] == "device" and p["phase"] == "igm step")
    net, vae = forward_flops("preact_resnet18", 32, settings["num_classes"], 25, settings["width"])
    flops = step_flops(net, vae, settings["batch_size"], "instancegm")
    env = data["environment"]
    where = env.get("gpu") or f"{env.get('cpu', 'cpu')} ({env.get('cpu_capability', '')}, {env.get('cpu_count')} cores)"
    return flops / (step["ms_median"] / 1000.0), f"{where}, width {settings['width']}, batch {settings['batch_size']}"


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--throughput", type=Path, help="a benchmarks/throughput.py JSON measured on the GPU to cost")
    p.add_argument("--tflops", type=float, default=20.0, help="assumed sustained TFLOP/s without --throughput")
    p.add_argument("--grids", nargs="+", default=["cifar10_idn", "cifar100_idn", "red_mini", "animal10n", "clothing1m"])
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    if CPU_THROUGHPUT.exists():
        rate, where = measured_rate(CPU_THROUGHPUT)
        print(f"FLOP model check: the measured CPU InstanceGM step ({where}) sustains {rate / 1e9:.0f} GFLOP/s")
    if args.throughput:
        rate, where = measured_rate(args.throughput)
        basis = f"measured: {rate / 1e12:.1f} TFLOP/s sustained ({where})"
    else:
        rate, basis = args.tflops * 1e12, f"ESTIMATE: an assumed {args.tflops:g} TFLOP/s sustained per GPU"
    print(f"hours at {basis}\n")
    print("| grid | runs | PFLOP per run (min–max) | GPU h per run (min–max) | GPU h, whole grid |")
    print("|---|---|---|---|---|")
    rows, models = [], {}
    for name in args.grids:
        grid = load_grid(name)
        recipe = RECIPES[grid.flags["dataset"]]
        key = (recipe.backbone, recipe.image, recipe.classes, recipe.z_dim)
        models.setdefault(key, forward_flops(*key))
        flops = []
        for cell in grid.cells():
            noise = recipe.real_noise if recipe.real_noise is not None else dict(cell.flags).get("r", 0.5)
            flops.append(run_flops(recipe, cell.method, float(noise), *models[key]))
        hours = [f / rate / 3600 for f in flops]
        row = {"grid": name, "runs": len(flops), "pflop": (min(flops) / 1e15, max(flops) / 1e15)}
        row |= {"hours": (min(hours), max(hours)), "total_hours": sum(hours)}
        rows.append(row)
        print(
            f"| {name} | {len(flops)} | {row['pflop'][0]:.0f}–{row['pflop'][1]:.0f} | "
            f"{row['hours'][0]:.1f}–{row['hours'][1]:.1f} | {row['total_hours']:.0f} |"
        )
    return rows


if __name__ == "__main__":
    main()
