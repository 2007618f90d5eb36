"""The CPU allocator's share of a PreAct ResNet-18 step: glibc's default malloc against transparent huge pages
(``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, an opt-in for the entry scripts) and against a never-returning
heap (``mallopt``: no mmap, no trim). Each setting runs in its own process, alternated A/B/A/B.

    python benchmarks/cpu_allocator.py --width 64 --rounds 2     # ~2 min on 2 idle cores

Per setting and workload (no-grad pass over 256 images in batches of 64 and of 256; one training step on a
batch of 256): process CPU time, its system part, minor page faults, peak RSS and the loss (bitwise the same).
CPU time counts less of other load on a shared machine; wall time is what a run waits for on an idle one
(with ``--threads 2`` the CPU time also counts the threads' spinning).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"default": {}, "hugepages": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "heap": {}}


def child(setting: str, width: int, threads: int) -> dict:
    if setting == "heap":  # M_MMAP_MAX = 0, M_TRIM_THRESHOLD = 1 TiB: freed memory stays in the heap
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)
        libc.mallopt(-1, 1 << 40)
    sys.path.insert(0, str(ROOT))
    import torch

    from models.preact_resnet import preact_resnet18

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = preact_resnet18(10, width)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.rand(256, 3, 32, 32), torch.randint(0, 10, (256,))

    @torch.no_grad()
    def evaluate(batch: int) -> float:
        net.eval()
        return float(sum(net(x[i : i + batch]).sum() for i in range(0, 256, batch)))

    def train() -> float:
        net.train()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    out = {}
    for name, fn in (("eval batch 64", lambda: evaluate(64)), ("eval batch 256", lambda: evaluate(256)),
                     ("train step, batch 256", train)):  # fmt: skip
        fn()  # untimed: kernels and allocator warm-up
        r0, c0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), time.perf_counter()
        value = fn()
        w1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        out[name] = {"cpu_s": time.process_time() - c0, "wall_s": w1 - w0, "sys_s": r1.ru_stime - r0.ru_stime,
                     "minor_faults": r1.ru_minflt - r0.ru_minflt, "value": value}  # fmt: skip
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="JSON path (default: print only)")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.width, args.threads)))
        return {}
    runs: dict[str, list[dict]] = {s: [] for s in SETTINGS}
    for _ in range(args.rounds):
        for setting, extra in SETTINGS.items():
            env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"} | extra
            cmd = [sys.executable, __file__, "--child", setting, "--width", str(args.width),
                   "--threads", str(args.threads)]  # fmt: skip
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            runs[setting].append(json.loads(done.stdout.strip().splitlines()[-1]))
    lines = ["| allocator | workload | wall s (median) | CPU s | system s | minor faults | peak RSS MiB | value |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for setting, rs in runs.items():
        for name in (k for k in rs[0] if k != "peak_rss_mb"):
            wall = sorted(r[name]["wall_s"] for r in rs)[len(rs) // 2]
            med = sorted(r[name]["cpu_s"] for r in rs)[len(rs) // 2]
            sys_s = sorted(r[name]["sys_s"] for r in rs)[len(rs) // 2]
            faults = sorted(r[name]["minor_faults"] for r in rs)[len(rs) // 2]
            rss = max(r["peak_rss_mb"] for r in rs)
            lines.append(f"| {setting} | {name} | {wall:.2f} | {med:.2f} | {sys_s:.2f} | {faults} | {rss:.0f} "
                         f"| {rs[0][name]['value']:.10g} |")  # fmt: skip
    table = "\n".join(lines)
    print(table)
    report = {"width": args.width, "threads": args.threads, "rounds": args.rounds, "runs": runs, "markdown": table}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
