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
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from training.grid import ROOT, Cell, GridError, cell_state, load_grid, named_grids, read_json, write_manifest

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


def run_command(
    command: list[str], log_path: Path, env: dict[str, str] | None = None, running: set | None = None
) -> int:
    """Run one cell, its output appended to ``log_path``; on Ctrl-C, let the run end its own way.

    ``subprocess.run`` would kill it 0.25 s after the interrupt, before it logs where to resume.
    ``running`` (if given) holds the live processes, for an interrupt that reaches another thread.
    """
    with open(log_path, "a") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
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
def gpu_slots(gpus: str, per_cell: int) -> list[str | None]:
    """``0,1,2,3`` with 2 GPUs per cell -> ["0,1", "2,3"]; no GPUs -> one slot that keeps the environment."""
    ids = [g.strip() for g in gpus.split(",") if g.strip()] if gpus else []
    if not ids:
        return [None]
    if len(ids) % per_cell:
        raise GridError(f"--gpus {gpus}: {len(ids)} GPUs do not split into cells of --gpus_per_cell {per_cell}")
    return [",".join(ids[i : i + per_cell]) for i in range(0, len(ids), per_cell)]


def run_local(cells: Sequence[Cell], sweep_dir: Path, gpus: str = "", gpus_per_cell: int = 1) -> dict[str, int]:
    """Run the cells as subprocesses, as many at a time as there are GPU slots; returns each cell's exit code.

    Each subprocess sees only its slot's GPUs (CUDA_VISIBLE_DEVICES), so an unchanged entry script uses them.
    Its output is appended to ``<sweep_dir>/logs/<cell>.log``.
    """
    slots = gpu_slots(gpus, gpus_per_cell)
    nproc = gpus_per_cell if gpus else 1
    free: queue.Queue[str | None] = queue.Queue()
    running: set[subprocess.Popen] = set()
    for slot in slots:
        free.put(slot)
    (sweep_dir / "logs").mkdir(parents=True, exist_ok=True)

    def run_one(cell: Cell) -> int:
        slot = free.get()
        try:
            env = dict(os.environ)
            if slot is not None:
                env["CUDA_VISIBLE_DEVICES"] = slot
            log_path = sweep_dir / "logs" / f"{cell.name}.log"
            log.info("run %s%s -> %s", cell.name, f" on GPU {slot}" if slot is not None else "", log_path)
            rc = run_command(cell_command(cell, sweep_dir, nproc), log_path, env, running)
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
        params["slurm_setup"] = [f"export PYTHONPATH={ROOT}${{PYTHONPATH:+:$PYTHONPATH}}"]
    if args.slurm_extra:
        if any("=" not in kv for kv in args.slurm_extra):
            raise GridError(f"--slurm_extra {args.slurm_extra}: write KEY=VALUE, e.g. --slurm_extra constraint=a100")
        params["slurm_additional_parameters"] = dict(kv.split("=", 1) for kv in args.slurm_extra)
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


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        if args.gpus_per_cell < 1:
            raise GridError("--gpus_per_cell must be >= 1")
        if args.executor == "local" and args.gpus_per_cell > 1 and not args.gpus:
            raise GridError("--gpus_per_cell needs --gpus (e.g. --gpus 0,1,2,3 --gpus_per_cell 2)")
        grid = load_grid(args.grid).with_overrides(args.sets, args.seeds, args.methods)
        sweep_dir = Path(args.sweep_dir or Path("sweeps") / grid.name).resolve()
        cells = grid.cells()
        if args.dry_run:
            for cell in cells:
                cmd = cell_command(cell, sweep_dir, args.gpus_per_cell)
                print(f"{cell_state(sweep_dir / cell.name):9s} {' '.join(cmd)}")
            return {"cells": [c.name for c in cells]}
        write_manifest(sweep_dir, grid, cells)
        pending = todo(cells, sweep_dir)
        log.info("grid %s: %d cells, %d to run, in %s", grid.name, len(cells), len(pending), sweep_dir)
        if args.executor == "local":
            codes = run_local(pending, sweep_dir, args.gpus, args.gpus_per_cell)
        else:
            codes = run_slurm(pending, sweep_dir, args)
    except GridError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to finish the sweep (finished cells are kept)", file=sys.stderr)
        raise SystemExit(130) from None
    failed = sorted(name for name, rc in codes.items() if rc != 0)
    log.info("report: python -m training.report %s", sweep_dir)
    if failed:
        names = ", ".join(failed)
        print(f"error: {len(failed)} cell(s) failed: {names} (logs in {sweep_dir / 'logs'})", file=sys.stderr)
        raise SystemExit(1)
    return {"sweep_dir": str(sweep_dir), "ran": sorted(codes), "skipped": len(cells) - len(pending)}


if __name__ == "__main__":
    main()
