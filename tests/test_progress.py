"""What a run tells its user while it trains: the time left, the smoke run's limits, errors in log.txt."""

from __future__ import annotations

import logging

import pytest

from training.config import Config
from training.launch import apply_smoke, log_failure, setup_logging
from training.progress import format_duration, remaining_time_s, remaining_time_text

CFG = Config(num_epochs=6, warm_up=2)


def _epochs(*times):
    return [{"epoch": e, "phase": "warmup" if e < 2 else "train", "time/epoch_s": t} for e, t in enumerate(times)]


def test_remaining_time_from_the_recent_epochs_of_each_phase():
    # after warm-up only: 4 co-training epochs not timed yet -> counted at the slowest seen (12 s): a lower bound
    assert remaining_time_s(_epochs(10.0, 12.0), CFG) == (48.0, False)
    # after the first co-training epoch (60 s): 3 more at 60 s
    assert remaining_time_s(_epochs(10.0, 12.0, 60.0), CFG) == (180.0, True)
    # the mean of the last three co-training epochs: (60 + 50 + 70) / 3 = 60, one epoch left
    assert remaining_time_s(_epochs(10.0, 12.0, 60.0, 50.0, 70.0), CFG) == (60.0, True)
    assert remaining_time_text(_epochs(10.0, 12.0, 60.0), CFG) == " | about 3 min left"
    assert "at least 48 s left" in remaining_time_text(_epochs(10.0, 12.0), CFG)
    assert remaining_time_text(_epochs(1, 1, 1, 1, 1, 1), CFG) == ""  # the last epoch: nothing left


def test_durations_read_naturally():
    assert [format_duration(s) for s in (5, 89, 600, 5400, 9000)] == ["5 s", "89 s", "10 min", "1.5 h", "2.5 h"]


def test_smoke_limits_every_size_of_any_preset():
    big = Config(dataset="clothing1m", vae_size=224, batch_size=32, width=64, num_batches=1000, smoke=True)
    cfg = apply_smoke(big.replace(num_epochs=80))
    assert (cfg.num_epochs, cfg.warm_up, cfg.train_subset, cfg.test_subset) == (2, 1, 256, 16)
    assert (cfg.batch_size, cfg.width, cfg.num_batches, cfg.wandb) == (2, 16, 2, "off")
    small = apply_smoke(Config(batch_size=64, train_subset=100, smoke=True))  # 32x32; a smaller subset stays
    assert (small.batch_size, small.train_subset, small.test_subset) == (16, 100, 256)
    mid = apply_smoke(Config(dataset="animal10n", vae_size=64, batch_size=64, smoke=True))
    assert (mid.batch_size, mid.train_subset, mid.test_subset) == (8, 128, 128)  # VGG at 64 px: dearer images
    assert apply_smoke(big.replace(smoke=False)) == big.replace(smoke=False)


@pytest.mark.parametrize("error", [ValueError("bad pixel"), KeyboardInterrupt()])
def test_a_failed_run_leaves_its_error_in_log_txt(tmp_path, error):
    setup_logging(tmp_path)
    try:
        raise error
    except BaseException as err:  # the launcher hands every failure over, Ctrl-C included
        log_failure(err)
    text = (tmp_path / "log.txt").read_text()
    if isinstance(error, ValueError):
        assert "failed: ValueError: bad pixel" in text and "Traceback" in text
    else:
        assert "interrupted" in text
    setup_logging(None)  # detach the file handler from the process-wide logger
    assert not [h for h in logging.getLogger().handlers if getattr(h, "_instancegm_file", False)]
