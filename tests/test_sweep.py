"""Grids, the sweep's executors (local and submitit) and the report against the paper."""

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training import report as report_lib
from training import sweep as sweep_lib
from training.grid import ROOT, GridError, cell_state, load_grid, named_grids, write_manifest

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
needs_fmnist = pytest.mark.skipif(not FMNIST.exists(), reason="apt-get install dataset-fashion-mnist")


@pytest.fixture(scope="module")
def noise_dir(tmp_path_factory) -> Path:
    """Generated noisy labels, shared by this module's runs (one file per rate)."""
    return tmp_path_factory.mktemp("noise")


def _tiny(noise_dir: Path, epochs: int) -> list[str]:
    """A Fashion-MNIST cell in seconds: 100 images, width 8, 100 test images, one warm-up epoch."""
    return [
        "--set", "train_subset=100", "--set", "test_subset=100", "--set", "batch_size=32",
        "--set", f"num_epochs={epochs}", "--set", "warm_up=1", "--set", f"noise_dir={noise_dir}",
    ]  # fmt: skip


# ================================================================ grids =======================================
def test_paper_grids_hold_the_paper_numbers():
    assert set(named_grids()) >= {"cifar10_idn", "cifar100_idn", "red_mini", "animal10n", "clothing1m"}
    c100 = load_grid("cifar100_idn")
    cells = c100.cells()
    assert len(cells) == 5 * 2 * 3  # rates x methods x seeds
    paper = {(c.setting, c.method): c.paper for c in cells}
    assert paper[("r=0.45", "instancegm")] == 77.49 and paper[("r=0.5", "dividemix")] == 58.61
    assert load_grid("cifar10_idn").paper["instancegm"]["r=0.5"] == 95.90
    red = [c.paper for c in load_grid("red_mini").cells() if c.method == "dividemix" and c.seed == 1]
    assert red == [50.96, 46.72, 43.14, 34.50]
    assert {c.method: c.paper for c in load_grid("clothing1m").cells()} == {"instancegm": 74.40, "dividemix": 74.76}
    animal = load_grid("animal10n").cells()
    assert {c.paper for c in animal} == {84.6} and animal[0].setting == "" and animal[0].name == "instancegm_seed1"


def test_overrides_and_cell_commands(tmp_path):
    grid = load_grid("cifar10_idn").with_overrides(["r=0.5", "data_path=/data/c10"], seeds=[7], methods=["dividemix"])
    (cell,) = grid.cells()
    assert (cell.name, cell.paper) == ("r0.5_dividemix_seed7", 93.04)  # a narrowed axis keeps its paper number
    assert cell_state(tmp_path / cell.name) == "pending"
    cmd = sweep_lib.cell_command(cell, tmp_path)
    assert cmd[1] == str(ROOT / "instanceGM.py")
    assert cmd[2:] == [
        "--dataset", "cifar10", "--data_path", "/data/c10", "--r", "0.5", "--method", "dividemix", "--seed", "7",
        "--output_dir", str(tmp_path), "--run_name", "r0.5_dividemix_seed7", "--resume", "auto",
    ]  # fmt: skip
    ddp = sweep_lib.cell_command(cell, tmp_path, nproc=4)
    assert ddp[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    assert "--noise_rate" in ddp and "--r" not in ddp  # torchrun would take --r for its own option
    two = load_grid("cifar10_idn").with_overrides(["r=0.2,0.4", "lambda_u=0,25"], seeds=[1], methods=["instancegm"])
    assert [c.name for c in two.cells()] == [
        "r0.2_lambda_u0_instancegm_seed1", "r0.2_lambda_u25_instancegm_seed1",
        "r0.4_lambda_u0_instancegm_seed1", "r0.4_lambda_u25_instancegm_seed1",
    ]  # fmt: skip
    assert sweep_lib.gpu_slots("0,1,2,3", 2) == ["0,1", "2,3"] and sweep_lib.gpu_slots("", 1) == [None]
    for bad in (["r"], ["seed=1,2"]):
        with pytest.raises(GridError):
            load_grid("cifar10_idn").with_overrides(bad)
    with pytest.raises(GridError, match="choose from instancegm"):
        load_grid("cifar10_idn").with_overrides(methods=["divide_mix"])
    with pytest.raises(SystemExit) as err:
        sweep_lib.main(["no_such_grid"])
    assert err.value.code == 2


def test_noise_rate_rows_run_with_the_selection_flag_and_carry_the_eccv_numbers(tmp_path):
    grid = load_grid("cifar100_idn").with_overrides(
        ["r=0.4,0.5"], seeds=[1], methods=["instancegm", "instancegm+noise_rate", "dividemix+noise_rate"]
    )
    cells = {(c.setting, c.method): c for c in grid.cells()}
    assert len(cells) == 6
    assert [cells[("r=0.4", m)].paper for m in ("instancegm", "instancegm+noise_rate", "dividemix+noise_rate")] == [
        78.47, 79.52, 72.41,
    ]  # fmt: skip
    nr = cells[("r=0.5", "dividemix+noise_rate")]
    assert (nr.name, nr.paper) == ("r0.5_dividemix_noise_rate_seed1", 64.02)
    cmd = sweep_lib.cell_command(nr, tmp_path)
    assert cmd[cmd.index("--selection") + 1] == "noise_rate" and cmd[cmd.index("--method") + 1] == "dividemix"
    assert "--selection" not in sweep_lib.cell_command(cells[("r=0.4", "instancegm")], tmp_path)
    red = [c.paper for c in load_grid("red_mini").with_overrides(methods=["instancegm+noise_rate"]).cells()]
    assert red[::3] == [None, 56.61, 51.40, 43.83]  # the ECCV paper has no 20% row
    with pytest.raises(GridError, match="instancegm\\+noise_rate"):
        load_grid("cifar10_idn").with_overrides(methods=["ce+noise_rate"])
    # A run started by hand with --selection noise_rate is its own row of the report.
    run = tmp_path / "runs" / "mine"
    _fake_run(run, epochs=4, done=4, last=79.0, best=80.0, mean10=78.0)
    info = json.loads((run / "config.json").read_text())
    info["config"].update(dataset="cifar100", noise_mode="instance", r=0.4, method="instancegm", seed=1)
    info["config"]["selection"] = "noise_rate"
    (run / "config.json").write_text(json.dumps(info))
    (rep,) = report_lib.collect([tmp_path / "runs"])
    (row,) = rep.rows
    assert (row.method, row.paper) == ("instancegm+noise_rate", 79.52)


# ================================================================ local executor ==============================
def test_interrupt_forwards_ctrl_c_to_a_run_that_did_not_get_it():
    child = "import signal, sys, time; signal.signal(signal.SIGINT, lambda *_: sys.exit(130)); print(1, flush=True); "
    proc = subprocess.Popen([sys.executable, "-c", child + "time.sleep(60)"], stdout=subprocess.PIPE)
    proc.stdout.readline()  # its handler is installed
    t0 = time.monotonic()
    sweep_lib.interrupt([proc], grace_s=0.2)
    assert proc.returncode == 130 and time.monotonic() - t0 < 10


@needs_fmnist
@pytest.mark.slow
def test_local_sweep_2x2_interrupted_resumes_without_redoing_finished_cells(tmp_path, noise_dir):
    sweep_dir = tmp_path / "sweep"
    argv = ["fmnist_cpu", "--set", "r=0.2,0.4", "--seeds", "1", "--methods", "instancegm,dividemix",
            "--sweep_dir", str(sweep_dir), *_tiny(noise_dir, epochs=2)]  # fmt: skip
    names = ["r0.2_instancegm_seed1", "r0.2_dividemix_seed1", "r0.4_instancegm_seed1", "r0.4_dividemix_seed1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "training.sweep", *argv],
        cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    # Ctrl-C once the first cell is done and the second has finished its first epoch (of two).
    deadline = time.time() + 300
    while not (sweep_dir / names[1] / "checkpoint.pt").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "rerun the same command" in out
    assert [cell_state(sweep_dir / n) for n in names] == ["finished", "partial", "pending", "pending"]
    first = {p: p.read_bytes() for p in (sweep_dir / names[0]).iterdir() if p.is_file()}

    # The same command finishes the sweep, here two cells at a time (one per "GPU" slot; the cells run on the CPU).
    result = sweep_lib.main([*argv, "--gpus", "0,1"])
    assert result["skipped"] == 1 and result["ran"] == sorted(names[1:])
    assert {p: p.read_bytes() for p in (sweep_dir / names[0]).iterdir() if p.is_file()} == first  # untouched
    assert "resumed from" in (sweep_dir / names[1] / "log.txt").read_text()
    for name in names:
        rows = [json.loads(line) for line in (sweep_dir / name / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == [0, 1], name  # the interrupted epoch is not doubled
        assert cell_state(sweep_dir / name) == "finished"

    (rep,) = report_lib.collect([sweep_dir])
    assert [(r.setting, r.method, r.status) for r in rep.rows] == [
        ("r=0.2", "instancegm", "1/1"), ("r=0.2", "dividemix", "1/1"),
        ("r=0.4", "instancegm", "1/1"), ("r=0.4", "dividemix", "1/1"),
    ]  # fmt: skip
    summary = json.loads((sweep_dir / names[3] / "summary.json").read_text())
    assert rep.rows[3].stat("last") == (summary["test/acc"]["last"], None)
    assert 0.3 < rep.rows[3].mean("noise_rate") < 0.6 and rep.rows[3].hours > 0


@needs_fmnist
@pytest.mark.slow
def test_slurm_executor_submits_through_submitit(tmp_path, noise_dir):
    submitit = pytest.importorskip("submitit")
    sweep_dir = tmp_path / "sweep"
    argv = ["fmnist_cpu", "--set", "r=0.4", "--seeds", "3", "--methods", "ce", "--sweep_dir", str(sweep_dir),
            *_tiny(noise_dir, epochs=1), "--executor", "slurm", "--slurm_cluster", "local", "--wait",
            "--partition", "gpu", "--time", "30", "--slurm_extra", "constraint=a100"]  # fmt: skip
    result = sweep_lib.main(argv)
    assert result["ran"] == ["r0.4_ce_seed3"]
    assert cell_state(sweep_dir / "r0.4_ce_seed3") == "finished"
    jobs = json.loads((sweep_dir / "jobs.json").read_text())
    assert list(jobs) == ["r0.4_ce_seed3"] and jobs["r0.4_ce_seed3"].isdigit()
    pickled = list((sweep_dir / "submitit").glob("*_submitted.pkl"))
    assert pickled, "submitit wrote no submission"
    submission = submitit.core.utils.DelayedSubmission.load(pickled[0])
    assert isinstance(submission.function, sweep_lib.CellJob)
    assert submission.args[0][-4:] == ["--run_name", "r0.4_ce_seed3", "--resume", "auto"]
    again = sweep_lib.main(argv)  # finished cells are not submitted again
    assert again["ran"] == [] and again["skipped"] == 1


def test_slurm_submission_file(tmp_path, monkeypatch):
    """The real Slurm executor up to sbatch: a stand-in sbatch keeps the batch script submitit wrote."""
    pytest.importorskip("submitit")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/job.sbatch\necho "Submitted batch job 4242"\n')
    for tool in ("srun", "sbatch"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    sweep_dir = tmp_path / "sweep"
    sweep_lib.main(["cifar100_idn", "--set", "r=0.5", "--seeds", "2", "--methods", "dividemix", "--executor", "slurm",
                    "--sweep_dir", str(sweep_dir), "--partition", "gpu", "--time", "600", "--gpus_per_cell", "4",
                    "--slurm_extra", "constraint=a100"])  # fmt: skip
    assert json.loads((sweep_dir / "jobs.json").read_text()) == {"r0.5_dividemix_seed2": "4242"}
    script = (tmp_path / "job.sbatch").read_text()
    for line in ("--partition=gpu", "--time=600", "--gpus-per-node=4", "--ntasks-per-node=1", "--constraint=a100",
                 "--job-name=cifar100_idn-r0.5_dividemix_seed2", f"export PYTHONPATH={ROOT}"):  # fmt: skip
        assert line in script, line
    assert json.loads((sweep_dir / "sweep.json").read_text())["cells"][0]["paper"] == 58.61


# ================================================================ report ======================================
def _fake_run(run_dir: Path, *, epochs: int, done: int, last=None, best=None, mean10=None, rate=0.4, split=None):
    """A run folder as the engine writes it: config.json, metrics.jsonl (done epochs), summary.json when done."""
    run_dir.mkdir(parents=True)
    info = {"config": {"num_epochs": epochs}, "noise": {"realised_rate": rate}}
    info["environment"] = {"device": "cuda:0", "gpu": "NVIDIA H100", "processes": 2}
    (run_dir / "config.json").write_text(json.dumps(info))
    rows = [{"epoch": e, "test/acc": 50.0, "time/epoch_s": 180.0} for e in range(done)]
    if split:
        rows[-1].update({f"split/{n}/{k}": v for n, kv in split.items() for k, v in kv.items()})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "checkpoint.pt").write_bytes(b"")
    if done == epochs:
        acc = {"last": last, "best": best, "best_epoch": 3, "mean_last10": mean10, "epochs": epochs}
        (run_dir / "summary.json").write_text(json.dumps({"test/acc": acc}))


def test_report_aggregates_seeds_against_the_paper(tmp_path):
    (tmp_path / "g.toml").write_text(
        'title = "T"\nscript = "instanceGM.py"\nmethods = ["instancegm", "dividemix"]\nseeds = [1, 2, 3]\n'
        'compare = "best"\n[axes]\nr = [0.2, 0.4]\n[paper.instancegm]\n"r=0.2" = 85.0\n"r=0.4" = 80.0\n'
    )
    grid = load_grid(str(tmp_path / "g.toml"))
    sweep = tmp_path / "sweep"
    write_manifest(sweep, grid, grid.cells())
    split = {"net1": {"precision": 0.9, "recall": 0.6}, "net2": {"precision": 0.8, "recall": 0.7}}
    for seed, (last, best, mean10, rate) in enumerate(
        [(80.0, 85.0, 79.0, 0.41), (82.0, 86.0, 81.0, 0.40), (84.0, 90.0, 83.0, 0.42)], start=1
    ):
        _fake_run(sweep / f"r0.2_instancegm_seed{seed}", epochs=10, done=10, last=last, best=best, mean10=mean10,
                  rate=rate, split=split)  # fmt: skip
    _fake_run(sweep / "r0.2_dividemix_seed1", epochs=10, done=10, last=70.0, best=75.0, mean10=71.0)
    _fake_run(sweep / "r0.2_dividemix_seed2", epochs=10, done=5)  # interrupted at epoch 5

    (rep,) = report_lib.collect([sweep])
    rows = {(r.setting, r.method): r for r in rep.rows}
    assert len(rows) == 4  # r=0.4 has not started at all and is still a row
    igm = rows[("r=0.2", "instancegm")]
    assert igm.stat("last") == pytest.approx((82.0, 2.0))  # mean and sample sd of 80, 82, 84
    assert igm.stat("best") == pytest.approx((87.0, 7**0.5))  # 85, 86, 90: deviations -2, -1, 3; 14 / 2 = 7
    assert igm.stat("mean_last10") == pytest.approx((81.0, 2.0))
    assert igm.diff == pytest.approx(2.0)  # best 87 - paper 85
    assert igm.mean("noise_rate") == pytest.approx(0.41)
    assert (igm.mean("precision"), igm.mean("recall")) == pytest.approx((0.85, 0.65))
    assert igm.hours == pytest.approx(3 * 10 * 180 * 2 / 3600)  # 3 seeds x 10 epochs x 180 s x 2 processes = 3 h
    dm = rows[("r=0.2", "dividemix")]
    assert dm.stat("best") == (75.0, None) and dm.diff is None  # one finished seed; no paper number
    assert dm.status == "1/3; seed2 epoch 5/10, seed3 not started"
    assert rows[("r=0.4", "instancegm")].status == "0/3; seed1 not started, seed2 not started, seed3 not started"

    out = tmp_path / "out"
    report_lib.main([str(sweep), "--out", str(out)])
    md = (out / "report.md").read_text()
    assert "| r=0.2 | instancegm | 3/3 | 82.00 ± 2.00 | 87.00 ± 2.65 | 81.00 ± 2.00 | 85.00 | +2.00 |" in md
    assert "| r=0.4 | instancegm | 0/3; seed1 not started" in md and "GPU h" in md and "NVIDIA H100" in md
    table = list(csv.DictReader(io.StringIO((out / "report.csv").read_text())))
    assert [(r["setting"], r["method"], r["seeds_finished"]) for r in table] == [
        ("r=0.2", "instancegm", "3"), ("r=0.2", "dividemix", "1"),
        ("r=0.4", "instancegm", "0"), ("r=0.4", "dividemix", "0"),
    ]  # fmt: skip
    assert float(table[0]["best_sd"]) == pytest.approx(7**0.5) and float(table[0]["device_hours"]) == 3.0
    assert (out / "report.png").stat().st_size > 0


def test_report_groups_loose_run_folders_and_finds_the_paper_number(tmp_path):
    for seed, best in ((1, 77.0), (2, 78.0)):
        run = tmp_path / "runs" / f"c100_{seed}"
        _fake_run(run, epochs=4, done=4, last=76.0, best=best, mean10=75.0)
        info = json.loads((run / "config.json").read_text())
        info["config"].update(dataset="cifar100", noise_mode="instance", r=0.45, method="instancegm", seed=seed)
        (run / "config.json").write_text(json.dumps(info))
    (rep,) = report_lib.collect([tmp_path / "runs"])
    assert rep.grid.name == "cifar100_idn"
    (row,) = rep.rows
    assert (row.setting, row.paper, row.status) == ("r=0.45", 77.49, "2/2")
    assert row.diff == pytest.approx(77.5 - 77.49)


def test_cost_estimate_counts_the_passes_of_a_run():
    from benchmarks.sweep_cost import Recipe, run_flops

    # 100 images, batch 10, 3 epochs (1 warm-up), 10 test images, 50% noise: 50 labeled -> 5 steps per net.
    recipe = Recipe("preact_resnet18", 32, 10, 25, 100, 100, 10, 10, 3, 1)
    warm = 2 * 3 * 100 + 2 * 10  # both nets: forward + backward of every image; the test pass
    dm = 2 * 5 * (6 * 10 + 3 * 4 * 10) + 2 * 100 + 2 * 10  # steps; the divide's losses; the test pass
    assert run_flops(recipe, "dividemix", 0.5, net=1.0, vae=0.0) == warm + 2 * dm
    igm = dm + 2 * 5 * 3 * 2 * 10 * (1.0 + 0.5)  # plus classifier and generative model on 2B, with backward
    assert run_flops(recipe, "instancegm", 0.5, net=1.0, vae=0.5) == warm + 2 * igm
