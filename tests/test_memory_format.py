"""The channels-last refusal (models/memory_format.py) and the isolation of CPU-feature-dependent tests."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from models.memory_format import channels_last_hazard, channels_last_problem
from models.preact_resnet import preact_resnet18


@pytest.mark.parametrize("width", [1, 2, 4, 7])
def test_narrow_preact_resnet_is_refused_on_the_cpu(width):
    net = preact_resnet18(10, width)
    hazard = channels_last_hazard(net)
    # the first strided 1x1 convolution is layer2's shortcut, whose input is the width
    assert hazard.startswith("layer2.0.shortcut") and f"({width} -> {2 * width}, 1x1, stride 2)" in hazard
    problem = channels_last_problem(net, "cpu")
    assert "uxlfoundation/oneDNN#6035" in problem and "--width 8" in problem and "\n" not in problem
    assert channels_last_problem(net, "cuda") == ""  # cuDNN is not affected


@pytest.mark.parametrize("width", [8, 12, 64])
def test_widths_of_eight_or_more_may_run_channels_last(width):
    assert channels_last_hazard(preact_resnet18(10, width)) == ""


def test_only_strided_one_by_one_convolutions_with_few_channels_count():
    assert channels_last_hazard(nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.Conv2d(8, 4, 1, stride=2))) == ""
    assert channels_last_hazard(nn.Sequential(nn.Conv2d(4, 8, 1, stride=1))) == ""  # stride 1: another kernel
    assert channels_last_hazard(nn.Sequential(nn.Conv2d(4, 8, 1, stride=(1, 2)))) == "0 (4 -> 8, 1x1, stride 1x2)"


CRASHING_TESTS = """
import os
import signal

import pytest


@pytest.mark.isolated
def test_native_crash():
    os.kill(os.getpid(), signal.SIGSEGV)


@pytest.mark.isolated
def test_isolated_pass():
    assert 1 + 1 == 2


@pytest.mark.isolated
def test_isolated_skip():
    pytest.skip("no such CPU feature")


def test_after_the_crash():
    assert True
"""


def test_a_native_crash_in_an_isolated_test_fails_that_test_only(tmp_path):
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_crash.py").write_text(CRASHING_TESTS)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-W", "ignore", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    text = out.stdout + out.stderr
    assert out.returncode == 1, text  # a failed test, not a dead test run (which would be -11)
    assert "1 failed, 2 passed, 1 skipped" in text, text
    assert "native crash: the test's process was killed by SIGSEGV" in text
    assert "no such CPU feature" in text


@pytest.mark.isolated
def test_channels_last_weight_gradient_matches_contiguous_at_width_8():
    """The widths that are allowed give the contiguous format's gradients up to rounding (this is the kernel that
    breaks below width 8, hence its own process)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 1, stride=2, bias=False)
    x = torch.randn(16, 8, 16, 16)
    conv(x).square().sum().backward()
    ref, conv.weight.grad = conv.weight.grad.clone(), None
    conv = conv.to(memory_format=torch.channels_last)
    conv(x.contiguous(memory_format=torch.channels_last)).square().sum().backward()
    torch.testing.assert_close(conv.weight.grad, ref, rtol=1e-4, atol=1e-4)
