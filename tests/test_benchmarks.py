"""The benchmark scripts keep working: their ``--quick`` modes write the table, JSON and figure (the numbers
themselves are not checked: they depend on the machine)."""

import json
from pathlib import Path

import pytest
import torch
from conftest import FMNIST, needs_fmnist

from benchmarks import fmnist_idn, fp32_accuracy, label_errors, throughput
from training import Config


@pytest.mark.slow
@pytest.mark.isolated  # channels_last and bf16 kernels depend on the CPU
def test_throughput_quick_writes_table_and_json(tmp_path, capsys):
    out = tmp_path / "throughput.json"
    report = throughput.main(
        ["--quick", "--device", "cpu", "--threads", "1", "--out", str(out), "--options", "channels_last", "fp16"]
    )
    saved = json.loads(out.read_text())
    assert saved["markdown"] == report["markdown"] and saved["markdown"] in capsys.readouterr().out
    assert {"settings", "environment", "phases", "summary", "options", "wall_s"} <= set(saved)
    phases = {(r["path"], r["phase"]) for r in saved["phases"]}
    timed = ("warmup step", "eval-train pass", "dm step", "igm step", "test pass")
    for path in ("device", "pil", "naive"):
        assert {(path, p) for p in (*timed, "generative part", "igm step breakdown")} <= phases
    assert {("floor", p) for p in ("warmup step", "dm step", "igm step", "generative part")} <= phases
    assert ("any", "gmm fit") in phases
    for row in saved["phases"]:
        if "ms_q1" in row:  # timed rows: median inside its quartiles, positive throughput and memory
            assert 0 < row["ms_min"] <= row["ms_q1"] <= row["ms_median"] <= row["ms_q3"] <= row["ms_max"]
            assert row["images_per_s"] > 0 and row["peak_mem_mb"] > 0 and row["reps"] == 2
    breakdown = next(r["breakdown_ms"] for r in saved["phases"] if r["phase"] == "igm step breakdown")
    assert "joint backward + SGD/Adam updates" in breakdown
    assert any(k.startswith("igm step gap to floor (device)") for k in saved["summary"])
    assert any(k.startswith("igm step speed-up over naive (device)") for k in saved["summary"])
    options = {r["option"]: r for r in saved["options"]}
    assert options["fp32"]["loss_abs_diff"] == 0.0 and options["fp32"]["grad_rel_l2"] == 0.0
    assert options["channels_last"]["same_init"] and options["channels_last"]["grad_cosine"] > 0.99
    assert "skipped" in options["fp16"]  # CPU
    assert "| path | phase |" in report["markdown"] and "| option |" in report["markdown"]


def test_throughput_refuses_channels_last_where_pytorch_crashes():
    cpu = torch.device("cpu")
    assert throughput.channels_last_problem(Config(width=4, channels_last=True), cpu)
    assert not throughput.channels_last_problem(Config(width=8, channels_last=True), cpu)
    assert not throughput.channels_last_problem(Config(width=4, channels_last=False), cpu)


def test_throughput_time_steps_statistics():
    calls = []
    stats = throughput.time_steps(lambda: calls.append(1), torch.device("cpu"), warmup=2, reps=3, steps=4)
    assert len(calls) == 2 + 3 * 4
    assert stats["reps"] == 3 and stats["steps_per_rep"] == 4
    assert stats["ms_min"] <= stats["ms_median"] <= stats["ms_max"]


@needs_fmnist
@pytest.mark.slow
def test_fmnist_idn_quick_writes_table_json_figure_and_caches(tmp_path, capsys):
    report = fmnist_idn.main(["--quick", "--results_dir", str(tmp_path)])
    for suffix in ("md", "json", "png"):
        assert (tmp_path / f"fmnist_idn_quick.{suffix}").stat().st_size > 0
    cells_dir = tmp_path / "fmnist_idn_quick"
    for method in fmnist_idn.METHODS:  # one ordinary run folder per cell, noisy labels cached beside them
        assert (cells_dir / f"r0.4_{method.replace('+', '_')}" / "summary.json").exists()
    assert list((cells_dir / "noise").glob("fashionmnist_instance_r0.4_*.npy"))
    saved = json.loads((tmp_path / "fmnist_idn_quick.json").read_text())
    assert saved["budget"] == report["budget"] and saved["budget"]["num_epochs"] == fmnist_idn.QUICK.num_epochs
    cells = {c["method"]: c for c in saved["cells"]}
    assert set(cells) == set(fmnist_idn.METHODS)
    for method, cell in cells.items():
        assert cell["rate"] == 0.4 and 0.3 < cell["realised_rate"] < 0.5
        assert 0.0 <= cell["test_acc_last"] <= 100.0 and cell["best_epoch"] >= 1
        assert len(cell["curves"]["test_acc"]) == fmnist_idn.QUICK.num_epochs
        assert (cell["precision"] is None) == (method == "ce")
        assert (cell["estimated_rate"] is None) == (not method.endswith("+noise_rate"))
    table = saved["table_markdown"]
    assert table.count("\n") == 2 + len(fmnist_idn.METHODS) and table in capsys.readouterr().out
    assert saved["invocations"][-1]["cells_run"]

    # A second invocation reuses every finished cell; other settings on the same folders are refused.
    again = fmnist_idn.main(["--quick", "--results_dir", str(tmp_path)])
    assert again["invocations"][-1]["cells_run"] == [] and len(again["invocations"]) == 2
    assert again["table_markdown"] == table
    with pytest.raises(SystemExit, match="other settings"):
        fmnist_idn.main(["--quick", "--results_dir", str(tmp_path), "--lr", "0.1"])


@needs_fmnist
@pytest.mark.slow
@pytest.mark.isolated  # channels_last and bf16 kernels depend on the CPU
def test_gpu_check_quick_writes_table_json_and_curve(tmp_path, capsys):
    from benchmarks import gpu_check

    report = gpu_check.main([str(tmp_path), "--quick", "--data_path", str(FMNIST.parent)])
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert (tmp_path / "gpu_check.md").read_text() == saved["markdown"] == report["markdown"]
    out = capsys.readouterr().out
    assert saved["markdown"] in out
    for part in ("phases", "options", "concurrency", "train"):  # each part's budget and spend, printed and recorded
        assert f"gpu_check part {part}: budget" in out and f"gpu_check part {part}: spent" in out
        assert saved["budget"]["parts"][part]["spent_s"] > 0 and "skipped" not in saved["budget"]["parts"][part]
    phases = {(r["path"], r["phase"]) for r in saved["throughput"]["phases"]}
    for phase in ("warmup step", "eval-train pass", "igm step", "test pass"):
        assert {("device", phase), ("naive", phase)} <= phases
    options = {r["option"]: r for r in saved["throughput"]["options"]}
    assert options["fp32"]["grad_rel_l2"] == 0.0
    assert 0 < options["bf16"]["grad_rel_l2"] < 0.5  # bf16 changes the result, within a bound
    curve = saved["train"]["curve"]
    assert [r["epoch"] for r in curve] == list(range(1, len(curve) + 1)) and len(curve) >= 1
    assert all(0.0 <= r["test_acc"] <= 100.0 for r in curve)
    assert saved["train"]["num_train"] == 100 and (tmp_path / "gpu_check.png").stat().st_size > 0
    shared = saved["concurrency"]["rows"]  # K runs at once: every level measured, each run stepped
    assert [r["runs"] for r in shared] == [1, 2] and all(r["aggregate_images_per_s"] > 0 for r in shared)
    assert "## Runs sharing one GPU" in saved["markdown"]


def test_gpu_check_imports_no_dashboard_library_and_refuses_cpu_without_quick(tmp_path):
    import subprocess
    import sys

    code = "import sys; import benchmarks.gpu_check; print('wandb' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    if not torch.cuda.is_available():
        from benchmarks import gpu_check

        with pytest.raises(SystemExit, match="no CUDA GPU"):
            gpu_check.main([str(tmp_path), "--device", "cpu"])


def test_an_option_that_fails_here_is_a_skipped_row(monkeypatch):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("InductorError: no working C compiler found\n(long traceback)")

    monkeypatch.setattr(torch, "compile", no_compiler)
    targs = throughput.parse_args(["--quick", "--device", "cpu", "--threads", "1", "--reps", "1", "--steps", "1"])
    cfg = Config(dataset="cifar10", num_classes=10, width=4, batch_size=8, method="instancegm", device="cpu")
    rows = {r["option"]: r for r in throughput.measure_options(cfg, torch.device("cpu"), ["compile"], targs)}
    assert rows["compile"] == {
        "option": "compile",
        "skipped": "RuntimeError: InductorError: no working C compiler found",
    }
    assert rows["fp32"]["ms_median"] > 0  # the others are still measured


def test_gpu_check_writes_after_every_part_times_like_training_and_survives_a_failing_part(tmp_path, monkeypatch):
    from benchmarks import gpu_check

    seen = {}

    def phases(args, device, budget_s):
        seen["cudnn_benchmark"] = torch.backends.cudnn.benchmark
        return {"phases": [], "summary": {}}

    def options(args, device, budget_s):
        seen["report_after_phases"] = json.loads((tmp_path / "gpu_check.json").read_text())
        raise RuntimeError("CUDA error: out of memory")

    def train(args, device, out_dir, budget_s):
        seen["report_after_options"] = json.loads((tmp_path / "gpu_check.json").read_text())
        seen["train_budget_s"] = budget_s
        return {"curve": [], "config": {"r": 0.4, "width": 8, "batch_size": 16}, "num_train": 0, "stopped": "x",
                "setup_s": 0.0, "wall_s": 0.0}  # fmt: skip

    monkeypatch.setattr(gpu_check, "run_phases", phases)
    monkeypatch.setattr(gpu_check, "run_options", options)
    monkeypatch.setattr(gpu_check, "run_training", train)
    monkeypatch.setattr(gpu_check, "run_concurrency", lambda args, device, budget_s: {"rows": []})
    torch.backends.cudnn.benchmark = False
    gpu_check.main([str(tmp_path), "--quick", "--data_path", str(tmp_path), "--budget_s", "100"])
    assert seen["cudnn_benchmark"] is True  # as seed_everything leaves it for a training run
    assert "phases" in seen["report_after_phases"]["budget"]["parts"]  # written before part (b) started
    assert (
        seen["report_after_options"]["budget"]["parts"]["options"]["skipped"]
        == "RuntimeError: CUDA error: out of memory"
    )
    assert 0 < seen["train_budget_s"] <= 30  # --quick caps the training run; the total budget bounds it
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(report["budget"]["parts"]) == {"phases", "options", "concurrency", "train"}
    assert "options 0/90 s (skipped: RuntimeError: CUDA error: out of memory)" in report["markdown"]


def test_gpu_check_refuses_a_data_path_that_does_not_exist(tmp_path):
    from benchmarks import gpu_check

    with pytest.raises(SystemExit, match="--data_path /nonexistent/fmnist does not exist"):
        gpu_check.main([str(tmp_path), "--quick", "--data_path", "/nonexistent/fmnist"])


def test_fmnist_idn_table_is_mean_and_sd_over_seeds():
    def cell(last, best, eps):
        return {
            "subset_realised_rate": 0.413, "realised_rate": 0.401, "test_acc_last": last, "test_acc_best": best,
            "precision": 0.5, "recall": None, "estimated_rate": eps, "train_time_s": 120.0,
        }  # fmt: skip

    cells = [(0.4, "dividemix+noise_rate", 1), (0.4, "dividemix+noise_rate", 2), (0.4, "ce", 1), (0.4, "ce", 2)]
    table = fmnist_idn.markdown_table(
        [cell(50.0, 52.0, 0.3), cell(54.0, 56.0, 0.5), cell(60.0, 61.0, None), None], cells
    )
    rows = table.splitlines()[2:]
    assert len(rows) == 2  # one line per (rate, row)
    assert "| 2/2 | 52.00 ± 2.83 | 54.00 ± 2.83 | 0.500 ± 0.000 | — | 0.400 ± 0.141 | 2.0 |" in rows[0]
    assert "| ce | 1/2 | 60.00 | 61.00 |" in rows[1]
    assert fmnist_idn.split_method("instancegm+noise_rate") == ("instancegm", "noise_rate")
    assert fmnist_idn.split_method("ce") == ("ce", "gmm")


def test_fmnist_idn_estimate_table_compares_the_estimate_and_the_two_splits():
    def cell(first, last, err, labeled, precision, gmm_precision):
        return {
            "subset_realised_rate": 0.413, "estimated_rate_first": first, "estimated_rate": last,
            "estimate_abs_error": err, "labeled": labeled, "precision": precision, "recall": 0.9,
            "gmm_precision": gmm_precision, "gmm_recall": 0.8,
        }  # fmt: skip

    cells = [(0.4, "instancegm+noise_rate", 1), (0.4, "instancegm+noise_rate", 2), (0.4, "instancegm", 1)]
    gmm_only = {"estimate_abs_error": None}  # a gmm row has no estimate and gets no line
    table = fmnist_idn.estimate_table(
        [cell(0.1, 0.4, 0.2, 500, 0.7, 0.8), cell(0.3, 0.5, 0.1, 400, 0.6, 0.8), gmm_only], cells
    )
    rows = table.splitlines()[2:]
    assert rows == [
        "| 40% | 0.413 | instancegm+noise_rate | 2 | 0.200 ± 0.141 | 0.450 ± 0.071 | 0.150 ± 0.071 | 450 ± 71 "
        "| 0.650 ± 0.071 / 0.800 ± 0.000 | 0.900 ± 0.000 / 0.800 ± 0.000 |"
    ]
    assert fmnist_idn.estimate_table([gmm_only], cells[2:]) == ""


@pytest.mark.isolated  # channels_last kernels depend on the CPU
def test_fp32_accuracy_measures_each_format_against_float64(tmp_path, capsys):
    out = tmp_path / "acc.json"
    # width 8: the narrowest that channels-last trains correctly everywhere (models/memory_format.py)
    rows = fp32_accuracy.main(["--width", "8", "--batch", "8", "--seeds", "0", "--threads", "1", "--out", str(out)])
    assert [r["option"] for r in rows] == ["contiguous", "channels_last"]
    for r in rows:  # fp32 is not float64, but one step of a tiny net stays close to it
        assert 0.0 < r["grad_rel_l2_err"] < 1e-3 and r["loss_abs_err"] < 1e-5
    assert json.loads(out.read_text())["rows"] == rows
    assert "| channels_last | 0 |" in capsys.readouterr().out


def test_fp32_accuracy_skips_channels_last_where_onednn_breaks_it(capsys):
    rows = fp32_accuracy.main(["--width", "4", "--batch", "2", "--seeds", "0", "--threads", "1"])
    assert rows[0]["option"] == "contiguous" and "grad_rel_l2_err" in rows[0]
    assert rows[1]["option"] == "channels_last" and "uxlfoundation/oneDNN#6035" in rows[1]["skipped"]
    assert "| channels_last | 0 | skipped: --channels_last on the CPU" in capsys.readouterr().out


@pytest.mark.slow
@needs_fmnist
def test_label_errors_quick_writes_tables_and_plot_and_caches_every_piece(tmp_path, capsys):
    report = label_errors.main(["--quick", "--results_dir", str(tmp_path)])
    cells = tmp_path / "label_errors_quick"
    noise = json.loads((cells / "r0.4_instancegm" / "config.json").read_text())["noise"]
    detection = report["detection"]
    assert [r["detector"] for r in detection] == [
        "instancegm",
        "cleanlab_kfold",
        "cleanlab_instancegm",
        "ce_small_loss",
    ]
    for r in detection:  # the same 200 images and noisy labels for every detector
        assert r["truly_wrong"] == round(200 * noise["subset_realised_rate"])
        assert 0 <= r["auroc"] <= 1 and 0 <= r["ap"] <= 1 and 0 < r["flagged"] <= 200 and r["seconds"] > 0
    variants = [r["variant"] for r in report["retrain"]]
    assert variants[0] == "noisy labels" and len(variants) == 5
    assert report["retrain"][0]["label_noise"] == pytest.approx(noise["subset_realised_rate"])
    assert (cells / "r0.4_instancegm" / "label_scores.npz").exists()
    assert len(list((cells / "kfold_r0.4_seed1").glob("fold*.npz"))) == 2  # --quick: K = 2
    out = capsys.readouterr().out
    assert (
        "| 40% | cleanlab_kfold | 1 |" in out
        and report["table_markdown"] in (tmp_path / "label_errors_quick.md").read_text()
    )
    assert (tmp_path / "label_errors_quick.png").stat().st_size > 10_000

    # Rerun: nothing is trained again but the one piece deleted, and the numbers are the same.
    (cells / "retrain_r0.4_seed1" / "noisy.json").unlink()
    again = label_errors.main(["--quick", "--results_dir", str(tmp_path)])
    assert "0 of 2 engine runs to train" in capsys.readouterr().out
    assert again["detection"] == detection and [r["test_acc"] for r in again["retrain"]] == [
        r["test_acc"] for r in report["retrain"]
    ]
    assert len(json.loads((tmp_path / "label_errors_quick.json").read_text())["invocations"]) == 2
