"""The run folder as one unit: its lock, which checkpoint a run continues, and history files that agree.

A run folder holds ``checkpoint.pt`` (the last completed epoch, with every epoch's metrics), ``metrics.jsonl``
(one line per epoch), ``summary.json`` (after the last epoch) and ``splits.pt`` (the last GMM split). The
checkpoint is the reference: on every start ``metrics.jsonl`` is rewritten from the history it carries, and
files of epochs it lacks are removed, so that an interruption at any moment leaves nothing that disagrees
after the next start. Only the process holding ``run.lock`` writes into the folder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shlex
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training import checkpoint as ckpt_lib
from training.config import ConfigError
from training.metrics import jsonl_line
from training.runtime import atomic_write_bytes, atomic_write_text

log = logging.getLogger("training")

LOCK_FILE = "run.lock"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
SPLITS_FILE = "splits.pt"


class RunFolderError(RuntimeError):
    """The run folder cannot be used or written; the message names it and says what to do."""


# ------------------------------------------------------------------ lock ------------------------------------
def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), to tell a live owner from a new process with its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22 of stat, counted after the command name


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def _create_exclusive(path: Path, text: str) -> None:
    """Create ``path`` holding ``text``, complete from its first moment; FileExistsError if it exists."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    tmp.write_text(text)
    try:
        os.link(tmp, path)  # atomic and exclusive: a reader never sees a half-written lock
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: exclusive create, then write
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
    finally:
        tmp.unlink(missing_ok=True)


HEARTBEAT_S = 60.0  # the owner refreshes the lock's modification time this often


class RunLock:
    """``RUN_DIR/run.lock``: the owner's pid, host and start time; its modification time is a heartbeat.

    A lock of a dead process on this host is stale and taken over (with a message); so is the lock of a process
    on another host (another node, another container: every ``docker run`` has a host name of its own) once its
    heartbeat is ``stale_after_s`` old, or at once with ``force``. A live owner on this host always makes the
    run refuse, and so does one on another host whose heartbeat is recent.
    """

    def __init__(
        self, run_dir: Path, stale_after_s: float = 0.0, force: bool = False, heartbeat_s: float = HEARTBEAT_S
    ):
        self.path = Path(run_dir) / LOCK_FILE
        self.held = False
        self.stale_after_s, self.force, self.heartbeat_s = stale_after_s, force, heartbeat_s
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._text = json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "start": _start_time(os.getpid()),
                "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
        )

    def acquire(self) -> RunLock:
        for _ in range(5):
            try:
                _create_exclusive(self.path, self._text)
                self.held = True
                self._start_heartbeat()
                return self
            except FileExistsError:
                pass
            try:
                raw = self.path.read_text()
            except FileNotFoundError:  # released meanwhile: try again
                continue
            owner = _parse(raw)
            what = "an unreadable lock" if owner is None else self._stale_reason(owner)
            if what is None:
                raise RunFolderError(self._busy_message(owner))
            log.warning("%s: taking over %s", self.path, what)
            self._remove_if(raw)
        raise RunFolderError(f"could not take the lock {self.path}: other runs keep starting in this folder")

    def _stale_reason(self, owner: dict[str, Any]) -> str | None:
        """Why ``owner``'s lock may be taken over (None: it may not)."""
        pid, host = owner["pid"], owner.get("host")
        if host == socket.gethostname():
            return None if _is_live(owner) else f"the lock of process {pid} (no longer running)"
        age = self._age_s()
        if self.force:
            return f"the lock of process {pid} on {host} (--force_unlock; last heartbeat {age / 60:.1f} min ago)"
        if self.stale_after_s > 0 and age > self.stale_after_s:
            return (
                f"the lock of process {pid} on {host} (no heartbeat for {age / 60:.1f} min, more than "
                f"--lock_stale_min {self.stale_after_s / 60:g}: its container or node is gone)"
            )
        return None

    def _age_s(self) -> float:
        try:
            return max(0.0, time.time() - self.path.stat().st_mtime)
        except FileNotFoundError:
            return 0.0

    def _busy_message(self, owner: dict[str, Any]) -> str:
        message = (
            f"{self.path.parent} is in use by process {owner['pid']} on {owner['host']} (since "
            f"{owner.get('since', '?')}); wait for it to finish or pass another --run_name"
        )
        if owner.get("host") == socket.gethostname():
            return message + f" (if that process is gone, delete {self.path})"
        wait = f"after {self.stale_after_s / 60:g} min without a heartbeat, " if self.stale_after_s > 0 else ""
        return message + (
            f"; its last heartbeat was {self._age_s() / 60:.1f} min ago: the lock is taken over {wait}or with "
            "--force_unlock once you know that run has stopped"
        )

    def _start_heartbeat(self) -> None:
        if self.heartbeat_s <= 0:
            return
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name="run.lock heartbeat", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if self.path.read_text() != self._text:  # taken over: a second writer would clobber the folder
                    log.error("%s: the lock was taken over by another run; this run should stop", self.path)
                    return
                os.utime(self.path)
            except OSError:  # a file system hiccup: the next beat tries again
                pass

    def _remove_if(self, raw: str) -> None:
        """Remove the stale lock, unless another run replaced it since it was read."""
        aside = self.path.with_name(f".{LOCK_FILE}.{os.getpid()}-{os.urandom(4).hex()}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if aside.read_text() != raw:  # a fresh lock of another run: put it back
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
        aside.unlink(missing_ok=True)

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        self._stop.set()
        if self._beat is not None and self._beat is not threading.current_thread():
            self._beat.join(timeout=5)
        try:
            if self.path.read_text() == self._text:
                self.path.unlink()
        except OSError:
            pass


def _parse(raw: str) -> dict[str, Any] | None:
    try:
        owner = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


def _is_live(owner: dict[str, Any]) -> bool:
    """Whether the owner, a process of this host, still runs."""
    pid = owner["pid"]
    if not _alive(pid):
        return False
    start = owner.get("start")
    return start is None or start == _start_time(pid)  # same pid, other start time: the pid was reused


# ------------------------------------------------------------------ opening a run folder -------------------
@dataclass
class RunFolder:
    path: Path
    resume: Path | None  # the checkpoint to continue from (None: a fresh start)
    lock: RunLock | None  # held by the process that writes the folder (rank 0)
    created: bool = False  # made by this start: a start that fails takes it away again (discard_start)

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()


def open_run_folder(
    output_dir: str,
    run_name: str,
    resume: str,
    create: bool = True,
    stale_after_s: float = 0.0,
    force_unlock: bool = False,
) -> RunFolder:
    """Create and lock ``output_dir/run_name``, then decide what to resume; refuses to clobber a run.

    ``stale_after_s`` and ``force_unlock``: when another host's lock is taken over (:class:`RunLock`).
    """
    run_dir = Path(output_dir).expanduser() / run_name
    lock = None
    created = create and not run_dir.exists()
    if create:
        make_folder(run_dir, Path(output_dir).expanduser())
        lock = RunLock(run_dir, stale_after_s, force_unlock).acquire()
    try:
        resume_path = _choose_resume(run_dir, resume)
        if lock is not None:
            _remove_temporaries(run_dir)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return RunFolder(run_dir, resume_path, lock, created)


# What a start writes before its first epoch: a failed start removes these, and the folder if nothing else is in it.
START_FILES = ("log.txt", "config.json", METRICS_FILE)


def discard_start(run_dir: Path) -> None:
    """Take away a folder this start created and that holds no epoch: a start-up failure leaves no run behind."""
    if (run_dir / ckpt_lib.FILENAME).exists():
        return
    for name in START_FILES:
        (run_dir / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # something else is in it (a dashboard folder): kept
        run_dir.rmdir()


def resume_command(run_dir: Path) -> str:
    """The command that continues the run in ``run_dir`` with its own settings (they are in its checkpoint)."""
    python = (getattr(sys, "orig_argv", None) or [sys.executable])[0]
    script = sys.argv[0] if sys.argv and sys.argv[0].endswith(".py") else "instanceGM.py"
    return shlex.join([python, script, "--resume", str(run_dir)])


def undo_start(run_dir: Path, created: bool, log_size: int | None) -> None:
    """Put a run folder back as a refused start-up found it: log.txt cut to ``log_size`` (removed if it did not
    exist), and the folder itself removed if this start created it and nothing else is in it."""
    log_file = run_dir / "log.txt"
    with contextlib.suppress(OSError):
        if log_size is None:
            log_file.unlink(missing_ok=True)
        elif log_file.is_file():
            os.truncate(log_file, log_size)
        if created and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()


def make_folder(run_dir: Path, output_dir: Path) -> None:
    for path, flag in ((output_dir, "--output_dir"), (run_dir, "--run_name")):
        if path.exists() and not path.is_dir():
            raise RunFolderError(f"{flag}: {path} is a file, not a folder; pass a folder (created if missing)")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise (write_error(err, run_dir) or err) from None


def _results(run_dir: Path) -> list[str]:
    """The files in ``run_dir`` that hold a run's results (not log.txt or config.json: a start writes those)."""
    names = [ckpt_lib.FILENAME, METRICS_FILE, SUMMARY_FILE]
    return [n for n in names if (run_dir / n).is_file() and (run_dir / n).stat().st_size > 0]


def _choose_resume(run_dir: Path, resume: str) -> Path | None:
    own = run_dir / ckpt_lib.FILENAME
    held = _results(run_dir)
    if resume == "auto":
        if own.exists():
            return own
        if held:
            raise RunFolderError(
                f"{run_dir} holds results ({', '.join(held)}) but no {ckpt_lib.FILENAME} to continue from; "
                "start another run with --run_name NAME"
            )
        return None
    if resume:
        path = Path(resume).expanduser()
        if not path.exists():
            raise ckpt_lib.CheckpointError(f"--resume {resume}: no such file")
        if own.exists() and path.resolve() == own.resolve():
            return own
        if held:
            raise RunFolderError(
                f"{run_dir} holds another run ({', '.join(held)}); continuing {path} there would replace its "
                "history: pass a new --run_name to continue it in a folder of its own (or --resume auto to "
                "continue the run that folder holds)"
            )
        return path
    if own.exists():
        raise ConfigError(
            f"{run_dir} already holds a run (checkpoint.pt); continue it with --resume auto, "
            "or start another with --run_name NAME"
        )
    if held:
        raise RunFolderError(
            f"{run_dir} holds results ({', '.join(held)}) of an earlier run; start another with --run_name NAME"
        )
    return None


def _remove_temporaries(run_dir: Path) -> None:
    """Temporary files of writers killed before their rename (the lock says no writer is active now)."""
    stale = [p for p in run_dir.glob("*.tmp") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.info("removed %d unfinished temporary file(s) in %s", len(stale), run_dir)


# ------------------------------------------------------------------ consistent history ---------------------
def adopt_checkpoint(source: Path, run_dir: Path) -> None:
    """A checkpoint continued from elsewhere is copied in first: the folder then holds its whole run."""
    own = run_dir / ckpt_lib.FILENAME
    if not (own.exists() and own.samefile(source)):
        atomic_write_bytes(own, Path(source).read_bytes())


def sync_history(run_dir: Path, history: list[dict[str, Any]], last_epoch: int, finished: bool) -> None:
    """Make the folder agree with the checkpoint about to be continued (``last_epoch`` -1: none).

    ``metrics.jsonl`` becomes exactly the checkpoint's history (atomically); ``splits.pt`` of an epoch after
    ``last_epoch`` is removed (that epoch runs again); ``summary.json`` is removed unless the run is
    ``finished`` (it is written again after the last epoch).
    """
    atomic_write_text(run_dir / METRICS_FILE, "".join(jsonl_line(r) for r in history))
    splits = run_dir / SPLITS_FILE
    if splits.exists():
        from training.dashboards import load_splits

        try:
            state = load_splits(run_dir)
            ahead = state is None or state["epoch"] > last_epoch
        except Exception:  # noqa: BLE001 -- an unreadable splits file is made again by the next divide
            ahead = True
        if ahead:
            splits.unlink()
    if not finished:
        (run_dir / SUMMARY_FILE).unlink(missing_ok=True)


# ------------------------------------------------------------------ write failures -------------------------
_FIXES = {
    errno.ENOSPC: "the disk is full: free space there or pass --output_dir on another disk",
    errno.EDQUOT: "the disk quota is exhausted: free space there or pass --output_dir on another disk",
    errno.EACCES: "permission denied: pass a writable --output_dir",
    errno.EPERM: "permission denied: pass a writable --output_dir",
    errno.EROFS: "the file system is read-only: pass a writable --output_dir",
    errno.ENOTDIR: "a part of the path is a file: pass a folder as --output_dir",
    errno.EEXIST: "a part of the path is a file: pass a folder as --output_dir",
}


def write_error(err: OSError, run_dir: Path | None) -> RunFolderError | None:
    """A one-line error for a failed write (full disk, no permission, read-only, path is a file), or None."""
    fix = _FIXES.get(err.errno)
    if fix is None or isinstance(err, FileNotFoundError):
        return None
    reason = os.strerror(err.errno)
    outside = err.filename and (run_dir is None or not Path(err.filename).resolve().is_relative_to(run_dir.resolve()))
    if outside:  # not the run folder: a data, cache or noise-label file
        fix = fix.split(":")[0]
        return RunFolderError(f"cannot use {err.filename} ({reason}): {fix}; choose a folder that allows it")
    saved = run_dir is not None and (run_dir / ckpt_lib.FILENAME).exists()
    after = f"; what was saved is intact: continue with: {resume_command(run_dir)}" if saved else ""
    return RunFolderError(f"cannot write in {run_dir} ({reason}): {fix}{after}")
