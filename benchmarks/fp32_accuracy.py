"""How far each fp32 option's loss and gradient are from a float64 reference, for one PreAct ResNet-18 training
step: the yardstick for "within float rounding". Two fp32 runs that differ only in summation order both sit at
some distance from the exact result; an option is within rounding when its distance is of the default's order.

    python benchmarks/fp32_accuracy.py --width 64          # ~1 min on 2 cores

The float64 reference is the same network, weights and batch in double precision (contiguous memory format).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from models.memory_format import channels_last_problem  # noqa: E402
from models.preact_resnet import preact_resnet18  # noqa: E402

FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def step(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Loss and flattened parameter gradient of one cross-entropy step in train mode (BatchNorm batch statistics)."""
    net.train()
    net.zero_grad()
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    return float(loss.detach()), torch.cat([p.grad.flatten().double() for p in net.parameters()])


def measure(width: int, batch: int, seed: int) -> list[dict]:
    torch.manual_seed(seed)
    net = preact_resnet18(10, width)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    ref_loss, ref_grad = step(copy.deepcopy(net).double(), x.double(), y)
    rows = []
    for name, fmt in FORMATS.items():
        problem = channels_last_problem(net, "cpu") if fmt is torch.channels_last else ""
        if problem:  # a native crash (or wrong gradients) on AVX2 CPUs: a row that says why, never a dead process
            rows.append({"option": name, "skipped": problem})
            continue
        loss, grad = step(copy.deepcopy(net).to(memory_format=fmt), x.contiguous(memory_format=fmt), y)
        rel = float((grad - ref_grad).norm() / ref_grad.norm())
        rows.append({"option": name, "loss_abs_err": abs(loss - ref_loss), "grad_rel_l2_err": rel})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default="", help="JSON path (default: print only)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [dict(seed=s, **row) for s in args.seeds for row in measure(args.width, args.batch, s)]
    print(f"PreAct ResNet-18 width {args.width}, batch {args.batch}: fp32 against float64\n")
    print("| option | seed | loss abs error | gradient rel. L2 error |\n|---|---|---|---|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['option']} | {r['seed']} | skipped: {r['skipped']} | |")
        else:
            print(f"| {r['option']} | {r['seed']} | {r['loss_abs_err']:.2e} | {r['grad_rel_l2_err']:.2e} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "torch": torch.__version__, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
