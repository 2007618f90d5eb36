"""End-to-end runs of the engine on real data (Debian's Fashion-MNIST): learning, resume, bad input."""

import json
from pathlib import Path

import pytest
import torch
from conftest import needs_fmnist

import instanceGM
from training import checkpoint as ckpt_lib
from training.metrics import read_jsonl


def _argv(tmp_path, *extra):
    return [
        "--dataset", "fashionmnist", "--r", "0.4", "--train_subset", "1000", "--balanced_subset",
        "--test_subset", "2000", "--width", "8", "--batch_size", "32", "--lr", "0.1",
        "--num_epochs", "4", "--warm_up", "2", "--seed", "3", "--device", "cpu",
        "--output_dir", str(tmp_path / "runs"), "--noise_dir", str(tmp_path / "noise"), "--log_interval", "5",
        *extra,
    ]  # fmt: skip


def _run(tmp_path, *extra):
    return instanceGM.main(_argv(tmp_path, *extra))


def _comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


@needs_fmnist
@pytest.mark.slow
@pytest.mark.parametrize("method", ["ce", "dividemix", "instancegm"])
def test_each_method_learns_on_fashion_mnist_idn(tmp_path, method):
    summary = _run(tmp_path, "--method", method, "--run_name", method)
    run_dir = Path(summary["run_dir"])
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]  # exactly --num_epochs epochs
    # 10 classes: chance is 10%. 1000 images with 40% instance-dependent noise and 4 short epochs are far from
    # converged: over seeds 1-5 and two CPUs (AVX2, AVX-512) the last epoch ranged 29.7-52.6% and the best epoch
    # 31.3-52.6%, so the bounds are 2x and 2.5x chance; a method that does not learn stays near 10%.
    assert summary["test/acc"]["last"] > 20.0 and summary["test/acc"]["best"] > 25.0, summary
    assert set(summary) >= {"test/acc", "test/net1/acc", "test/net2/acc", "noise/realised_rate"}
    assert 0.3 < summary["noise/realised_rate"] < 0.5
    last = rows[-1]
    if method == "ce":
        assert last["phase"] == "ce" and "split/net1/labeled" not in last
    else:
        assert last["phase"] == "train"
        for net in ("net1", "net2"):
            assert 0 < last[f"split/{net}/labeled"] < 1000
            assert 0.0 <= last[f"split/{net}/precision"] <= 1.0 and 0.5 < last[f"split/{net}/auc"] <= 1.0
    has_vae = method == "instancegm"
    assert ("train/net1/vae/recon" in last) == has_vae
    if has_vae:
        for key in ("recon", "noisy_label_ce", "y_prior", "kl_z"):
            assert f"train/net2/vae/{key}" in last
    config = json.loads((run_dir / "config.json").read_text())
    assert config["config"]["method"] == method and config["noise"]["file"].endswith("r0.4_seed123.npy")
    assert json.loads((run_dir / "summary.json").read_text())["test/acc"]["epochs"] == 4
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 3 and (state["peers"]["net1"]["opt_vae"] is not None) == has_vae


@needs_fmnist
@pytest.mark.slow
def test_kill_and_resume_gives_identical_metrics(tmp_path, interrupt_train_epoch):
    small = ("--train_subset", "400", "--num_epochs", "4")
    full = _run(tmp_path, "--run_name", "full", *small)
    expected = read_jsonl(Path(full["run_dir"]) / "metrics.jsonl")

    # Interrupt the second run in the middle of its last epoch (net2's co-training phase).
    interrupt_train_epoch.interrupt(4)  # epochs 2 and 3 train two peers each: this is epoch 3, net2
    with pytest.raises(SystemExit) as exit_info:
        _run(tmp_path, "--run_name", "killed", *small)
    assert exit_info.value.code == 130
    killed_dir = tmp_path / "runs" / "killed"
    assert torch.load(killed_dir / "checkpoint.pt", weights_only=True)["epoch"] == 2
    interrupt_train_epoch.restore()

    # Restarting without --resume is refused (nothing already written is lost) ...
    with pytest.raises(SystemExit) as refused:
        _run(tmp_path, "--run_name", "killed", *small)
    assert refused.value.code == 2
    # ... and --resume auto finishes with exactly the uninterrupted run's metrics.
    resumed = _run(tmp_path, "--run_name", "killed", "--resume", "auto", *small)
    got = read_jsonl(killed_dir / "metrics.jsonl")
    assert _comparable(got) == _comparable(expected)
    assert resumed["test/acc"] == full["test/acc"]
    log_txt = (killed_dir / "log.txt").read_text()  # one numbering: epochs 1-3 done, epoch 4 was cut short
    assert f"interrupted: the last completed epoch is in {killed_dir / 'checkpoint.pt'}; continue with" in log_txt
    assert "after epoch 3 of 4; next: epoch 4" in log_txt


@needs_fmnist
@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--num_class", "5"], "--num_class 5"),
        (["--r", "1.2"], "--r 1.2"),
        (["--resume", "/nonexistent/checkpoint.pt"], "no such file"),
        (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--r", "-1"], "--"),
        # width 4: shortcut convolutions with 4 input channels, whose channels-last weight gradient oneDNN breaks
        (["--device", "cpu", "--width", "4", "--channels_last"], "oneDNN bug uxlfoundation/oneDNN#6035"),
    ],
)
def test_bad_input_exits_with_one_line(tmp_path, capsys, extra, needle):
    with pytest.raises(SystemExit) as exit_info:
        _run(tmp_path, *extra)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize("content", [b"not a checkpoint at all", None])
def test_corrupt_or_foreign_checkpoint(tmp_path, capsys, content):
    path = tmp_path / "checkpoint.pt"
    if content is None:
        torch.save({"net1_state_dict": {}, "epoch": 3}, path)  # the original's layout
    else:
        path.write_bytes(content)
    with pytest.raises(ckpt_lib.CheckpointError) as err:
        ckpt_lib.load(path)
    assert str(path) in str(err.value)
    assert ("not an InstanceGM checkpoint" if content is None else "corrupt") in str(err.value)


def test_checkpoint_from_another_run_is_refused():
    with pytest.raises(ckpt_lib.CheckpointError, match="num_classes"):
        ckpt_lib.check_compatible({"num_classes": 10}, {"num_classes": 100}, "x.pt")


@needs_fmnist
def test_nan_loss_stops_with_pointer_to_last_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _run(tmp_path, "--lr", "1e12", "--num_epochs", "3", "--train_subset", "200")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    # named as the log numbers epochs (from 1); no checkpoint to point at yet
    assert "net1: the loss became NaN/inf in epoch 1 (non-finite: loss, ce)" in err
    assert "no epoch completed yet: start again after lowering --lr" in err and "--resume auto" not in err
    (log_txt,) = (tmp_path / "runs").glob("*/log.txt")
    assert "error: net1: the loss became NaN/inf" in log_txt.read_text()  # the run's own log says why it stopped


@needs_fmnist
@pytest.mark.parametrize("threshold", ["1.0", "0.0"])
def test_empty_labeled_or_unlabeled_set_recovers(tmp_path, threshold):
    # p_threshold 1.0: nobody is 'clean' -> the B most likely clean samples; 0.0: (almost) nobody unlabeled
    summary = _run(tmp_path, "--p_threshold", threshold, "--num_epochs", "3", "--train_subset", "200")
    rows = read_jsonl(Path(summary["run_dir"]) / "metrics.jsonl")
    assert rows[-1]["phase"] == "train"
    labeled = [rows[-1][f"split/{net}/labeled"] for net in ("net1", "net2")]
    if threshold == "1.0":
        assert labeled == [32, 32]  # batch_size most likely clean samples
    else:
        assert max(labeled) == 200  # every sample labeled: the other net trained without an unlabeled set
