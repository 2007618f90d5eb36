"""training.plot on a run still in warm-up: what the empty panels say, and the scales of flat curves."""

from __future__ import annotations

import json

import torch

from training import plot

CFG = {"method": "instancegm", "warm_up": 3, "num_epochs": 12, "lr_drop_epoch": 9, "noise_mode": "instance"}


def _warmup_run(tmp_path, epochs: int = 2):
    tmp_path.mkdir(exist_ok=True)
    rows = [
        {"epoch": e, "phase": "warmup", "test/acc": 10.0 + 0.05 * e, "test/net1/acc": 10.0, "test/net2/acc": 10.0,
         "train/net1/warmup/ce": 2.3, "train/net2/warmup/ce": 2.3}
        for e in range(epochs)
    ]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "config.json").write_text(json.dumps({"config": CFG, "num_train": 600}))
    return tmp_path


def _capture_figures(monkeypatch) -> list:
    figures, make = [], plot._figure

    def recording(*args, **kwargs):
        fig, axes = make(*args, **kwargs)
        figures.append(fig)
        return fig, axes

    monkeypatch.setattr(plot, "_figure", recording)
    return figures


def _panel_texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_panels_of_a_warmup_run_say_what_comes_later(tmp_path, monkeypatch):
    figures = _capture_figures(monkeypatch)
    plot.make_plots(_warmup_run(tmp_path))
    accuracy, losses, split = figures
    lo, hi = accuracy.axes[0].get_ylim()
    assert hi - lo >= plot.ACC_MIN_SPAN and lo >= 0  # 10.00 -> 10.05 stays a flat line
    texts = _panel_texts(losses) + _panel_texts(split)
    assert len(texts) == 7 + 4  # every co-training loss panel, every split panel
    assert all(t.startswith("not yet:") and "epoch 4" in t and "finished 2 warm-up epochs" in t for t in texts)
    assert not any("not logged" in t or "true labels unknown" in t for t in texts)


def test_gmm_title_names_completed_epochs_only(tmp_path, monkeypatch):
    figures = _capture_figures(monkeypatch)
    n = 50
    peer = {"prob": torch.rand(n), "indices": torch.arange(n), "is_clean": torch.rand(n) > 0.4, "losses": torch.rand(n)}
    # the divide opening epoch 4 (index 3), made while epoch 4 was still running
    plot.plot_gmm({"epoch": 3, "peers": {"net1": peer, "net2": peer}}, CFG, tmp_path / "gmm.png", "run")
    assert figures[0].get_suptitle() == "run: GMM split made after epoch 3 (for epoch 4)"


def test_wide_accuracy_ranges_are_left_alone(tmp_path, monkeypatch):
    figures = _capture_figures(monkeypatch)
    rows = [{"epoch": e, "test/acc": a} for e, a in enumerate([20.0, 60.0, 80.0])]
    plot.plot_accuracy(rows, CFG, tmp_path / "a.png", "run")
    lo, hi = figures[0].axes[0].get_ylim()
    assert lo < 20 and hi > 80 and hi - lo < 70


def test_damaged_files_give_one_line_not_a_traceback(tmp_path, capsys):
    run = _warmup_run(tmp_path / "run")
    (run / "splits.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    assert plot.main([str(run)]) == 0  # the other plots are drawn
    out = capsys.readouterr().out
    assert "wrote" in out and "skipped gmm.png: " in out and "splits.pt cannot be read" in out
    (run / "out").write_text("")
    assert plot.main([str(run), "--out", str(run / "out")]) == 2
    (run / "config.json").write_text('{"config": ')
    assert plot.main([str(run)]) == 2
    err = capsys.readouterr().err
    assert "is a file" in err and "config.json is not valid JSON" in err and "Traceback" not in err
