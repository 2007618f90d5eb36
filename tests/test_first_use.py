"""What a new user meets first: the thread count, resuming a run by its folder, the start-up messages, failed
start-ups, the torch/torchvision pairing and predict on small folders (tiny real runs on Debian's Fashion-MNIST)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest
import torch
from conftest import needs_fmnist

import instanceGM
from training import checkpoint as ckpt_lib
from training.config import Config
from training.metrics import read_jsonl, summarise


@pytest.fixture(autouse=True)
def keep_threads():
    """One thread (faster on a small shared machine); a test that changes it (--threads) gets the count back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _argv(tmp_path: Path, name: str, *extra: str) -> list[str]:
    return [
        "--dataset", "fashionmnist", "--method", "dividemix", "--r", "0.4", "--train_subset", "64",
        "--balanced_subset", "--test_subset", "32", "--width", "8", "--batch_size", "16", "--lr", "0.05",
        "--num_epochs", "2", "--warm_up", "1", "--seed", "5", "--log_interval", "2",
        "--output_dir", str(tmp_path / "runs"), "--noise_dir", str(tmp_path / "noise"), "--run_name", name, *extra,
    ]  # fmt: skip


def _main(argv: list[str]) -> int:
    try:
        instanceGM.main(argv)
    except SystemExit as exc:
        return int(exc.code)
    return 0


# ---------------------------------------------------------------- 1. --threads -----------------------------
def test_threads_flag_is_a_recorded_config_field():
    from training.config import ConfigError, parse_cli

    cfg = parse_cli(instanceGM.PRESETS, "cifar10", ["--threads", "1"])
    assert cfg.threads == 1 and json.loads(json.dumps(cfg.to_dict()))["threads"] == 1
    assert parse_cli(instanceGM.PRESETS, "cifar10", []).threads == 0  # torch's own default unless asked
    with pytest.raises(ConfigError, match="--threads -1"):
        Config(threads=-1).validate()


@needs_fmnist
def test_threads_sets_torch_s_thread_count_for_the_run(tmp_path):
    torch.set_num_threads(2)
    assert _main(_argv(tmp_path, "one", "--threads", "1", "--num_epochs", "1", "--method", "ce")) == 0
    info = json.loads((tmp_path / "runs" / "one" / "config.json").read_text())
    assert info["config"]["threads"] == 1 and info["environment"]["cpu_threads"] == 1
    assert torch.get_num_threads() == 1


# ---------------------------------------------------------------- 2. --resume RUN_DIR -----------------------
@needs_fmnist
def test_resume_by_folder_restores_the_run_s_settings(tmp_path, capsys):
    assert _main(_argv(tmp_path, "r", "--num_epochs", "2")) == 0
    run_dir = tmp_path / "runs" / "r"
    # no other flag: the checkpoint's settings (Fashion-MNIST, 64 images, width 8, ...), not the CIFAR-10 preset's;
    # --num_epochs given explicitly extends the run
    assert _main(["--resume", str(run_dir), "--num_epochs", "3"]) == 0
    assert [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [0, 1, 2]
    saved = json.loads((run_dir / "config.json").read_text())["config"]
    assert (saved["dataset"], saved["train_subset"], saved["width"], saved["num_epochs"]) == ("fashionmnist", 64, 8, 3)
    assert "resumed from" in capsys.readouterr().out
    # the checkpoint file itself works as well; a flag given explicitly is still checked against the checkpoint
    assert _main(["--resume", str(run_dir / ckpt_lib.FILENAME), "--width", "16", "--num_epochs", "4"]) == 2
    assert "width: checkpoint 8 vs now 16" in capsys.readouterr().err
    assert _main(["--resume", str(tmp_path / "nowhere")]) == 2
    assert "no such file or run folder" in capsys.readouterr().err
    # --resume auto names the run by the other flags: where that run has no checkpoint, it says so as it starts
    assert _main(_argv(tmp_path, "fresh", "--resume", "auto", "--method", "ce", "--num_epochs", "1")) == 0
    assert "--resume auto: no checkpoint in " in capsys.readouterr().out


@needs_fmnist
def test_ctrl_c_prints_the_command_that_continues_the_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("INSTANCEGM_FAULT", "epoch1/evaluate")
    monkeypatch.setenv("INSTANCEGM_FAULT_ACTION", "interrupt")
    assert _main(_argv(tmp_path, "c")) == 130
    run_dir = tmp_path / "runs" / "c"
    err = capsys.readouterr().err.strip()
    prefix = f"interrupted: the last completed epoch is in {run_dir / ckpt_lib.FILENAME}; continue with: "
    assert err.startswith(prefix)
    command = shlex.split(err[len(prefix) :])
    assert command[0] == (getattr(sys, "orig_argv", None) or [sys.executable])[0]
    assert command[1].endswith(".py") and command[2:] == ["--resume", str(run_dir)]
    monkeypatch.delenv("INSTANCEGM_FAULT")
    assert _main(command[2:]) == 0  # the printed command, as it is, finishes the run
    assert [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [0, 1]


@needs_fmnist
def test_a_diverged_run_names_the_command_that_continues_it(tmp_path, capsys):
    assert _main(_argv(tmp_path, "d", "--num_epochs", "1", "--method", "ce")) == 0
    run_dir = tmp_path / "runs" / "d"
    changed = ["--num_epochs", "2", "--lr", "nan", "--allow_config_change"]
    assert _main(["--resume", str(run_dir), *changed]) == 2  # NaN weights from the first step
    err = capsys.readouterr().err
    assert f"the last good checkpoint is {run_dir / ckpt_lib.FILENAME}" in err
    assert f"--resume {run_dir} --lr <lower> --allow_config_change" in err


# ---------------------------------------------------------------- 7. small things --------------------------
def test_summary_best_epoch_is_numbered_like_the_log():
    history = [{"epoch": 0, "test/acc": 50.0}, {"epoch": 1, "test/acc": 70.0}, {"epoch": 2, "test/acc": 60.0}]
    assert summarise(history)["best_epoch"] == 2  # "epoch 2/3" in the log


@needs_fmnist
def test_a_failed_start_up_leaves_no_run_folder(tmp_path, capsys):
    # the data cannot be read: the start fails before any epoch, in a folder it made itself
    assert _main(_argv(tmp_path, "bad", "--data_path", str(tmp_path / "no_data"))) == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "bad").exists()
    # a folder that was there before keeps what it held
    (tmp_path / "runs" / "kept").mkdir(parents=True)
    (tmp_path / "runs" / "kept" / "notes.txt").write_text("mine")
    assert _main(_argv(tmp_path, "kept", "--data_path", str(tmp_path / "no_data"))) == 2
    assert (tmp_path / "runs" / "kept" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "runs" / "kept").iterdir()) == ["notes.txt"]  # as it was


@needs_fmnist
def test_ctrl_c_during_start_up_leaves_no_run_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("INSTANCEGM_FAULT", "build_peers")
    monkeypatch.setenv("INSTANCEGM_FAULT_ACTION", "interrupt")
    assert _main(_argv(tmp_path, "startup")) == 130
    assert capsys.readouterr().err.strip() == "interrupted: during start-up, before the first epoch completed"
    assert not (tmp_path / "runs" / "startup").exists()


# ---------------------------------------------------------------- 4. expected duration at start -------------
def test_expected_duration_from_a_warm_up_step():
    from training.progress import expected_duration_text, expected_run_s

    cfg = Config(num_epochs=3, warm_up=2, batch_size=16, r=0.4, method="instancegm")
    # warm-up epoch: 2 nets x 32 steps of 0.1 s + 1000 test images at a third of 0.1/32 s each
    warm = 2 * 32 * 0.1 + 1000 * 0.1 / 32 / 3
    # co-training epoch: per net a divide pass (1000 images, forward) and 38 steps (600 labeled / 16) at 5x
    train = 2 * (1000 * 0.1 / 32 / 3 + 38 * 0.1 * 5) + 1000 * 0.1 / 32 / 3
    assert expected_run_s(0.1, cfg, 1000, 1000) == pytest.approx(2 * warm + train)
    assert expected_run_s(0.1, cfg, 1000, 1000, start_epoch=2) == pytest.approx(train)
    assert expected_run_s(0.1, cfg.replace(method="ce"), 1000, 1000) == pytest.approx(3 * warm)
    # the paper's recipe on a CPU: days, with the pointer to a CPU-sized run
    paper = Config(width=64, num_epochs=300, warm_up=10)
    text = expected_duration_text(2.0, paper, 50_000, 10_000, on_cpu=True)
    assert text.startswith("expected duration: roughly ") and " h for epochs 1-300" in text
    assert "--train_subset 1000" in text
    assert "--train_subset" not in expected_duration_text(2.0, paper, 50_000, 10_000, on_cpu=False)


@needs_fmnist
def test_a_run_says_its_expected_duration_before_the_first_epoch_ends(tmp_path, capsys):
    assert _main(_argv(tmp_path, "t", "--train_subset", "256", "--num_epochs", "2")) == 0
    out = capsys.readouterr().out
    said = out.index("expected duration: roughly ")
    assert said < out.index("epoch 1/2 [warmup]")  # before the first epoch's line
    assert "for epochs 1-2 (" in out[said:].splitlines()[0]


# ---------------------------------------------------------------- 5. torch / torchvision pairing -----------
def test_a_mixed_torch_torchvision_pair_is_named_with_its_fix():
    from training.versions import matching_torchvision, pair_problem

    assert matching_torchvision("2.5.1+cpu") == "0.20.1" and matching_torchvision("2.14.1+cu130") == "0.29.1"
    for good in [("2.5.1+cpu", "0.20.1+cpu"), ("2.5.1", "0.20.1"), ("2.6.0+cu124", "0.21.0"), ("2.6.0a0+nv", "0.20a")]:
        assert pair_problem(*good) is None, good
    mixed = pair_problem("2.5.1+cpu", "0.20.1+cu124")
    assert "torch 2.5.1+cpu and torchvision 0.20.1+cu124 are not a pair (different builds)" in mixed
    assert "-m pip install --force-reinstall torch==2.5.1 torchvision==0.20.1 --index-url " in mixed
    assert "torch 2.5.1 needs torchvision 0.20.1" in pair_problem("2.5.1", "0.19.0")
    broken = pair_problem("2.5.1+cpu", None, "RuntimeError: operator torchvision::nms does not exist\nmore")
    assert broken.startswith("torchvision does not load with torch 2.5.1+cpu (RuntimeError: operator torchvision::nms")
    assert "\n" not in broken


def test_a_run_with_a_mixed_pair_stops_at_start_in_one_line(tmp_path, capsys, monkeypatch):
    import types

    import torchvision

    fake = types.ModuleType("torchvision")
    fake.__dict__.update(torchvision.__dict__)  # what the engine uses still works; only the version is another build
    fake.__version__ = torchvision.__version__.split("+")[0] + "+cpu"
    monkeypatch.setattr(torch, "__version__", torch.__version__.split("+")[0] + "+cu124")
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    assert _main(_argv(tmp_path, "mixed")) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: torch ") and "are not a pair (different builds)" in err
    assert not (tmp_path / "runs" / "mixed").exists()


# ---------------------------------------------------------------- 6. predict on a small set -----------------
@needs_fmnist
def test_predict_on_a_small_set_flags_by_prob_given_and_writes_into_the_run_folder(tmp_path, capsys, monkeypatch):
    import csv

    from training import predict

    assert _main(_argv(tmp_path, "small", "--method", "instancegm")) == 0  # 60 training images (balanced 64)
    run_dir = tmp_path / "runs" / "small"
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    assert predict.main([str(run_dir / ckpt_lib.FILENAME), "--sort", "--sheet", "4"]) == 0
    captured = capsys.readouterr()
    assert list(cwd.iterdir()) == []  # nothing in the folder it was started from
    rows = list(csv.DictReader((run_dir / "predictions.csv").open()))
    assert (run_dir / "suspects.png").is_file() and len(rows) == 60 < predict.MIN_GMM_IMAGES
    assert "60 images: too few for the GMM's clean probability" in captured.err + captured.out
    assert all(r["suspect"] == str(int(float(r["prob_given"]) <= 0.5)) for r in rows)
    given = [float(r["prob_given"]) for r in rows]
    assert given == sorted(given)  # --sort follows the score that flags
    assert "suspect labels (prob_given <= 0.5)" in captured.out


def test_predict_default_outputs_go_into_the_run_folder(tmp_path):
    from training.predict import default_outputs, sheet_beside

    ckpt = tmp_path / "runs" / "r" / "checkpoint.pt"
    assert default_outputs(ckpt, "train", "") == tmp_path / "runs" / "r" / "predictions.csv"
    folder = default_outputs(ckpt, "folder", str(tmp_path / "pets" / "test"))
    assert folder == tmp_path / "runs" / "r" / "predictions_test.csv"
    assert sheet_beside(folder).name == "suspects_test.png"
    assert sheet_beside(tmp_path / "review" / "pred.csv") == tmp_path / "review" / "suspects.png"
