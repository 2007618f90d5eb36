"""The GPU code path, decided and checked on the CPU: which CUDA calls a run makes, what it records, what it
restores. Where a GPU is needed, torch.cuda's functions are replaced by fakes that record their calls; tests that
need a real GPU are marked ``cuda`` and skipped without one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import needs_fmnist

import instanceGM
from training import runtime


class CudaCalls:
    """Replaces torch.cuda's device functions: ``is_available`` says yes, every other call is recorded."""

    def __init__(self, monkeypatch, count: int = 1, fail: bool = True):
        self.calls: list[tuple] = []
        self.count = count
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.count)
        for name in ("get_rng_state", "get_rng_state_all", "set_rng_state", "set_rng_state_all", "set_device", "init"):
            monkeypatch.setattr(torch.cuda, name, self._recorder(name, fail))

    def _recorder(self, name: str, fail: bool):
        def call(*args, **kwargs):
            self.calls.append((name, *args))
            if fail:
                raise RuntimeError(f"torch.cuda.{name} called")
            return torch.zeros(16, dtype=torch.uint8) if name.startswith("get_rng") else None

        return call


def test_cpu_rng_state_never_touches_cuda(monkeypatch):
    cuda = CudaCalls(monkeypatch)
    state = runtime.capture_rng_state(torch.device("cpu"))
    runtime.restore_rng_state(state, torch.device("cpu"))
    assert cuda.calls == [] and "cuda" not in state and "cuda_device" not in state


def test_gpu_rng_state_is_the_run_devices_alone(monkeypatch):
    cuda = CudaCalls(monkeypatch, count=4, fail=False)
    state = runtime.capture_rng_state(torch.device("cuda", 2))
    assert [c[0] for c in cuda.calls] == ["get_rng_state"] and cuda.calls[0][1] == torch.device("cuda", 2)
    cuda.calls.clear()
    runtime.restore_rng_state(state, torch.device("cuda", 1))  # another GPU of the same kind: its stream
    assert [c[0] for c in cuda.calls] == ["set_rng_state"] and cuda.calls[0][2] == torch.device("cuda", 1)


def _tiny_run(tmp_path: Path, name: str, *extra: str) -> dict:
    """A few-second CPU run (cross-entropy, 1 epoch); returns its config.json."""
    argv = [
        "--dataset", "fashionmnist", "--method", "ce", "--train_subset", "32", "--test_subset", "16", "--width", "4",
        "--batch_size", "16", "--num_epochs", "1", "--num_workers", "0", "--device", "cpu",
        "--output_dir", str(tmp_path / "runs"), "--noise_dir", str(tmp_path / "noise"), "--run_name", name, *extra,
    ]  # fmt: skip
    instanceGM.main(argv)
    return json.loads((tmp_path / "runs" / name / "config.json").read_text())


@needs_fmnist
def test_cpu_run_on_a_machine_with_a_gpu_makes_no_cuda_call(tmp_path, monkeypatch):
    cuda = CudaCalls(monkeypatch)
    assert _tiny_run(tmp_path, "cpu")["environment"]["device"] == "cpu"
    assert cuda.calls == []


@needs_fmnist
def test_tf32_switches_are_set_and_recorded(tmp_path):
    flags = ("torch.backends.cudnn.allow_tf32", "torch.backends.cuda.matmul.allow_tf32")
    saved = runtime.tf32_flags()
    try:
        # each run must set both, whatever the process had before
        for mode, before, expected in (("all", False, True), ("off", True, False)):
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = before
            info = _tiny_run(tmp_path, mode, "--tf32", mode)
            assert info["config"]["tf32"] == mode
            assert info["environment"]["tf32"] == {flags[0]: expected, flags[1]: expected}
            assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (expected, expected)
        # the default: convolutions in TF32, matmuls in IEEE fp32
        info = _tiny_run(tmp_path, "default")
        assert info["config"]["tf32"] == "conv"
        assert info["environment"]["tf32"] == {flags[0]: True, flags[1]: False}
    finally:
        torch.backends.cudnn.allow_tf32 = saved[flags[0]]
        torch.backends.cuda.matmul.allow_tf32 = saved[flags[1]]


@pytest.mark.cuda
def test_cuda_rng_state_round_trip_on_a_gpu():
    device = torch.device("cuda", torch.cuda.current_device())
    state = runtime.capture_rng_state(device)
    first = torch.rand(4, device=device)
    runtime.restore_rng_state(state, device)
    assert torch.equal(torch.rand(4, device=device), first)


def test_resume_on_another_gpu_count_or_device_kind_warns(monkeypatch, caplog):
    cuda = CudaCalls(monkeypatch, count=2, fail=False)
    state = runtime.capture_rng_state(torch.device("cpu"))
    with caplog.at_level(logging.WARNING, logger="training"):
        # the earlier format: every visible GPU's stream, here of a 4-GPU machine
        runtime.restore_rng_state(state | {"cuda": [torch.zeros(16, dtype=torch.uint8)] * 4}, torch.device("cuda", 1))
    assert "CUDA random streams of 4 GPU(s), 2 are visible now" in caplog.text
    assert [c[0] for c in cuda.calls] == ["set_rng_state"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="training"):
        runtime.restore_rng_state(state, torch.device("cuda", 0))  # saved by a CPU run, resumed on a GPU
    assert "saved on the CPU and is resumed on cuda:0" in caplog.text
    caplog.clear()
    gpu_state = runtime.capture_rng_state(torch.device("cuda", 0))
    with caplog.at_level(logging.WARNING, logger="training"):
        runtime.restore_rng_state(gpu_state, torch.device("cpu"))
    assert "saved on a GPU and is resumed on cpu" in caplog.text


def _tiny_trainer(module, tmp_path: Path, **overrides):
    from training.config import Config
    from training.launch import build_peers
    from training.metrics import MetricSink
    from training.trainer import CoTrainer

    cfg = Config(dataset="tiny", num_classes=10, width=4, batch_size=16, num_epochs=2, warm_up=1, device="cpu")
    cfg = cfg.replace(**overrides)
    torch.manual_seed(0)
    peers = build_peers(cfg, torch.device("cpu"))
    autocast = runtime.autocast_factory("off", torch.device("cpu"))
    return CoTrainer(cfg, module, peers, torch.device("cpu"), autocast, MetricSink(tmp_path), tmp_path)


def test_fp16_loss_scale_is_checkpointed_and_resumed(tiny_module, tmp_path):
    from training import checkpoint as ckpt_lib
    from training.trainer import Split

    trainer = _tiny_trainer(tiny_module, tmp_path)
    # --amp fp16 needs CUDA; the scaler's own logic (scale, unscale, skip on inf, grow) runs on the CPU too.
    trainer.scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=2.0**7, growth_interval=3)
    peer, other = trainer.peers
    before = {n: [p.detach().clone() for p in m.parameters()] for n, m in (("net", peer.net), ("vae", peer.vae))}
    n = len(tiny_module.noisy_labels)
    split = Split(torch.arange(n // 2), torch.ones(n // 2), torch.arange(n // 2, n), torch.ones(n), torch.arange(n))
    trainer.train_epoch(1, peer, other, split)  # two steps of the joint (DivideMix + generative) loss
    for name, module in (("net", peer.net), ("vae", peer.vae)):  # both optimisers stepped through the scaler
        assert any(not torch.equal(a, b) for a, b in zip(before[name], module.parameters())), name
    assert peer.opt_vae.state and peer.opt.state
    trainer.scaler.update(2.0**5)  # as after an overflow: a scale the default 2^16 would not reproduce
    trainer.save_checkpoint(0)
    saved = ckpt_lib.load(tmp_path / ckpt_lib.FILENAME)
    assert saved["scaler"] == trainer.scaler.state_dict() and saved["scaler"]["_growth_tracker"] == 2
    resumed = _tiny_trainer(tiny_module, tmp_path)
    resumed.scaler = torch.amp.GradScaler("cpu", enabled=True)
    resumed.resume_from(saved)
    assert resumed.scaler.get_scale() == 2.0**5 and resumed.scaler.state_dict() == saved["scaler"]


@pytest.mark.isolated
def test_bf16_autocast_keeps_the_generative_samples_and_x_hat_in_fp32():
    from models import build_classifier, build_vae

    torch.manual_seed(0)
    net, vae = build_classifier("preact_resnet18", 10, width=4), build_vae(32, 10, 25)
    x = torch.rand(4, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vae(x, net)
    assert out.logits.dtype == torch.bfloat16  # the networks do run in bf16
    assert out.y_hat.dtype == torch.float32 and out.x_hat.dtype == torch.float32
    assert ((out.x_hat > 0.5) & (out.x_hat < 0.7311)).all()  # the original's double sigmoid, in fp32
    # y_hat sums to one in fp32 precision (bf16 noise or softmax would be off by ~1e-2)
    assert torch.allclose(out.y_hat.sum(1), torch.ones(4), atol=1e-5)


def test_bf16_on_a_gpu_without_bf16_units_is_one_clear_error(monkeypatch):
    from training.config import ConfigError

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")
    with pytest.raises(ConfigError, match="Tesla V100-SXM2-16GB has no bf16 units .*use --amp fp16 or off"):
        runtime.autocast_factory("bf16", torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert runtime.autocast_factory("bf16", torch.device("cuda", 0)) is not None


def test_an_explicit_gpu_becomes_the_current_device(monkeypatch):
    from training.config import ConfigError

    cuda = CudaCalls(monkeypatch, count=2, fail=False)
    device = runtime.resolve_device("cuda:1")
    runtime.use_device(device)
    assert cuda.calls == [("set_device", torch.device("cuda", 1))]
    with pytest.raises(ConfigError, match="2 GPU"):
        runtime.resolve_device("cuda:2")


def test_one_gpu_per_process_launchers(monkeypatch):
    from training import distributed as dist_lib

    cuda = CudaCalls(monkeypatch, count=1, fail=False)  # CUDA_VISIBLE_DEVICES gave this process one GPU
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "3")
    info = dist_lib.init_distributed("auto")
    assert info.backend == "nccl" and cuda.calls == [("set_device", 0)]
    assert dist_lib.device_for(info, torch.device("cuda")) == torch.device("cuda", 0)
    cuda.count = 4  # torchrun: every process sees the node's GPUs
    assert dist_lib.device_for(info, torch.device("cuda")) == torch.device("cuda", 3)
