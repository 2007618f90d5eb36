"""python -m training.sweep GRID: run every cell of a grid, here (one after the other, or one per GPU) or on Slurm.

    python -m training.sweep cifar100_idn --seeds 1,2,3 --gpus 0,1,2,3              # 30 runs, 4 at a time
    python -m training.sweep cifar10_idn --set r=0.5 --methods instancegm --executor slurm --partition gpu
    python -m training.sweep fmnist_cpu                                             # minutes on a CPU
    python -m training.sweep my_grid.toml --set r=0.2,0.4 --set lambda_u=0 --methods instancegm,dividemix

GRID is a named grid (``training/grids/<name>.toml``: the paper's tables) or a TOML file of the same form.
Every cell is an ordinary run folder ``<sweep_dir>/<cell>`` (default sweep_dir: ``./sweeps/<grid>``), run as
``python <script> <flags> --resume auto``: a finished cell (complete summary.json) is skipped, an interrupted
one continues from its last epoch, so rerunning the same command finishes a sweep. ``sweep.json`` in the sweep
folder lists the cells with the paper's numbers, for ``python -m training.report SWEEP_DIR``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from training.grid import (
    ROOT,
    Cell,
    GridError,
    cell_state,
    load_grid,
    lock_owner,
    named_grids,
    read_json,
    write_manifest,
)

log = logging.getLogger("training.sweep")

SLURM_CLUSTERS = ("slurm", "local", "debug")  # submitit's executors; local/debug run on this machine
_ACTIVE_SLURM_STATES = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED")


def cell_command(cell: Cell, sweep_dir: Path, nproc: int = 1) -> list[str]:
    """The command that runs (or resumes) one cell; several processes per cell go through torchrun."""
    script = str(ROOT / cell.script)
    if nproc <= 1:
        return [sys.executable, script, *cell.argv(sweep_dir)]
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        script, *cell.argv(sweep_dir, torchrun=True),
    ]  # fmt: skip


def todo(cells: Sequence[Cell], sweep_dir: Path) -> list[Cell]:
    """Cells not finished yet (partial ones resume); logs what is skipped."""
    out = []
    for cell in cells:
        state = cell_state(sweep_dir / cell.name)
        if state == "finished":
            log.info("skip %s (finished)", cell.name)
        else:
            out.append(cell)
    return out


RUNNING_ELSEWHERE = -1  # exit-code stand-in of a cell another process is training: neither done nor failed


def running_elsewhere(cell: Cell, sweep_dir: Path) -> bool:
    """True (and logged) when a live process other than this sweep's cells holds the cell's run folder."""
    owner = lock_owner(sweep_dir / cell.name)
    if owner is not None:
        log.info("skip %s (running elsewhere: %s; rerun the sweep once it is done)", cell.name, owner)
    return owner is not None


# ---------------------------------------------------------------- a cell dies with its sweep -----------------
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send SIGTERM to the cell when the sweep dies, even by SIGKILL
    (Linux; elsewhere None, and a killed sweep leaves its running cell to finish on its own).

    SIGTERM, not SIGKILL: the run saves what it can, and its own children (torchrun's workers, data loader
    workers) are ended by it. libc is loaded here, in the parent: the child only makes one system call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the sweep died before the call above: nobody would stop this cell
            os._exit(1)

    return preexec


def run_command(
    command: list[str], log_path: Path, env: dict[str, str] | None = None, running: set | None = None
) -> int:
    """Run one cell, its output appended to ``log_path``; on Ctrl-C, let the run end its own way.

    ``subprocess.run`` would kill it 0.25 s after the interrupt, before it logs where to resume.
    ``running`` (if given) holds the live processes, for an interrupt that reaches another thread.
    The cell gets SIGTERM when the sweep process dies (``_die_with_parent``): no orphan keeps training.
    """
    with open(log_path, "a") as out:
        proc = subprocess.Popen(  # noqa: PLW1509 - preexec_fn makes one system call
            command, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent()
        )
        if running is not None:
            running.add(proc)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            interrupt([proc])
            raise
        finally:
            if running is not None:
                running.discard(proc)


def interrupt(procs: Sequence[subprocess.Popen], grace_s: float = 10.0) -> None:
    """Wait for runs that got the Ctrl-C themselves; forward it to any still running after ``grace_s``
    (a signal sent to the sweep's process only), then wait for them to save and exit."""
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            proc.wait()


# ================================================================ local executor ==============================
def gpu_slots(gpus: str, per_cell: int, cells_per_gpu: int = 1) -> list[str | None]:
    """``0,1,2,3`` with 2 GPUs per cell -> ["0,1", "2,3"]; no GPUs -> one slot that keeps the environment.
    ``cells_per_gpu`` K repeats each slot K times (K cells share it, as separate processes): "0,1" with K = 2
    -> ["0", "1", "0", "1"]; without GPUs, K cells run at a time on the CPU."""
    ids = [g.strip() for g in gpus.split(",") if g.strip()] if gpus else []
    if not ids:
        return [None] * cells_per_gpu
    if len(ids) % per_cell:
        raise GridError(f"--gpus {gpus}: {len(ids)} GPUs do not split into cells of --gpus_per_cell {per_cell}")
    slots = [",".join(ids[i : i + per_cell]) for i in range(0, len(ids), per_cell)]
    return [slot for _ in range(cells_per_gpu) for slot in slots]


def run_local(
    cells: Sequence[Cell], sweep_dir: Path, gpus: str = "", gpus_per_cell: int = 1, cells_per_gpu: int = 1
) -> dict[str, int]:
    """Run the cells as subprocesses, as many at a time as there are GPU slots; returns each cell's exit code
    (RUNNING_ELSEWHERE for a cell that another process holds when its turn comes).

    Each subprocess sees only its slot's GPUs (CUDA_VISIBLE_DEVICES), so an unchanged entry script uses them.
    Its output is appended to ``<sweep_dir>/logs/<cell>.log``.
    """
    slots = gpu_slots(gpus, gpus_per_cell, cells_per_gpu)
    nproc = gpus_per_cell if gpus else 1
    free: queue.Queue[str | None] = queue.Queue()
    running: set[subprocess.Popen] = set()
    for slot in slots:
        free.put(slot)
    (sweep_dir / "logs").mkdir(parents=True, exist_ok=True)

    def run_one(cell: Cell) -> int:
        slot = free.get()
        try:
            if running_elsewhere(cell, sweep_dir):  # e.g. started by hand since the sweep began
                return RUNNING_ELSEWHERE
            env = dict(os.environ)
            if slot is not None:
                env["CUDA_VISIBLE_DEVICES"] = slot
            log_path = sweep_dir / "logs" / f"{cell.name}.log"
            log.info("run %s%s -> %s", cell.name, f" on GPU {slot}" if slot is not None else "", log_path)
            rc = run_command(cell_command(cell, sweep_dir, nproc), log_path, env, running)
            if rc != 0 and running_elsewhere(cell, sweep_dir):  # it lost the race for the folder's lock
                return RUNNING_ELSEWHERE
            log.info("%s %s", cell.name, "finished" if rc == 0 else f"FAILED (exit {rc}; see {log_path})")
            return rc
        finally:
            free.put(slot)

    if len(slots) == 1:  # sequential: Ctrl-C reaches the running cell, which keeps its last epoch
        return {cell.name: run_one(cell) for cell in cells}
    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        futures = {cell.name: pool.submit(run_one, cell) for cell in cells}
        try:
            return {name: f.result() for name, f in futures.items()}
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            interrupt(list(running))
            raise


# ================================================================ slurm executor (submitit) ===================
_SBATCH_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_slurm_text(option: str, value: str) -> str:
    """A value written into an ``#SBATCH`` line: a control character (newline) would start a shell line."""
    if _CONTROL.search(value):
        raise GridError(f"{option} {value!r}: holds a control character (newline, tab, ...); write it on one line")
    return value


def slurm_extra(items: Sequence[str]) -> dict[str, str]:
    """``--slurm_extra KEY=VALUE`` options as sbatch options; the keys are option names (letters, digits, - _)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _SBATCH_KEY.match(key):
            raise GridError(f"--slurm_extra {item!r}: write KEY=VALUE with an sbatch option name, e.g. constraint=a100")
        out[key] = check_slurm_text("--slurm_extra", value)
    return out


def _submitit():
    try:
        import submitit
    except ImportError:
        raise GridError("--executor slurm needs submitit: pip install submitit") from None
    return submitit


class CellJob:
    """What a Slurm job runs: one cell's command. On timeout or preemption submitit requeues the same job,
    and the cell continues from its last epoch (``--resume auto``)."""

    def __call__(self, command: list[str], log_path: str) -> int:
        rc = run_command(command, Path(log_path))
        if rc != 0:
            raise RuntimeError(f"exit code {rc}; see {log_path}")
        return rc

    def checkpoint(self, command: list[str], log_path: str):
        return _submitit().helpers.DelayedSubmission(self, command, log_path)


def _still_queued(submitit: Any, folder: Path, job_id: str) -> bool:
    try:
        return submitit.SlurmJob(folder, job_id).state.upper().startswith(_ACTIVE_SLURM_STATES)
    except Exception:  # noqa: BLE001 - sacct unavailable or job unknown: treat as gone
        return False


def run_slurm(cells: Sequence[Cell], sweep_dir: Path, args: argparse.Namespace) -> dict[str, int]:
    """Submit one job per cell through submitit; with ``--wait``, wait and return each cell's exit code.

    A cell whose earlier job is still queued or running is not submitted twice (``jobs.json`` keeps the ids).
    """
    submitit = _submitit()
    folder = sweep_dir / "submitit"
    executor = submitit.AutoExecutor(folder=folder, cluster=args.slurm_cluster)
    params: dict[str, Any] = dict(
        timeout_min=args.time,
        gpus_per_node=args.gpus_per_cell,
        tasks_per_node=1,  # one launcher per cell; several GPUs per cell go through torchrun
        cpus_per_task=args.cpus_per_task,
        slurm_partition=args.partition or None,
        slurm_account=args.account or None,
        mem_gb=args.mem_gb or None,
    )
    if args.slurm_cluster == "slurm":  # the job unpickles CellJob: make this repository importable there
        params["slurm_setup"] = [f"export PYTHONPATH={shlex.quote(str(ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}"]
    if args.slurm_extra:
        params["slurm_additional_parameters"] = slurm_extra(args.slurm_extra)
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    jobs_path = sweep_dir / "jobs.json"
    known = read_json(jobs_path) or {}
    (sweep_dir / "logs").mkdir(parents=True, exist_ok=True)
    submitted = {}
    for cell in cells:
        old = known.get(cell.name)
        if args.slurm_cluster == "slurm" and old and _still_queued(submitit, folder, old):
            log.info("skip %s (job %s still queued or running)", cell.name, old)
            continue
        command = cell_command(cell, sweep_dir, args.gpus_per_cell)
        executor.update_parameters(name=f"{cell.grid}-{cell.name}")
        job = executor.submit(CellJob(), command, str(sweep_dir / "logs" / f"{cell.name}.log"))
        submitted[cell.name] = job
        known[cell.name] = str(job.job_id)
        log.info("submitted %s as job %s", cell.name, job.job_id)
    jobs_path.write_text(json.dumps(known, indent=2))
    if not args.wait:
        return {name: 0 for name in submitted}
    codes = {}
    for name, job in submitted.items():
        try:
            codes[name] = job.result()
        except Exception as err:  # noqa: BLE001 - a failed cell must not hide the others
            log.error("%s FAILED: %s", name, str(err).strip().splitlines()[-1] if str(err).strip() else err)
            codes[name] = 1
    return codes


# ================================================================ command line ================================
def _int_list(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _str_list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.sweep",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("grid", help=f"a named grid ({', '.join(named_grids())}) or a grid TOML file")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=V1,V2",
                   help="sweep a flag over these values (one value: a fixed flag); repeatable")  # fmt: skip
    p.add_argument("--seeds", type=_int_list, help="seeds, e.g. 1,2,3 (default: the grid's)")
    p.add_argument("--methods", type=_str_list, help="methods, e.g. instancegm,dividemix (default: the grid's)")
    p.add_argument("--sweep_dir", default="", help="folder of the cells' run folders (default ./sweeps/<grid>)")
    p.add_argument("--executor", choices=("local", "slurm"), default="local")
    p.add_argument("--dry_run", action="store_true", help="print each cell's state and command; run nothing")
    g = p.add_argument_group("local executor")
    g.add_argument("--gpus", default="", help="GPU ids, e.g. 0,1,2,3: one cell per GPU (or per group) at a time")
    g.add_argument("--gpus_per_cell", type=int, default=1, help="GPUs per cell; >1 runs the cell under torchrun")
    g.add_argument("--cells_per_gpu", type=int, default=1, help="K cells share each GPU, as separate processes "
                   "(small models leave a big GPU idle); without --gpus: K cells at a time on the CPU")  # fmt: skip
    s = p.add_argument_group("slurm executor (submitit)")
    s.add_argument("--partition", default="", help="Slurm partition")
    s.add_argument("--account", default="", help="Slurm account")
    s.add_argument("--time", type=int, default=24 * 60, help="time limit per job, minutes (a cell that runs out is "
                   "requeued and resumes)")  # fmt: skip
    s.add_argument("--cpus_per_task", type=int, default=8, help="CPU cores per job (data loading)")
    s.add_argument("--mem_gb", type=int, default=0, help="memory per job, GB (0: the partition's default)")
    s.add_argument("--slurm_extra", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. constraint=a100; repeatable")  # fmt: skip
    s.add_argument("--wait", action="store_true", help="wait for the jobs and report their exit codes")
    s.add_argument("--slurm_cluster", choices=SLURM_CLUSTERS, default="slurm",
                   help="submitit's executor: slurm, or local/debug to try the submission on this machine")  # fmt: skip
    return p


SWEEP_LOCK = "sweep.lock"


@contextlib.contextmanager
def sweep_lock(sweep_dir: Path) -> Iterator[None]:
    """Hold ``<sweep_dir>/sweep.lock`` (an advisory ``flock``, released by the kernel when the process ends,
    even by SIGKILL): a second sweep on the same folder refuses in one line instead of racing the first."""
    import fcntl

    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / SWEEP_LOCK, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            owner = fh.read().strip() or "?"
            raise GridError(
                f"{sweep_dir} is in use by another sweep (process {owner}); wait for it to finish, "
                "or pass another --sweep_dir"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield


def check_args(args: argparse.Namespace) -> None:
    """Refuse, in one line each, what would otherwise fail later (per cell, or as a traceback)."""
    if args.gpus_per_cell < 1:
        raise GridError("--gpus_per_cell must be >= 1")
    if args.cells_per_gpu < 1:
        raise GridError("--cells_per_gpu must be >= 1")
    if args.executor == "local" and args.gpus_per_cell > 1 and not args.gpus:
        raise GridError("--gpus_per_cell needs --gpus (e.g. --gpus 0,1,2,3 --gpus_per_cell 2)")
    if args.cells_per_gpu > 1 and args.gpus_per_cell > 1:
        raise GridError("--cells_per_gpu shares one GPU between cells; it does not combine with --gpus_per_cell")
    if args.sweep_dir and Path(args.sweep_dir).exists() and not Path(args.sweep_dir).is_dir():
        raise GridError(f"--sweep_dir {args.sweep_dir}: is a file, not a folder; pass a folder (it is created)")
    if args.executor == "slurm" and not args.dry_run:
        for option in ("partition", "account"):
            check_slurm_text(f"--{option}", getattr(args, option))
        slurm_extra(args.slurm_extra)
        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if args.slurm_cluster == "slurm" and missing:
            raise GridError(
                f"--executor slurm: {' and '.join(missing)} not found on PATH; run on a Slurm login node, "
                "or try the submission here with --slurm_cluster local"
            )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        check_args(args)
        grid = load_grid(args.grid).with_overrides(args.sets, args.seeds, args.methods)
        sweep_dir = Path(args.sweep_dir or Path("sweeps") / grid.name).resolve()
        cells = grid.cells()
        if not cells:
            raise GridError(f"grid {grid.name}: no cells (an empty axis, or no methods or seeds)")
        if args.dry_run:
            for cell in cells:
                cmd = cell_command(cell, sweep_dir, args.gpus_per_cell)
                print(f"{cell_state(sweep_dir / cell.name):9s} {shlex.join(cmd)}")  # pastes back as it runs
            return {"cells": [c.name for c in cells]}
        with sweep_lock(sweep_dir):
            write_manifest(sweep_dir, grid, cells)
            pending = todo(cells, sweep_dir)
            log.info("grid %s: %d cells, %d to run, in %s", grid.name, len(cells), len(pending), sweep_dir)
            if args.executor == "local":
                busy = {c.name for c in pending if running_elsewhere(c, sweep_dir)}
                codes = run_local(
                    [c for c in pending if c.name not in busy], sweep_dir, args.gpus, args.gpus_per_cell,
                    args.cells_per_gpu,
                )  # fmt: skip
                codes.update(dict.fromkeys(busy, RUNNING_ELSEWHERE))
            else:
                codes = run_slurm(pending, sweep_dir, args)
    except GridError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to finish the sweep (finished cells are kept)", file=sys.stderr)
        raise SystemExit(130) from None
    failed = sorted(name for name, rc in codes.items() if rc not in (0, RUNNING_ELSEWHERE))
    elsewhere = sorted(name for name, rc in codes.items() if rc == RUNNING_ELSEWHERE)
    log.info("report: python -m training.report %s", sweep_dir)
    if elsewhere:
        log.info("%d cell(s) running elsewhere, not waited for: %s", len(elsewhere), ", ".join(elsewhere))
    if failed:
        names = ", ".join(failed)
        print(f"error: {len(failed)} cell(s) failed: {names} (logs in {sweep_dir / 'logs'})", file=sys.stderr)
        raise SystemExit(1)
    ran = sorted(name for name, rc in codes.items() if rc != RUNNING_ELSEWHERE)
    return {"sweep_dir": str(sweep_dir), "ran": ran, "skipped": len(cells) - len(pending), "elsewhere": elsewhere}


if __name__ == "__main__":
    main()
