"""Fault injection on tiny real runs (Debian's Fashion-MNIST; DivideMix for speed, the generative model's resume
is bit-checked in test_engine.py): SIGKILL at every phase, a full disk, two runs in one folder, a checkpoint
resumed into another run's folder, bad paths and Ctrl-C.

Each case ends in the uninterrupted run's metrics, bit for bit (CPU, one process), or in a one-line refusal that
leaves every file already written as it was. Kills are real SIGKILLs of forked processes, stopped exactly at the
named points of ``training.faults``.
"""

from __future__ import annotations

import builtins
import errno
import json
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import needs_fmnist

import instanceGM
from training import checkpoint as ckpt_lib
from training import launch, rundir, runtime
from training.metrics import read_jsonl


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """One folder for the module's runs; one thread, so that forked children and this process agree bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path_factory.mktemp("faults")
    torch.set_num_threads(threads)


def _argv(base: Path, name: str, *extra: str) -> list[str]:
    return [
        "--dataset", "fashionmnist", "--method", "dividemix", "--r", "0.4", "--train_subset", "64",
        "--balanced_subset", "--test_subset", "32", "--width", "8", "--batch_size", "16", "--lr", "0.05",
        "--num_epochs", "3", "--warm_up", "1", "--seed", "5", "--log_interval", "2", "--num_workers", "0",
        "--device", "cpu",
        "--output_dir", str(base / "runs"), "--noise_dir", str(base / "noise"), "--run_name", name, *extra,
    ]  # fmt: skip


def _run(base: Path, name: str, *extra: str) -> int:
    """The CLI in this process: 0, or the exit code of a refusal (2) or an interruption (130)."""
    try:
        instanceGM.main(_argv(base, name, *extra))
    except SystemExit as exc:
        return int(exc.code)
    return 0


def _child(argv: list[str], env: dict[str, str]) -> None:
    os.environ.update(env)
    devnull = open(os.devnull, "w")  # noqa: SIM115 -- the child ends with os._exit
    sys.stdout = sys.stderr = devnull
    try:
        instanceGM.main(argv)
    except SystemExit as exc:
        os._exit(int(exc.code))
    os._exit(0)


def _fork(base: Path, name: str, fault: str, *extra: str, action: str = "kill", ready: Path | None = None):
    """A forked run that stops at ``fault`` (SIGKILLs itself, or waits there to be killed)."""
    env = {"INSTANCEGM_FAULT": fault, "INSTANCEGM_FAULT_ACTION": action}
    if ready is not None:
        env["INSTANCEGM_FAULT_READY"] = str(ready)
    proc = multiprocessing.get_context("fork").Process(target=_child, args=(_argv(base, name, *extra), env))
    proc.start()
    return proc


def _killed_at(base: Path, name: str, fault: str, *extra: str) -> None:
    proc = _fork(base, name, fault, *extra)
    proc.join(120)
    assert proc.exitcode == -signal.SIGKILL, f"the run did not reach {fault} (exit {proc.exitcode})"


def _rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in read_jsonl(run_dir / "metrics.jsonl")]


def _epochs(run_dir: Path) -> list[int]:
    return [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl")] if (run_dir / "metrics.jsonl").exists() else []


def _ckpt_epoch(run_dir: Path) -> int | None:
    path = run_dir / ckpt_lib.FILENAME
    return torch.load(path, weights_only=True)["epoch"] if path.exists() else None


def _summary(run_dir: Path) -> dict:
    return {k: v for k, v in json.loads((run_dir / "summary.json").read_text()).items() if k != "run_dir"}


def _assert_same_run(got: Path, expected: Path) -> None:
    assert _rows(got) == _rows(expected)  # every metric of every epoch, bit for bit
    assert _summary(got) == _summary(expected)
    a = torch.load(got / ckpt_lib.FILENAME, weights_only=True)["peers"]
    b = torch.load(expected / ckpt_lib.FILENAME, weights_only=True)["peers"]
    for name in ("net1", "net2"):
        for part in ("net", "vae"):
            if b[name][part] is None:  # no generative model (DivideMix)
                assert a[name][part] is None
                continue
            assert a[name][part].keys() == b[name][part].keys()
            assert all(torch.equal(a[name][part][k], b[name][part][k]) for k in a[name][part])


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def reference(base) -> Path:
    assert _run(base, "reference") == 0
    return base / "runs" / "reference"


def _full_disk_open(target: str):
    """``open`` whose files named ``target`` take half of a write, then fail as a full disk does."""

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def write(self, data) -> int:
            self.fh.write(bytes(memoryview(data)[: len(data) // 2]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    def fake_open(path, mode="r", *args, **kwargs):
        fh = builtins.open(path, mode, *args, **kwargs)  # noqa: SIM115 -- returned to the caller
        return Full(fh) if target in Path(path).name and ("w" in mode or "a" in mode) else fh

    return fake_open


@needs_fmnist
@pytest.mark.slow
def test_kill_at_every_phase_and_full_disk_then_resume_is_bit_identical(base, reference, capsys, monkeypatch):
    run_dir = base / "runs" / "chain"
    # warm-up (between the two nets' warm-up epochs): nothing saved, the lock left behind
    _killed_at(base, "chain", "epoch0/warmup/net1")
    assert _ckpt_epoch(run_dir) is None and _epochs(run_dir) == [] and (run_dir / "run.lock").exists()
    # co-training (net1 trained, net2 not): epoch 0 kept, the stale lock taken over
    _killed_at(base, "chain", "epoch1/train/net1", "--resume", "auto")
    assert _ckpt_epoch(run_dir) == 0 and _epochs(run_dir) == [0]
    # the save window: epoch 1's checkpoint written to its temporary file, not renamed
    _killed_at(base, "chain", "rename:checkpoint.pt", "--resume", "auto")
    assert _ckpt_epoch(run_dir) == 0 and _epochs(run_dir) == [0]
    assert [p.name for p in run_dir.glob("*.tmp")] != []  # the unfinished write, removed on the next start
    # a full disk at epoch 1's checkpoint: one line, no temporary file, epoch 0 intact
    monkeypatch.setattr(runtime, "open", _full_disk_open("checkpoint.pt"), raising=False)
    assert _run(base, "chain", "--resume", "auto") == 2
    err = _one_line(capsys)
    assert f"cannot write in {run_dir} (No space left on device)" in err and f"--resume {run_dir}" in err
    monkeypatch.undo()
    assert list(run_dir.glob("*.tmp")) == [] and not (run_dir / "run.lock").exists()
    assert _ckpt_epoch(run_dir) == 0 and _epochs(run_dir) == [0]
    # evaluation of epoch 2
    _killed_at(base, "chain", "epoch2/evaluate", "--resume", "auto")
    assert _ckpt_epoch(run_dir) == 1 and _epochs(run_dir) == [0, 1]
    # after the last checkpoint, before its metrics line; plus a torn line at the end of metrics.jsonl
    _killed_at(base, "chain", "epoch2/saved", "--resume", "auto")
    assert _ckpt_epoch(run_dir) == 2 and _epochs(run_dir) == [0, 1] and not (run_dir / "summary.json").exists()
    with open(run_dir / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 2, "test/ac')
    # the last start finds every epoch done: history from the checkpoint, summary written
    assert _run(base, "chain", "--resume", "auto") == 0
    _assert_same_run(run_dir, reference)
    assert not (run_dir / "run.lock").exists()


@needs_fmnist
def test_checkpoint_into_another_runs_folder_is_refused(base, reference, capsys):
    victim = base / "runs" / "victim"
    shutil.copytree(reference, victim)
    before = {p.name: p.read_bytes() for p in victim.iterdir()}
    assert _run(base, "victim", "--resume", str(reference / ckpt_lib.FILENAME)) == 2
    err = _one_line(capsys)
    assert f"{victim} holds another run" in err and "--run_name" in err
    assert {p.name: p.read_bytes() for p in victim.iterdir()} == before  # nothing touched, no lock left
    # into a folder of its own it is accepted: its history comes along with it
    assert _run(base, "adopted", "--resume", str(reference / ckpt_lib.FILENAME)) == 0
    _assert_same_run(base / "runs" / "adopted", reference)


@needs_fmnist
@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--noise_seed", "7"], "noise_seed: checkpoint 123 vs now 7"),
        (["--train_subset", "70"], "train_subset: checkpoint 64 vs now 70"),
        (["--test_subset", "16"], "test_subset: checkpoint 32 vs now 16"),
    ],
)
def test_resume_with_other_samples_or_labels_is_refused(base, reference, capsys, extra, needle):
    before = (reference / "metrics.jsonl").read_bytes()
    assert _run(base, "reference", "--resume", "auto", *extra) == 2
    assert needle in _one_line(capsys)
    assert (reference / "metrics.jsonl").read_bytes() == before


@needs_fmnist
def test_resume_with_changed_hyper_parameters_needs_allow_config_change(base, reference, capsys):
    run = base / "runs" / "changed"
    shutil.copytree(reference, run)  # the finished 3-epoch run, to be extended
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    changes = ("--lr", "0.04", "--lambda_u", "0", "--p_threshold", "0.9", "--num_epochs", "4")
    assert _run(base, "changed", "--resume", "auto", *changes) == 2
    err = _one_line(capsys)
    assert "lr: checkpoint 0.05 vs now 0.04" in err and "lambda_u: checkpoint 25.0 vs now 0.0" in err
    assert "p_threshold" in err and "num_epochs" not in err and "--allow_config_change" in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # config.json is not rewritten

    assert _run(base, "changed", "--resume", "auto", *changes, "--allow_config_change") == 0
    info = json.loads((run / "config.json").read_text())
    history = info["config_history"]
    assert [h["first_epoch"] for h in history] == [1, 4]
    assert (history[0]["config"]["lr"], history[1]["config"]["lr"], info["config"]["lr"]) == (0.05, 0.04, 0.04)
    assert history[1]["changed"] == {
        "lambda_u": [25.0, 0.0],
        "lr": [0.05, 0.04],
        "num_epochs": [3, 4],
        "p_threshold": [0.5, 0.9],
    }
    assert _epochs(run) == [0, 1, 2, 3]
    assert torch.load(run / ckpt_lib.FILENAME, weights_only=True)["config_history"] == history  # travels on


@needs_fmnist
def test_resume_on_a_label_file_rewritten_in_place_is_refused(base, reference, capsys):
    labels = base / "user_labels.npy"
    shutil.copy(next((base / "noise").glob("*.npy")), labels)
    assert _run(base, "user_labels", "--noise_file", str(labels), "--num_epochs", "2") == 0
    np.save(labels, (np.load(labels) + 1) % 10)  # same file, other labels
    assert _run(base, "user_labels", "--noise_file", str(labels), "--resume", "auto") == 2
    err = _one_line(capsys)
    assert "was trained on other data: the training labels" in err and "the training files" not in err


def test_balanced_subset_and_noise_seed_must_match():
    saved = {"balanced_subset": True, "noise_seed": 123}
    with pytest.raises(ckpt_lib.CheckpointError, match="balanced_subset: checkpoint True vs now False"):
        ckpt_lib.check_compatible(saved, {"balanced_subset": False, "noise_seed": 123}, "x.pt")


@needs_fmnist
def test_second_run_in_a_busy_folder_is_refused_and_a_dead_owner_is_taken_over(base, capsys):
    ready = base / "busy.ready"
    proc = _fork(base, "busy", "build_peers", "--method", "ce", "--num_epochs", "1", action="wait", ready=ready)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and proc.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "the first run did not start"
        for extra in ([], ["--resume", "auto"]):
            assert _run(base, "busy", "--method", "ce", "--num_epochs", "1", *extra) == 2
            assert f"is in use by process {proc.pid} on " in _one_line(capsys)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # kill -9 from outside
        proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    run_dir = base / "runs" / "busy"
    assert json.loads((run_dir / "run.lock").read_text())["pid"] == proc.pid  # stale now
    assert _run(base, "busy", "--method", "ce", "--num_epochs", "1", "--resume", "auto") == 0
    assert f"taking over the lock of process {proc.pid} (no longer running)" in capsys.readouterr().out
    assert _epochs(run_dir) == [0] and not (run_dir / "run.lock").exists()


@needs_fmnist
def test_ctrl_c_before_the_first_checkpoint(base, capsys, monkeypatch):
    monkeypatch.setenv("INSTANCEGM_FAULT", "epoch0/warmup/net1")
    monkeypatch.setenv("INSTANCEGM_FAULT_ACTION", "interrupt")
    assert _run(base, "ctrlc") == 130
    run_dir = base / "runs" / "ctrlc"
    assert _one_line(capsys) == f"interrupted: before the first epoch completed; nothing to resume in {run_dir}"
    assert not (run_dir / "run.lock").exists()
    assert rundir.open_run_folder(str(base / "runs"), "ctrlc", "", create=False).resume is None  # may start anew


def test_ctrl_c_during_start_up_needs_no_import(monkeypatch, capsys):
    # A Ctrl-C that stopped `import models` half-way leaves a module without its names: the handler must not
    # need them (nor import anything) to print its line.
    monkeypatch.setitem(sys.modules, "models", types.ModuleType("models"))

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(launch, "main_run", interrupted)
    with pytest.raises(SystemExit) as exc:
        instanceGM.main(["--dataset", "fashionmnist"])
    assert exc.value.code == 130
    assert _one_line(capsys) == "interrupted: during start-up, before the first epoch completed"

    def failing(cfg):
        raise ValueError("a bug, not a user error")

    monkeypatch.setattr(launch, "main_run", failing)
    with pytest.raises(ValueError, match="a bug"):  # still the original exception, not an AttributeError
        instanceGM.main(["--dataset", "fashionmnist"])


def test_output_dir_that_is_a_file(tmp_path, capsys):
    path = tmp_path / "a_file"
    path.write_text("x")
    with pytest.raises(SystemExit) as exc:
        instanceGM.main(["--dataset", "fashionmnist", "--output_dir", str(path)])
    assert exc.value.code == 2
    assert f"--output_dir: {path} is a file, not a folder" in _one_line(capsys)
    assert path.read_text() == "x"


def test_output_dir_on_a_read_only_file_system(tmp_path, capsys, monkeypatch):
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(SystemExit) as exc:
        instanceGM.main(["--dataset", "fashionmnist", "--output_dir", str(tmp_path / "ro"), "--run_name", "x"])
    assert exc.value.code == 2
    err = _one_line(capsys)
    assert err == (
        f"error: cannot write in {tmp_path / 'ro' / 'x'} (Read-only file system): "
        "the file system is read-only: pass a writable --output_dir"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="permissions do not bind root")
def test_output_dir_without_write_permission(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(SystemExit) as exc:
        instanceGM.main(["--dataset", "fashionmnist", "--output_dir", str(locked / "runs")])
    assert exc.value.code == 2
    assert "Permission denied" in _one_line(capsys)


@pytest.mark.parametrize(
    "code,fix",
    [
        (errno.ENOSPC, "the disk is full"),
        (errno.EROFS, "the file system is read-only: pass a writable --output_dir"),
        (errno.EACCES, "permission denied: pass a writable --output_dir"),
        (errno.ENOTDIR, "a part of the path is a file"),
    ],
)
def test_write_failures_name_the_folder_and_the_fix(tmp_path, code, fix):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    err = rundir.write_error(OSError(code, os.strerror(code), str(run_dir / "metrics.jsonl")), run_dir)
    assert str(err) == f"cannot write in {run_dir} ({os.strerror(code)}): {fix}" + str(err).split(fix, 1)[1]
    elsewhere = rundir.write_error(OSError(code, os.strerror(code), "/elsewhere/labels.npy"), run_dir)
    assert str(elsewhere).startswith(f"cannot use /elsewhere/labels.npy ({os.strerror(code)}): ")  # not the run's
    assert rundir.write_error(OSError(errno.EIO, "I/O error"), run_dir) is None  # not a user's to fix


@pytest.mark.parametrize("content", [b"", b"just some text\n"])
def test_resume_from_an_empty_or_text_file(tmp_path, capsys, content):
    path = tmp_path / "not_a_checkpoint.pt"
    path.write_bytes(content)
    with pytest.raises(SystemExit) as exc:
        instanceGM.main(["--dataset", "fashionmnist", "--output_dir", str(tmp_path / "runs"), "--resume", str(path)])
    assert exc.value.code == 2
    err = _one_line(capsys)
    assert str(path) in err and ("empty (0 bytes)" if not content else "corrupt") in err


def test_concurrent_atomic_writes_to_one_file_never_collide(tmp_path):
    path, errors = tmp_path / "checkpoint.pt", []

    def writer(tag: bytes) -> None:
        try:
            for _ in range(50):
                runtime.atomic_write_bytes(path, tag * 1000)
        except OSError as err:  # the fixed temporary name made one writer's rename fail
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(t,)) for t in (b"a", b"b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and path.read_bytes() in (b"a" * 1000, b"b" * 1000)
    assert list(tmp_path.glob("*.tmp")) == []


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    path.write_text("old")
    monkeypatch.setattr(runtime, "open", _full_disk_open("summary.json"), raising=False)
    with pytest.raises(OSError) as err:
        runtime.atomic_write_text(path, "new" * 100)
    assert err.value.errno == errno.ENOSPC
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_lock_of_a_live_process_refuses_and_of_a_dead_one_is_taken_over(tmp_path, caplog):
    first = rundir.RunLock(tmp_path).acquire()
    with pytest.raises(rundir.RunFolderError, match=f"in use by process {os.getpid()}"):
        rundir.RunLock(tmp_path).acquire()
    first.release()
    assert not (tmp_path / "run.lock").exists()
    # a process that has exited; and this process's pid with another start time (the pid was reused)
    dead = multiprocessing.get_context("fork").Process(target=os._exit, args=(0,))
    dead.start()
    dead.join()
    for owner in ({"pid": dead.pid, "start": None}, {"pid": os.getpid(), "start": "1"}):
        (tmp_path / "run.lock").write_text(json.dumps({**owner, "host": socket.gethostname()}))
        lock = rundir.RunLock(tmp_path).acquire()
        assert f"taking over the lock of process {owner['pid']}" in caplog.text
        assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
        lock.release()
    # a lock from another machine cannot be checked: refused
    (tmp_path / "run.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "start": None}))
    with pytest.raises(rundir.RunFolderError, match="process 1 on elsewhere"):
        rundir.RunLock(tmp_path).acquire()


def test_user_supplied_noise_file_is_not_to_be_deleted(tmp_path):
    import numpy as np

    from dataloaders.base import DataConfigError
    from dataloaders.noise import make_noisy_labels
    from training.config import Config

    np.save(tmp_path / "mine.npy", np.zeros(5, dtype=np.int64))
    cfg = Config(dataset="cifar10", noise_mode="instance", r=0.4, noise_file=str(tmp_path / "mine.npy"))
    with pytest.raises(DataConfigError) as err:
        make_noisy_labels(cfg, "cifar10", np.zeros((8, 2, 2, 3), np.uint8), np.arange(8) % 10, 10, cache_dir=tmp_path)
    assert "holds 5 labels but the training set has 8" in str(err.value) and "delete" not in str(err.value)


def test_a_metrics_line_that_does_not_fit_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    from training import metrics

    sink = metrics.MetricSink(tmp_path)
    sink.log_epoch({"epoch": 0, "test/acc": 50.0})
    before = (tmp_path / "metrics.jsonl").read_bytes()
    monkeypatch.setattr(metrics, "open", _full_disk_open("metrics.jsonl"), raising=False)
    with pytest.raises(OSError):
        sink.log_epoch({"epoch": 1, "test/acc": 60.0})
    assert (tmp_path / "metrics.jsonl").read_bytes() == before  # no half line


def test_unreadable_noise_file_advice_depends_on_who_made_it(tmp_path):
    import tools

    (tmp_path / "mine.npy").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError) as err:
        tools.load_label_file(tmp_path / "mine.npy")  # the user's --noise_file: theirs to replace, not delete
    assert "pass a .npy or .pt file of integer labels" in str(err.value) and "delete" not in str(err.value)


def _foreign_lock(run_dir: Path, minutes_ago: float) -> None:
    (run_dir / "run.lock").write_text(json.dumps({"pid": 1, "host": "node-7", "start": None, "since": "earlier"}))
    stamp = time.time() - 60 * minutes_ago
    os.utime(run_dir / "run.lock", (stamp, stamp))


def test_lock_of_another_host_is_taken_over_after_its_heartbeat_stops_or_by_force(tmp_path, caplog):
    _foreign_lock(tmp_path, minutes_ago=3)  # a container or node that still beats
    with pytest.raises(rundir.RunFolderError, match=r"process 1 on node-7 .*heartbeat was 3\.0 min ago.*after 10 min"):
        rundir.RunLock(tmp_path, stale_after_s=600).acquire()
    with pytest.raises(rundir.RunFolderError, match="--force_unlock"):
        rundir.RunLock(tmp_path, stale_after_s=0).acquire()
    _foreign_lock(tmp_path, minutes_ago=25)
    with pytest.raises(rundir.RunFolderError):  # 0: another host's lock is never taken over by age
        rundir.RunLock(tmp_path, stale_after_s=0).acquire()
    lock = rundir.RunLock(tmp_path, stale_after_s=600).acquire()
    assert "taking over the lock of process 1 on node-7 (no heartbeat for 25.0 min" in caplog.text
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    lock.release()
    _foreign_lock(tmp_path, minutes_ago=0)
    lock = rundir.RunLock(tmp_path, stale_after_s=600, force=True).acquire()
    assert "the lock of process 1 on node-7 (--force_unlock" in caplog.text
    lock.release()


def test_the_owner_refreshes_its_lock(tmp_path):
    lock = rundir.RunLock(tmp_path, heartbeat_s=0.05).acquire()
    try:
        old = time.time() - 3600
        os.utime(tmp_path / "run.lock", (old, old))
        deadline = time.monotonic() + 10
        while (tmp_path / "run.lock").stat().st_mtime < old + 60 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert time.time() - (tmp_path / "run.lock").stat().st_mtime < 60
    finally:
        lock.release()
    assert not (tmp_path / "run.lock").exists()


@needs_fmnist
def test_sigterm_releases_the_lock_keeps_the_checkpoint_and_the_run_resumes(base, reference):
    # `docker stop`, a Slurm requeue or pre-emption: SIGTERM during epoch 1, after epoch 0's checkpoint
    ready = base / "term.ready"
    proc = _fork(base, "term", "epoch1/train/net1", action="wait", ready=ready)
    deadline = time.monotonic() + 120
    while not ready.exists() and proc.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready.exists(), "the run did not reach epoch 1"
    os.kill(proc.pid, signal.SIGTERM)
    proc.join(60)
    assert proc.exitcode == 128 + signal.SIGTERM
    run_dir = base / "runs" / "term"
    assert not (run_dir / "run.lock").exists() and list(run_dir.glob("*.tmp")) == []
    assert _ckpt_epoch(run_dir) == 0 and _epochs(run_dir) == [0]
    log_txt = (run_dir / "log.txt").read_text()
    assert f"stopped by SIGTERM: the last completed epoch is in {run_dir / 'checkpoint.pt'}" in log_txt
    assert _run(base, "term", "--resume", "auto") == 0
    _assert_same_run(run_dir, reference)
