"""Grids, the sweep's executors (local and submitit) and the report against the paper."""

import csv
import io
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import needs_fmnist

from training import report as report_lib
from training import sweep as sweep_lib
from training.grid import ROOT, GridError, cell_state, load_grid, named_grids, write_manifest


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
    assert (row.setting, row.paper, row.status) == ("r=0.45,num_epochs=4", 77.49, "2/2")
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


def test_cost_recipes_are_the_presets_users_run():
    import importlib

    from benchmarks.sweep_cost import RECIPES

    scripts = {"red_mini": "instanceGM_redMini", "animal10n": "instanceGM_animal10N"}
    scripts |= {"clothing1m": "instanceGM_clothing1M"}
    for dataset, recipe in RECIPES.items():
        cfg = importlib.import_module(scripts.get(dataset, "instanceGM")).PRESETS[dataset]
        assert (recipe.backbone, recipe.image, recipe.classes, recipe.z_dim) == (
            cfg.backbone,
            cfg.vae_size,
            cfg.num_classes,
            cfg.z_dim,
        )
        assert (recipe.batch, recipe.epochs, recipe.warm_up, recipe.mix_unlabeled) == (
            cfg.batch_size,
            cfg.num_epochs,
            cfg.warm_up,
            cfg.mix_unlabeled,
        )
    assert RECIPES["cifar100"].warm_up == 30 and RECIPES["clothing1m"].batch == 32  # the presets' own values


# ================================================================ hostile and odd inputs ======================
FAKE_CELL = """\
import os, sys, time
from pathlib import Path
args = sys.argv[1:]
run = Path(args[args.index("--output_dir") + 1]) / args[args.index("--run_name") + 1]
run.mkdir(parents=True, exist_ok=True)
if (run / "run.lock").exists():  # as the engine: a folder held by another process is refused
    sys.exit(1)
(run / "pid").write_text(str(os.getpid()))
(run / "gpu").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", ""))
peers, deadline = int(os.environ.get("FAKE_PEERS", "1")), time.time() + 30
while len(list(run.parent.glob("*/pid"))) < peers:  # proves that this many cells run at the same time
    if time.time() > deadline:
        sys.exit(3)
    time.sleep(0.05)
time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
"""


@pytest.fixture
def fake_root(tmp_path, monkeypatch) -> Path:
    """A repository root whose entry script ``cell.py`` only records that it ran (no torch, milliseconds)."""
    root = tmp_path / "repo"
    root.mkdir()
    (root / "cell.py").write_text(FAKE_CELL)
    (root / "g.toml").write_text('script = "cell.py"\nmethods = ["ce"]\nseeds = [1, 2]\n[flags]\nnum_epochs = 1\n')
    from training import grid as grid_lib

    monkeypatch.setattr(grid_lib, "ROOT", root)
    monkeypatch.setattr(sweep_lib, "ROOT", root)
    return root


def _sweep_exit(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as err:
        sweep_lib.main(argv)
    return err.value.code, capsys.readouterr().err


def test_slurm_script_takes_no_injected_shell_line(tmp_path, monkeypatch, capsys):
    """Newlines in an axis key, --slurm_extra or --partition are refused; the batch script submitit writes,
    run by a shell with a stand-in srun, creates no file; a repository path with a space stays one word."""
    pytest.importorskip("submitit")
    bin_dir, victim, scripts = tmp_path / "bin", tmp_path / "victim", tmp_path / "scripts"
    for d in (bin_dir, victim, scripts):
        d.mkdir()
    (bin_dir / "srun").write_text(f'#!/bin/sh\nprintf %s "$PYTHONPATH" > {tmp_path}/pythonpath\n')
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {scripts}/job$$.sh\necho "Submitted batch job 7"\n')
    for tool in ("srun", "sbatch"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    spaced = tmp_path / "my repo"
    spaced.mkdir()
    (spaced / "instanceGM.py").write_text("")
    from training import grid as grid_lib

    monkeypatch.setattr(grid_lib, "ROOT", spaced)
    monkeypatch.setattr(sweep_lib, "ROOT", spaced)
    base = ["cifar10_idn", "--seeds", "1", "--methods", "ce", "--executor", "slurm"]
    attacks = [
        ["--set", f"r\ntouch {victim}/key=0.5"],
        ["--set", f"r=0.5\ntouch {victim}/value"],
        ["--slurm_extra", f"constraint=a100\ntouch {victim}/extra"],
        ["--slurm_extra", f"x\ntouch {victim}/extra_key=1"],
        ["--partition", f"gpu\ntouch {victim}/partition"],
        ["--set", "r=0.5"],  # harmless: its script runs below, with the spaced repository path
    ]
    for i, attack in enumerate(attacks):
        try:
            sweep_lib.main([*base, *attack, "--sweep_dir", str(tmp_path / f"sweep{i}")])
        except SystemExit as err:
            message = capsys.readouterr().err
            assert err.code == 2 and message.startswith("error: ") and message.count("\n") == 1, attack
    written = sorted(scripts.iterdir())
    assert len(written) == 1  # only the harmless submission reached sbatch
    for script in written:
        subprocess.run(["bash", str(script)], cwd=victim, env=os.environ, check=False, capture_output=True)
    assert list(victim.iterdir()) == []
    assert (tmp_path / "pythonpath").read_text().split(":")[0] == str(spaced)


def test_dry_run_prints_commands_that_paste_back_as_they_run(tmp_path, capsys):
    sweep_dir = tmp_path / "s"
    out = sweep_lib.main(["cifar10_idn", "--set", "data_path=/x/a b;touch y", "--set", "r=0.5;rm -rf z",
                          "--seeds", "1", "--methods", "ce", "--dry_run", "--sweep_dir", str(sweep_dir)])  # fmt: skip
    (name,) = out["cells"]
    assert name == "r0.5-rm--rf-z_ce_seed1"  # a cell name keeps letters, digits and . _ + - only
    (line,) = capsys.readouterr().out.splitlines()
    sets = ["data_path=/x/a b;touch y", "r=0.5;rm -rf z"]
    (cell,) = load_grid("cifar10_idn").with_overrides(sets, [1], ["ce"]).cells()
    assert shlex.split(line)[1:] == sweep_lib.cell_command(cell, sweep_dir)
    assert "'/x/a b;touch y'" in line


def test_values_travel_as_written(tmp_path):
    grid = load_grid("cifar10_idn").with_overrides(
        ["lr=0.0123456789", "data_path=007", "num_epochs=1_000", "lambda_u=Infinity", "r=0.02,0.020000001"], [1], ["ce"]
    )
    cells = grid.cells()
    assert [c.name for c in cells] == ["r0.02_ce_seed1", "r0.020000001_ce_seed1"]
    argv = cells[0].argv(tmp_path)
    for flag, value in (("--lr", "0.0123456789"), ("--data_path", "007"), ("--num_epochs", "1_000"),
                        ("--lambda_u", "Infinity")):  # fmt: skip
        assert argv[argv.index(flag) + 1] == value
    narrowed = load_grid("cifar10_idn").with_overrides(["r=0.50"], [1], ["instancegm"]).cells()
    assert narrowed[0].paper == 95.90  # 0.50 is the paper's 0.5
    toml = tmp_path / "g.toml"
    toml.write_text('script = "instanceGM.py"\nseeds = [1]\n[axes]\nlr = [0.0123456789, 1e-7]\n')
    assert [c.argv(tmp_path)[1] for c in load_grid(str(toml)).cells()] == ["0.0123456789", "1e-07"]
    with pytest.raises(GridError, match="share the run folder"):
        load_grid("cifar10_idn").with_overrides(["data_path=a/b,a-b"], [1], ["ce"]).cells()
    toml.write_text('script = "instanceGM.py"\nseeds = [1.5, 1.9]\n')
    with pytest.raises(GridError, match="1.5 is not an integer seed"):
        load_grid(str(toml))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('methods = "instancegm"', "methods = 'instancegm': write a list"),
        ("seeds = 3", "seeds = 3: write a non-empty list"),
        ("flags = 3", "grid key 'flags': 3 is not a table"),
        ("[axes]\nr = []", r"\[axes\] r = \[\]: an axis needs at least one value"),
        ("[axes]\nlearning_rat = [0.1]", "'learning_rat': not an option of the entry scripts"),
        ("[flags]\nr = [[1]]", r"\[flags\] r: \[\[1\]\] is a list"),
        ("[flags]\nrun_name = 'x'", "the sweep sets --run_name itself"),
        ("title = 3", "grid key 'title': 3 is not a string"),
        ('[paper]\ninstancegm = "high"', r"\[paper.instancegm\]: write"),
    ],
)
def test_grid_toml_errors_name_the_key(tmp_path, text, message, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(f'script = "instanceGM.py"\n{text}\n')
    with pytest.raises(GridError, match=message):
        load_grid(str(path))
    code, err = _sweep_exit([str(path), "--dry_run"], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ")


def test_sweep_refuses_in_one_line(tmp_path, monkeypatch, capsys):
    afile = tmp_path / "file"
    afile.write_text("")
    code, err = _sweep_exit(["fmnist_cpu", "--sweep_dir", str(afile)], capsys)
    assert code == 2 and "is a file" in err
    code, err = _sweep_exit(["fmnist_cpu", "--set", "no_such_flag=1", "--dry_run"], capsys)
    assert code == 2 and "'no_such_flag': not an option" in err
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, no srun
    code, err = _sweep_exit(["fmnist_cpu", "--executor", "slurm", "--sweep_dir", str(tmp_path / "s")], capsys)
    assert code == 2 and "sbatch and srun not found on PATH" in err and err.count("\n") == 1


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def test_sigkill_of_the_sweep_leaves_no_cell_running(fake_root, tmp_path):
    sweep_dir = tmp_path / "s"
    code = (
        "import sys; from pathlib import Path; from training import grid, sweep\n"
        f"grid.ROOT = sweep.ROOT = Path({str(fake_root)!r}); sweep.main(sys.argv[1:])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FAKE_SLEEP": "60"}
    proc = subprocess.Popen([sys.executable, "-c", code, str(fake_root / "g.toml"), "--sweep_dir", str(sweep_dir)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    pid_file, deadline = sweep_dir / "ce_seed1" / "pid", time.time() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    cell = int(pid_file.read_text())
    proc.kill()
    proc.wait()
    deadline = time.time() + 10
    while not _gone(cell) and time.time() < deadline:
        time.sleep(0.05)
    assert _gone(cell), "the cell outlived its sweep"
    assert not (sweep_dir / "ce_seed2").exists()


def test_cell_running_elsewhere_is_not_a_failure_and_a_second_sweep_refuses(fake_root, tmp_path, capsys):
    sweep_dir = tmp_path / "s"
    held = sweep_dir / "ce_seed1"
    held.mkdir(parents=True)
    (held / "run.lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    result = sweep_lib.main([str(fake_root / "g.toml"), "--sweep_dir", str(sweep_dir)])  # no SystemExit: exit 0
    assert result["elsewhere"] == ["ce_seed1"] and result["ran"] == ["ce_seed2"]
    assert not (held / "pid").exists() and (sweep_dir / "ce_seed2" / "pid").exists()
    with sweep_lib.sweep_lock(sweep_dir):
        code, err = _sweep_exit([str(fake_root / "g.toml"), "--sweep_dir", str(sweep_dir)], capsys)
    assert code == 2 and f"in use by another sweep (process {os.getpid()})" in err and err.count("\n") == 1


def test_cells_per_gpu_runs_k_cells_on_each_gpu_at_once(fake_root, tmp_path, monkeypatch):
    assert sweep_lib.gpu_slots("0,1", 1, 2) == ["0", "1", "0", "1"] and sweep_lib.gpu_slots("", 1, 3) == [None] * 3
    monkeypatch.setenv("FAKE_PEERS", "2")  # each cell waits until the other has started
    sweep_dir = tmp_path / "s"
    result = sweep_lib.main([str(fake_root / "g.toml"), "--sweep_dir", str(sweep_dir), "--gpus", "5",
                             "--cells_per_gpu", "2"])  # fmt: skip
    assert result["ran"] == ["ce_seed1", "ce_seed2"]
    assert [(sweep_dir / n / "gpu").read_text() for n in result["ran"]] == ["5", "5"]


def _loose_run(run_dir: Path, *, seed: int, best: float, epochs: int = 4, **cfg) -> Path:
    _fake_run(run_dir, epochs=epochs, done=epochs, last=best - 1, best=best, mean10=best - 2)
    info = json.loads((run_dir / "config.json").read_text())
    info["config"].update(dataset="cifar100", noise_mode="instance", r=0.45, method="instancegm", seed=seed, **cfg)
    (run_dir / "config.json").write_text(json.dumps(info))
    return run_dir


def test_report_counts_a_run_once_and_pools_only_like_runs(tmp_path, caplog):
    runs = tmp_path / "runs"
    a = _loose_run(runs / "a", seed=1, best=70.0, epochs=12)
    shutil.copytree(a, runs / "a_backup")  # a copy: same setting, method and seed
    (runs / "link").symlink_to(a)  # the same folder again
    _loose_run(runs / "b", seed=2, best=72.0, epochs=12)
    _loose_run(runs / "smoke", seed=1, best=8.6, epochs=1, smoke=True)
    _loose_run(runs / "narrow", seed=3, best=50.0, epochs=12, width=8)
    reports = report_lib.collect([runs, a])
    (rep,) = reports
    rows = {r.setting: r for r in rep.rows}
    assert sorted(rows) == ["r=0.45,num_epochs=12", "r=0.45,width=8,num_epochs=12"]
    full = rows["r=0.45,num_epochs=12"]
    assert full.status == "2/2" and full.stat("best") == pytest.approx((71.0, 2**0.5))
    assert full.hours == pytest.approx(2 * 12 * 180 * 2 / 3600)  # two runs, not four
    assert "counted once" in caplog.text
    smoke = report_lib.collect([runs], include_smoke=True)[0]
    assert any(r.setting.endswith("smoke") for r in smoke.rows)


def test_report_of_the_newcomer_s_runs_folder_pools_no_unlike_runs(tmp_path, caplog):
    # a smoke run and two 12-epoch runs, all seed 123: the smoke run is left out (also from the plot), the two
    # others differ in their test subset and are not seeds of one row
    runs = tmp_path / "runs"
    _loose_run(runs / "smoke", seed=123, best=8.6, epochs=2, smoke=True, train_subset=256, width=16)
    quick = dict(train_subset=1000, balanced_subset=True, width=8)
    _loose_run(runs / "quick", seed=123, best=69.2, epochs=12, test_subset=1000, **quick)
    _loose_run(runs / "full_test", seed=123, best=66.3, epochs=12, **quick)
    (rep,) = report_lib.main([str(runs), "--out", str(tmp_path / "out")])
    rows = {r.setting: r for r in rep.rows}
    assert sorted(rows) == [
        "r=0.45,train_subset=1000,balanced_subset=True,test_subset=1000,width=8,num_epochs=12",
        "r=0.45,train_subset=1000,balanced_subset=True,width=8,num_epochs=12",
    ]
    assert [r.status for r in rows.values()] == ["1/1", "1/1"] and all(r.stat("best")[1] is None for r in rows.values())
    assert "smoke" not in (tmp_path / "out" / "report.md").read_text()
    # the same seed of the same row twice, but not a copy: counted once, the warning names what differs
    _loose_run(runs / "other_lr", seed=123, best=60.0, epochs=12, test_subset=1000, lr=0.1, **quick)
    report_lib.collect([runs])
    assert "seed 123; differ in lr: give them other seeds); counted once" in caplog.text


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda d: (d / "config.json").write_text("[1, 2]"), "not a JSON object"),
        (lambda d: _edit_config(d, seed="one"), "seed is 'one', not an integer"),
        (lambda d: (d / "summary.json").write_text('{"test/acc": {"best": null, "epochs": 4}}'), "best is None"),
        (lambda d: (d / "summary.json").write_text('{"test/acc": {"best": "high", "epochs": 4}}'), "is 'high'"),
    ],
)
def test_report_skips_a_bad_folder_and_writes_the_rest(tmp_path, damage, why, caplog):
    runs = tmp_path / "runs"
    _loose_run(runs / "good", seed=1, best=70.0)
    bad = _loose_run(runs / "bad", seed=2, best=71.0)
    damage(bad)
    with (bad / "metrics.jsonl").open("r+") as fh:  # a torn middle line is skipped, the run still read
        rows = fh.read().splitlines()
        fh.seek(0)
        fh.write("\n".join([rows[0], rows[1][:9], *rows[2:]]) + "\n")
        fh.truncate()
    out = tmp_path / "out"
    (rep,) = report_lib.main([str(runs), "--out", str(out)])
    assert f"skipping {bad}: " in caplog.text and why in caplog.text, caplog.text
    assert [r.status for r in rep.rows] == ["1/1"] and (out / "report.md").exists()


def _edit_config(run_dir: Path, **changes) -> None:
    info = json.loads((run_dir / "config.json").read_text())
    info["config"].update(changes)
    (run_dir / "config.json").write_text(json.dumps(info))


def test_report_torn_line_cpu_hours_and_out_file(tmp_path, caplog):
    run = _loose_run(tmp_path / "runs" / "a", seed=1, best=70.0)
    info = json.loads((run / "config.json").read_text())
    info["environment"] = {"device": "cpu", "processes": 1}
    (run / "config.json").write_text(json.dumps(info))
    rows = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([rows[0], rows[1][:9], *rows[2:]]) + "\n")
    (rep,) = report_lib.collect([run])
    assert rep.rows[0].cells[0].epochs_done == 3 and "skipping line 2" in caplog.text
    assert "| CPU wall h |" in report_lib.markdown(rep)
    afile = tmp_path / "file"
    afile.write_text("")
    with pytest.raises(SystemExit, match="--out .*is a file"):
        report_lib.main([str(run), "--out", str(afile)])


def test_sweep_report_and_plot_start_without_torch():
    code = (
        "import sys, training, training.report, training.sweep, training.plot; "
        "training.sweep.main(['fmnist_cpu', '--dry_run', '--sweep_dir', 'nowhere']); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("pending") == 8  # the dry run printed every cell
