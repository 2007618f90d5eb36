"""Operations around the engine: Docker files, the CIFAR download script, dashboards (wandb offline), plots,
your own image folders and the predict command. One tiny Fashion-MNIST run is shared by the module."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FMNIST
from PIL import Image

import instanceGM
from dataloaders.base import DataConfigError
from dataloaders.cifar import load_cifar
from dataloaders.fashion_mnist import CLASSES as FMNIST_CLASSES
from dataloaders.fashion_mnist import find_fashion_mnist, read_idx
from training import dashboards, plot, predict
from training.metrics import read_jsonl

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- Docker -----------------------------------
def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of Dockerfile_train, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile_train").read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def test_dockerfile_installs_exactly_the_requirements_and_runs_from_the_repository():
    steps = _dockerfile()
    kinds = [k for k, _ in steps]
    assert kinds[0] == "FROM" and re.match(r"pytorch/pytorch:\S+-cuda\S+-cudnn\d+-runtime$", steps[0][1])
    runs = " ".join(arg for k, arg in steps if k == "RUN")
    installs = re.findall(r"pip install ([^&]*)", runs)
    assert len(installs) == 1 and "-r requirements.txt" in installs[0]
    assert not re.search(r"\b(conda|torch==|torchvision==)", runs.replace("'torch=='", ""))  # no second torch
    for kind, arg in steps:
        if kind == "COPY":
            *sources, _dest = arg.split()
            for src in sources:
                assert src == "." or (ROOT / src).exists(), f"COPY source {src} is missing"
    workdir = [arg for k, arg in steps if k == "WORKDIR"]
    assert len(workdir) == 1 and workdir[0].startswith("/")
    assert kinds.index("WORKDIR") < kinds.index("COPY")
    cmd = [arg for k, arg in steps if k == "CMD"]
    assert cmd == ['["python", "instanceGM.py", "--help"]']
    assert "ENTRYPOINT" not in kinds  # `docker run IMAGE python instanceGM.py ...` replaces CMD


def test_dockerignore_keeps_runs_data_environments_and_git_out():
    patterns = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln and ln[0] != "#"}
    assert {"runs", "data", ".venv", "venv", ".git", "wandb", "cifar-10", "cifar-100"} <= patterns
    assert not patterns & {"requirements.txt", "*.py", "training", "dataloaders", "models"}


# ---------------------------------------------------------------- cifar10.sh -------------------------------
def _tarball(official_root: Path, folder: str, out: Path) -> tuple[Path, str]:
    with tarfile.open(out, "w:gz") as tar:
        tar.add(official_root / folder, arcname=folder)
    return out, hashlib.md5(out.read_bytes()).hexdigest()


def _script(*args: str, url: str, md5: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "CIFAR_URL": url, "CIFAR_MD5": md5}
    return subprocess.run(
        ["bash", str(ROOT / "cifar10.sh"), *args], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cifar_script_downloads_verifies_extracts_once(tmp_path, request, dataset):
    tiny = request.getfixturevalue(f"tiny_{dataset}")
    folder = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[dataset]
    tarball, md5 = _tarball(tiny.official, folder, tmp_path / f"{dataset}.tar.gz")
    dest = tmp_path / "dest"

    first = _script(dataset, str(dest), url=f"file://{tarball}", md5=md5)
    assert first.returncode == 0, first.stderr
    assert (dest / folder).is_dir() and not list(dest.glob("*.tar.gz")) and not list(dest.glob(".extract*"))
    data = load_cifar(dest, 10 if dataset == "cifar10" else 100)  # the loader reads what the script made
    np.testing.assert_array_equal(data.train_images, tiny.train_images)
    np.testing.assert_array_equal(data.test_labels, tiny.test_labels)

    again = _script(dataset, str(dest), url="file:///nonexistent.tar.gz", md5=md5)  # nothing is fetched
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_cifar_script_rejects_a_wrong_md5_and_reports_a_failed_download(tmp_path, tiny_cifar10):
    tarball, _ = _tarball(tiny_cifar10.official, "cifar-10-batches-py", tmp_path / "c10.tar.gz")
    bad = _script("cifar10", str(tmp_path / "a"), url=str(tarball), md5="0" * 32)
    assert bad.returncode != 0 and "MD5 mismatch" in bad.stderr and "expected 00000000" in bad.stderr
    assert not (tmp_path / "a" / "cifar-10-batches-py").exists() and not list((tmp_path / "a").glob("*.tar.gz*"))

    offline = _script("cifar10", str(tmp_path / "b"), url="http://127.0.0.1:9/cifar-10-python.tar.gz", md5="0" * 32)
    assert offline.returncode != 0 and "could not download" in offline.stderr and "CIFAR_URL" in offline.stderr
    # the folder it made is gone again, and the advice says so; followed as written, it works offline
    assert not (tmp_path / "b").exists()
    md5 = hashlib.md5(tarball.read_bytes()).hexdigest()
    offline = _script("cifar10", str(tmp_path / "b"), url="http://127.0.0.1:9/cifar-10-python.tar.gz", md5=md5)
    assert f"mkdir -p {tmp_path / 'b'}, put cifar-10-python.tar.gz (MD5 {md5}) into it by hand" in offline.stderr
    (tmp_path / "b").mkdir()
    shutil.copy(tarball, tmp_path / "b" / "cifar-10-python.tar.gz")
    by_hand = _script("cifar10", str(tmp_path / "b"), url="http://127.0.0.1:9/cifar-10-python.tar.gz", md5=md5)
    assert by_hand.returncode == 0 and (tmp_path / "b" / "cifar-10-batches-py" / "test_batch").is_file()


def test_cifar_script_downloads_with_python_where_curl_and_wget_are_missing(tmp_path, tiny_cifar10):
    # The training image (pytorch/pytorch runtime) has Python but neither curl nor wget.
    import functools
    import http.server
    import threading

    tarball, md5 = _tarball(tiny_cifar10.official, "cifar-10-batches-py", tmp_path / "c10.tar.gz")
    tools = tmp_path / "bin"
    tools.mkdir()
    for folder in (Path("/usr/bin"), Path("/bin")):
        for tool in folder.iterdir():
            if tool.name not in ("curl", "wget") and not (tools / tool.name).exists():
                (tools / tool.name).symlink_to(tool)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/c10.tar.gz"
        env = {"PATH": str(tools), "CIFAR_URL": url, "CIFAR_MD5": md5}
        done = subprocess.run(
            ["bash", str(ROOT / "cifar10.sh"), "cifar10", str(tmp_path / "dest")],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "dest" / "cifar-10-batches-py" / "test_batch").is_file()


def test_git_sha_inside_an_image_comes_from_the_build(monkeypatch):
    from training import runtime

    def no_repository(*args, **kwargs):
        return subprocess.CompletedProcess(args, 128, "", "fatal: not a git repository")

    monkeypatch.setattr(runtime.subprocess, "run", no_repository)
    monkeypatch.setenv("INSTANCEGM_GIT_SHA", "0123abc")
    assert runtime.git_sha() == "0123abc"
    monkeypatch.delenv("INSTANCEGM_GIT_SHA")
    assert runtime.git_sha() == ""


def test_cifar_script_md5_defaults_are_torchvision_s():
    from torchvision.datasets import CIFAR10, CIFAR100

    text = (ROOT / "cifar10.sh").read_text()
    assert f"official_md5={CIFAR10.tgz_md5}" in text and f"official_md5={CIFAR100.tgz_md5}" in text


# ---------------------------------------------------------------- the shared tiny run ----------------------
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a small shared machine, torch's default (one per core) runs several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """3 epochs (2 warm-up) of InstanceGM on 200 Fashion-MNIST images, wandb offline, dashboards wired in."""
    if not FMNIST.exists():
        pytest.skip("apt-get install dataset-fashion-mnist")
    tmp = tmp_path_factory.mktemp("ops")
    with pytest.MonkeyPatch.context() as mp:
        for var, value in {
            "WANDB_MODE": "offline",
            "WANDB_SILENT": "true",
            "WANDB_DIR": str(tmp / "wandb"),
            "WANDB_CACHE_DIR": str(tmp / "wandb-cache"),
            "WANDB_CONFIG_DIR": str(tmp / "wandb-config"),
            "WANDB_DATA_DIR": str(tmp / "wandb-data"),
        }.items():
            mp.setenv(var, value)
        summary = instanceGM.main(
            [
                "--dataset", "fashionmnist", "--r", "0.4", "--train_subset", "200", "--test_subset", "500",
                "--balanced_subset", "--width", "8", "--batch_size", "32", "--lr", "0.1", "--num_epochs", "3",
                "--warm_up", "2", "--log_interval", "5", "--device", "cpu",
                "--output_dir", str(tmp / "runs"), "--noise_dir", str(tmp / "noise"), "--wandb", "offline",
            ]
        )  # fmt: skip
    return Path(summary["run_dir"])


def test_offline_wandb_run_writes_its_files(tiny_run):
    (run,) = (tiny_run / "wandb").glob("offline-run-*")
    (record,) = run.glob("run-*.wandb")
    assert record.stat().st_size > 10_000  # metrics of 3 epochs, the config, tables, images, histograms
    media = run / "files" / "media"
    # The table's images go into the run's artifact (synced by `wandb sync`); the run keeps its layout.
    tables = list((media / "table" / "input").glob("table_*.table.json"))
    assert tables and json.loads(tables[0].read_text())["columns"] == [
        "index", "image", "noisy label", "true label", "label is wrong"
    ]  # fmt: skip
    assert list((media / "images" / "vae" / "net1").glob("reconstructions_*.png"))
    splits = dashboards.load_splits(tiny_run)
    assert splits["epoch"] == 2 and set(splits["peers"]) == {"net1", "net2"}
    for s in splits["peers"].values():
        assert s["prob"].shape == s["indices"].shape == s["is_clean"].shape == s["losses"].shape == (200,)
        assert 0 < s["is_clean"].float().mean() < 1


def test_reconstruction_grid_leaves_the_rng_and_modes_alone(tiny_run):
    cfg, peers, _ = predict.load_run(tiny_run / "checkpoint.pt", torch.device("cpu"))
    peer = peers[0]
    peer.net.train()
    images = torch.rand(4, 3, 32, 32)
    before = torch.get_rng_state()
    grid = dashboards.reconstruction_grid(peer, images)
    assert torch.equal(torch.get_rng_state(), before) and peer.net.training
    assert grid.shape == (3, 3 * 34 + 2, 4 * 34 + 2) and grid.min() >= 0 and grid.max() <= 1
    assert torch.equal(grid, dashboards.reconstruction_grid(peer, images))  # fixed noise: only the model changes


def test_plot_command_writes_readable_pngs(tiny_run, tmp_path, capsys):
    assert plot.main([str(tiny_run)]) == 0
    out = capsys.readouterr().out
    for name in ("accuracy", "losses", "split", "gmm"):
        path = tiny_run / "plots" / f"{name}.png"
        assert f"wrote {path}" in out and path.stat().st_size > 20_000
        w, h = plot.FIGSIZE[name]
        assert Image.open(path).size == (round(w * plot.DPI), round(h * plot.DPI))

    # Without the saved split there is no GMM figure, and the command says why.
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("metrics.jsonl", "config.json"):
        shutil.copy(tiny_run / name, bare / name)
    written, missing = plot.make_plots(bare)
    assert [p.name for p in written] == ["accuracy.png", "losses.png", "split.png"]
    assert len(missing) == 1 and "splits.pt" in missing[0]
    assert plot.main([str(tmp_path / "nowhere")]) == 2


def test_predict_on_the_training_set_flags_suspects(tiny_run, tmp_path, capsys):
    out = tmp_path / "pred.csv"
    assert predict.main([str(tiny_run / "checkpoint.pt"), "--out", str(out), "--sort"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 200
    # `index` is the image's place in Fashion-MNIST's training file, also for a class-balanced subset
    train_labels = read_idx(find_fashion_mnist(None)[1])
    indices = [int(r["index"]) for r in rows]
    assert len(set(indices)) == 200 and max(indices) >= 200
    assert all(train_labels[int(r["index"])] == int(r["true_label"]) for r in rows)
    assert all(r["given_class"] == FMNIST_CLASSES[int(r["given_label"])] for r in rows)
    assert all(
        abs((float(r["clean_prob_net1"]) + float(r["clean_prob_net2"])) / 2 - float(r["clean_prob"])) < 1e-5
        for r in rows
    )
    clean = [float(r["clean_prob"]) for r in rows]
    assert clean == sorted(clean)  # --sort: most suspect first
    for r in rows:
        assert 0.1 - 1e-6 <= float(r["confidence"]) <= 1 and 0 <= float(r["prob_given"]) <= 1
        assert 0 <= float(r["clean_prob"]) <= 1 and r["suspect"] == str(int(float(r["clean_prob"]) <= 0.5))
        assert 0 <= int(r["predicted"]) < 10 and r["true_label"] != ""
    noise = json.loads((tiny_run / "config.json").read_text())["noise"]
    noisy_share = sum(r["given_label"] != r["true_label"] for r in rows) / 200  # the run's labels, rebuilt
    assert noisy_share == pytest.approx(noise["subset_realised_rate"])
    assert "suspect labels" in capsys.readouterr().out


def test_predict_writes_relabel_drop_pred_probs_and_the_contact_sheet(tiny_run, tmp_path, capsys):
    from dataloaders import build_data
    from training import suspects
    from training.config import Config

    files = {name: tmp_path / f"{name}.npy" for name in ("relabel", "drop", "pred_probs")}
    out = tmp_path / "review" / "pred.csv"
    argv = [str(tiny_run / "checkpoint.pt"), "--out", str(out), "--sheet", "12"]
    assert predict.main(argv + [a for name, path in files.items() for a in (f"--{name}", str(path))]) == 0
    printed = capsys.readouterr().out
    rows = list(csv.DictReader(out.open()))  # unsorted: index order
    given = np.array([int(r["given_label"]) for r in rows])
    flagged = np.array([r["suspect"] == "1" for r in rows])
    assert 0 < flagged.sum() < 200 and f"summary: {flagged.sum()} of 200 flagged" in printed
    for path in [*files.values(), out.parent / "suspects.png"]:
        assert f"wrote {path}" in printed

    # pred_probs: N x K, rows sum to 1, row i is the CSV's row i (its prediction and its prob_given)
    probs = np.load(files["pred_probs"])
    assert probs.shape == (200, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert np.array_equal(probs.argmax(1), [int(r["predicted"]) for r in rows])
    np.testing.assert_allclose(probs[np.arange(200), given], [float(r["prob_given"]) for r in rows], atol=2e-6)

    # --drop: the CSV indices of the samples not flagged
    indices = np.array([int(r["index"]) for r in rows])
    assert (np.diff(indices) > 0).all()  # the rows (and so pred_probs' rows) follow the dataset index
    assert np.array_equal(np.load(files["drop"]), indices[~flagged])

    # --relabel round-trips through --noise_file: the follow-up run's labels are the corrected ones, the same images
    relabel = np.load(files["relabel"])
    assert relabel.shape == (60_000,) and relabel.dtype == np.int64
    corrected = np.where(flagged, [int(r["predicted"]) for r in rows], given)
    cfg = Config.from_dict(json.loads((tiny_run / "config.json").read_text())["config"])
    again = build_data(cfg.replace(noise_file=str(files["relabel"]), device="cpu"), "cpu")
    assert np.array_equal(again.dataset_indices, indices)
    assert np.array_equal(again.noisy_labels.numpy(), corrected)
    assert np.array_equal(again.clean_labels.numpy(), [int(r["true_label"]) for r in rows])  # truth still known
    assert not np.array_equal(corrected, given)

    # the contact sheet: 12 captioned tiles on an 8 x 2 grid, the 4 places left blank
    sheet = np.asarray(Image.open(out.parent / "suspects.png").convert("L"))
    w, h = suspects.TILE + 2 * suspects.PAD, suspects.TILE + suspects.CAPTION + 2 * suspects.PAD
    assert suspects.sheet_grid(12) == (8, 2) and sheet.shape == (2 * h, 8 * w)
    tiles = [sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] for r in range(2) for c in range(8)]
    assert all((t < 128).sum() > 50 for t in tiles[:12]) and all((t == 255).all() for t in tiles[12:])


def test_predict_refuses_bad_label_file_options_before_scoring(tiny_run, tmp_path, capsys):
    ckpt = str(tiny_run / "checkpoint.pt")
    assert predict.main([ckpt, "--relabel", str(tmp_path / "labels.csv")]) == 2
    assert "must end in .npy" in capsys.readouterr().err
    assert predict.main([ckpt, "--data_path", str(tmp_path), "--relabel", str(tmp_path / "r.npy")]) == 2
    assert "use --split train" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- your own images --------------------------
def _write_folder(root: Path, per_class: dict[str, int], seed: int = 0) -> None:
    """Small PNGs of various sizes and modes; each class has its own colour so a net can learn it."""
    rs = np.random.RandomState(seed)
    colours = {"cat": (200, 40, 40), "dog": (40, 200, 40), "fox": (40, 40, 200)}
    for name, count in per_class.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            h, w = 20 + 3 * i, 28 + i
            pixels = np.clip(np.array(colours[name]) + rs.randint(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels)
            (image.convert("L") if i % 4 == 3 else image).save(root / name / f"{name}_{i}.png")


@pytest.fixture
def image_folder(tmp_path) -> Path:
    root = tmp_path / "pets"
    _write_folder(root / "train", {"cat": 12, "dog": 12, "fox": 12})
    _write_folder(root / "test", {"cat": 3, "dog": 3, "fox": 3}, seed=1)
    return root


def test_imagefolder_trains_and_predict_scores_a_folder(image_folder, tmp_path, capsys):
    summary = instanceGM.main(
        [
            "--dataset", "imagefolder", "--data_path", str(image_folder), "--num_class", "3", "--width", "8",
            "--batch_size", "8", "--num_epochs", "2", "--warm_up", "1", "--output_dir", str(tmp_path / "runs"),
        ]
    )  # fmt: skip
    run_dir = Path(summary["run_dir"])
    assert run_dir.name == "imagefolder_real_instancegm_seed123"
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["phase"] for r in rows] == ["warmup", "train"] and "split/net1/auc" not in rows[-1]  # truth unknown

    out = tmp_path / "test.csv"
    ckpt = str(run_dir / "checkpoint.pt")
    assert predict.main([ckpt, "--data_path", str(image_folder / "test"), "--out", str(out)]) == 0
    scored = list(csv.DictReader(out.open()))
    assert len(scored) == 9 and {r["given_class"] for r in scored} == {"cat", "dog", "fox"}
    assert all(Path(r["path"]).is_file() and 0 <= float(r["clean_prob"]) <= 1 for r in scored)

    # Refusals before any scoring, in one line: an --out that is a folder, weights that do not fit the config.
    def refused(*argv: str) -> str:
        assert predict.main(list(argv)) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Traceback" not in err, err
        return err

    with pytest.MonkeyPatch.context() as m:
        m.setattr(predict, "predict", lambda *a, **k: pytest.fail("scored before checking --out"))
        assert "is a folder" in refused(ckpt, "--data_path", str(image_folder / "test"), "--out", str(tmp_path))
    state = torch.load(ckpt, weights_only=True)
    state["config"]["width"] = 16
    edited = tmp_path / "edited.pt"
    torch.save(state, edited)
    err = refused(str(edited), "--data_path", str(image_folder / "test"), "--out", str(tmp_path / "e.csv"))
    assert "do not fit the network its config describes" in err and "net1" in err

    # Images without class folders: predictions only.
    flat = tmp_path / "unsorted"
    flat.mkdir()
    for p in list((image_folder / "test").rglob("*.png"))[:4]:
        shutil.copy(p, flat / p.name)
    rows, summary = predict.predict(ckpt, data_path=str(flat))
    assert len(rows) == 4 and all(r["given_label"] == "" and "clean_prob" not in r for r in rows)
    assert {r["predicted_class"] for r in rows} <= {"cat", "dog", "fox"}

    # The run's own training set, with the file behind every index.
    rows, summary = predict.predict(ckpt, split="train")
    assert len(rows) == 36 and all(Path(r["path"]).parent.parent == image_folder / "train" for r in rows)
    given = {Path(r["path"]).parent.name for r in rows if r["given_class"] == "dog"}
    assert given == {"dog"}

    # Your own folder: --relabel gives the labels a follow-up run of the same folder takes with --noise_file.
    from dataloaders import build_data

    relabel = tmp_path / "relabel.npy"
    assert predict.main([ckpt, "--relabel", str(relabel), "--sheet", "0", "--out", str(tmp_path / "t.csv")]) == 0
    corrected = np.load(relabel)
    expected = [r["predicted"] if r["suspect"] else r["given_label"] for r in rows]  # the rows of predict()
    assert np.array_equal(corrected, expected)
    cfg = instanceGM.PRESETS["imagefolder"].replace(data_path=str(image_folder), num_classes=3)
    again = build_data(cfg.replace(noise_file=str(relabel)), "cpu")
    assert np.array_equal(again.noisy_labels.numpy(), corrected)
    np.save(tmp_path / "short.npy", corrected[:5])
    with pytest.raises(DataConfigError, match="holds 5 labels; the training set needs 36"):
        build_data(cfg.replace(noise_file=str(tmp_path / "short.npy")), "cpu")


def test_imagefolder_checks(image_folder, tmp_path):
    from dataloaders.imagefolder import load_imagefolder

    base = instanceGM.PRESETS["imagefolder"].replace(data_path=str(image_folder / "train"), num_classes=3)
    data, train_paths, test_paths, info = load_imagefolder(base)  # no test folder: 5% held out
    assert len(train_paths) == 34 and len(test_paths) == 2 and "held out 2" in info["test"]
    assert not set(train_paths) & set(test_paths) and data.train_images.shape == (34, 32, 32, 3)
    assert info["classes"] == ["cat", "dog", "fox"] and data.train_images.dtype == np.uint8
    again, paths_again, _, _ = load_imagefolder(base)  # the order is fixed, whatever the run's seed
    assert paths_again == train_paths and np.array_equal(again.train_images, data.train_images)

    with pytest.raises(DataConfigError, match="PreAct ResNet takes 32x32"):
        load_imagefolder(base.replace(vae_size=64))
    _write_folder(image_folder / "test", {"cat": 1})
    (image_folder / "test" / "wolf").mkdir()
    with pytest.raises(DataConfigError, match="wolf"):
        load_imagefolder(base.replace(data_path=str(image_folder)))
    with pytest.raises(SystemExit) as exit_info:
        instanceGM.main(["--dataset", "imagefolder", "--data_path", str(image_folder / "train")])
    assert exit_info.value.code == 2  # "--num_class 10 but imagefolder has 3 classes: pass --num_class 3"


def test_resume_on_other_images_is_refused_naming_what_changed(image_folder, tmp_path, capsys):
    argv = [
        "--dataset", "imagefolder", "--data_path", str(image_folder), "--num_class", "3", "--width", "8",
        "--batch_size", "8", "--num_epochs", "2", "--warm_up", "1", "--method", "dividemix", "--num_workers", "0",
        "--output_dir", str(tmp_path / "runs"), "--run_name", "pets",
    ]  # fmt: skip
    instanceGM.main(argv)
    run = tmp_path / "runs" / "pets"
    kept = {name: (run / name).read_bytes() for name in ("metrics.jsonl", "config.json", "checkpoint.pt")}
    capsys.readouterr()

    def resume() -> str:
        with pytest.raises(SystemExit) as exit_info:
            instanceGM.main([*argv, "--num_epochs", "3", "--resume", "auto"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "was trained on other data" in err, err
        assert {name: (run / name).read_bytes() for name in kept} == kept  # nothing of the run rewritten
        return err

    cat = image_folder / "train" / "cat"
    (cat / "cat_0.png").rename(cat / "cat_99.png")  # same labels, but an index now maps to another file
    err = resume()
    assert "the training files" in err and "the training labels" not in err
    (cat / "cat_99.png").rename(cat / "cat_0.png")
    fox = image_folder / "train" / "fox"
    shutil.copy(fox / "fox_0.png", fox / "fox_12.png")  # one more fox: more labels and files
    err = resume()
    assert "the training labels" in err and "the training files" in err
    (fox / "fox_12.png").unlink()
    instanceGM.main([*argv, "--num_epochs", "3", "--resume", "auto"])  # the same data again: accepted
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == [0, 1, 2]

    # A start-up refused after its folder was made (the class count is checked once the folders are listed)
    # leaves no folder and no log behind.
    with pytest.raises(SystemExit):
        instanceGM.main([*argv[:-2], "--run_name", "refused", "--num_class", "4"])
    assert "--num_class 4" in capsys.readouterr().err and not (tmp_path / "runs" / "refused").exists()


def test_imagefolder_decodes_once_then_reads_the_cache(image_folder, monkeypatch):
    from dataloaders import imagefolder

    base = instanceGM.PRESETS["imagefolder"].replace(data_path=str(image_folder / "train"), num_classes=3)
    first, paths, _, _ = imagefolder.load_imagefolder(base)
    caches = sorted(p.name for p in (image_folder / "train" / "instancegm_cache").iterdir())
    assert [c.split("-")[1] for c in caches] == ["test", "train"]  # the held-out set and the rest

    def no_decoding(path, size):
        raise AssertionError(f"decoded {path} again")

    with monkeypatch.context() as m:
        m.setattr(imagefolder, "load_image", no_decoding)
        second, paths_again, _, _ = imagefolder.load_imagefolder(base)  # the cache folder is not a class
    assert paths_again == paths and np.array_equal(second.train_images, first.train_images)
    assert np.array_equal(second.test_images, first.test_images)
    decoded = []
    monkeypatch.setattr(imagefolder, "load_image", lambda p, s: decoded.append(p) or np.zeros((s, s, 3), np.uint8))
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(paths[0])  # rewritten in place: new size and mtime
    imagefolder.load_imagefolder(base)
    assert len(decoded) == 34  # the training images' cache is stale (the held-out test set's is not)
    imagefolder.load_imagefolder(base.replace(saved=False))
    assert len(decoded) == 34 + 36  # --saved false decodes everything again


def test_imagefolder_rescales_16_bit_and_float_images(tmp_path):
    from dataloaders.base import DatasetNotFoundError
    from dataloaders.imagefolder import load_image

    Image.fromarray(np.full((8, 8), 32896, np.uint16)).save(tmp_path / "g16.png")  # 32896 / 257 = 128
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(tmp_path / "f01.tif")  # a 0-1 float image
    Image.fromarray(np.full((8, 8), 200.0, np.float32)).save(tmp_path / "f255.tif")  # a 0-255 float image
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    assert np.unique(load_image(tmp_path / "g16.png", 4)).tolist() == [128]
    assert np.unique(load_image(tmp_path / "f01.tif", 4)).tolist() == [128]  # 0.5 x 255 = 127.5 -> 128
    assert np.unique(load_image(tmp_path / "f255.tif", 4)).tolist() == [200]
    Image.fromarray(np.full((8, 8), 1000.0, np.float32)).save(tmp_path / "big.tif")
    with pytest.raises(DatasetNotFoundError, match="big.tif is a F-mode image with values from 1000 to 1000"):
        load_image(tmp_path / "big.tif", 4)


def test_imagefolder_names_every_bad_file_and_checks_num_class_before_decoding(image_folder, monkeypatch):
    from dataloaders import imagefolder
    from dataloaders.base import DatasetNotFoundError

    base = instanceGM.PRESETS["imagefolder"].replace(data_path=str(image_folder), num_classes=3)
    for name in ("cat/broken.png", "dog/empty.jpg"):
        (image_folder / "train" / name).write_bytes(b"not an image")
    with pytest.raises(DatasetNotFoundError) as err:
        imagefolder.load_imagefolder(base)
    assert str(err.value).startswith("2 of 38 images cannot be used: ")
    assert "broken.png" in str(err.value) and "empty.jpg" in str(err.value)
    monkeypatch.setattr(imagefolder, "load_image", lambda p, s: pytest.fail("decoded before the class check"))
    with pytest.raises(DataConfigError, match="--num_class 4 but .*3 class folders"):
        imagefolder.load_imagefolder(base.replace(num_classes=4))
