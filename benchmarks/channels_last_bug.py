"""The smallest reproducer of the CPU channels-last crash that ``--channels_last`` refuses (models/memory_format.py).

One ``Conv2d(C_in, 8, 1, stride=2)`` in channels-last format, its weight gradient compared with the contiguous
format's, for each C_in and thread count, each case in its own process (a case may segfault, abort or hang).
``--isa AVX2`` caps oneDNN's instruction set (``ONEDNN_MAX_CPU_ISA``), which reproduces the AVX2-only CPUs' kernels
on an AVX-512 machine.

    python benchmarks/channels_last_bug.py --isa AVX2 native      # ~1 min on 2 cores
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

CASE = """
import sys, torch
cin, threads = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads)
torch.manual_seed(0)
conv = torch.nn.Conv2d(cin, 8, 1, stride=2, bias=False)
x = torch.randn(32, cin, 32, 32)
conv(x).square().sum().backward()
ref, conv.weight.grad = conv.weight.grad.clone(), None
conv = conv.to(memory_format=torch.channels_last)
for _ in range(3):
    conv.weight.grad = None
    conv(x.contiguous(memory_format=torch.channels_last)).square().sum().backward()
print(float((conv.weight.grad - ref).norm() / ref.norm()))
"""


def run_case(cin: int, threads: int, isa: str, timeout_s: float) -> str:
    """'ok', 'wrong (rel. err. e)', 'crash (SIGNAL)' or 'hang'."""
    env = dict(os.environ)
    if isa != "native":
        env["ONEDNN_MAX_CPU_ISA"] = isa
    try:
        done = subprocess.run(
            [sys.executable, "-c", CASE, str(cin), str(threads)], env=env, capture_output=True, text=True,
            timeout=timeout_s,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return "hang"
    if done.returncode < 0:
        return f"crash ({signal.Signals(-done.returncode).name})"
    if done.returncode != 0:
        return f"error ({done.stderr.strip().splitlines()[-1]})"
    err = float(done.stdout.strip().splitlines()[-1])
    return "ok" if err < 1e-4 else f"wrong (rel. err. {err:.2f})"


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--isa", nargs="+", default=["AVX2", "native"], help="oneDNN ISA caps ('native': no cap)")
    p.add_argument("--channels", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6, 7, 8, 12, 16])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--timeout", type=float, default=60.0, help="seconds before a case counts as a hang")
    p.add_argument("--out", default="", help="markdown path (default: print only)")
    args = p.parse_args(argv)
    lines = ["| oneDNN ISA | threads | " + " | ".join(f"C_in {c}" for c in args.channels) + " |",
             "|---|---|" + "---|" * len(args.channels)]  # fmt: skip
    for isa in args.isa:
        for t in args.threads:
            cells = [run_case(c, t, isa, args.timeout) for c in args.channels]
            lines.append(f"| {isa} | {t} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
