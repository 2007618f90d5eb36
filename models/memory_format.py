"""Which networks may run in the channels-last memory format on the CPU.

oneDNN's AVX2 kernel for the weight gradient of a 1x1 convolution with stride > 1 and fewer input channels than its
channel block (8 on AVX2) writes past its workspace when the input is channels-last (NHWC): with one thread the
process dies of a segfault or heap corruption, with two threads the weight gradient comes out wrong (about 40 %
relative error, no message), and the run can also hang (upstream bug uxlfoundation/oneDNN#6035). PreAct ResNet's
shortcut convolutions are exactly such convolutions, with ``width``, ``2 width`` and ``4 width`` input channels, so
``--width`` below 8 with ``--channels_last`` trains on corrupted gradients on an AVX2 CPU. The contiguous format
(the default) never reaches that kernel.

The refusal does not depend on the CPU: the same command must not train on one machine and crash on the next.
"""

from __future__ import annotations

import torch
from torch import nn

# The smallest input-channel count that the AVX2 1x1 weight-gradient kernel handles: its channel block.
MIN_STRIDED_1X1_CHANNELS = 8
ONEDNN_BUG = "uxlfoundation/oneDNN#6035"


def channels_last_hazard(net: nn.Module) -> str:
    """The first convolution that channels-last would break on the CPU, as ``'name (C_in -> C_out, 1x1, stride s)'``;
    '' when there is none."""
    for name, module in net.named_modules():
        if not isinstance(module, nn.Conv2d):
            continue
        strided = any(s > 1 for s in module.stride)
        if tuple(module.kernel_size) == (1, 1) and strided and module.in_channels < MIN_STRIDED_1X1_CHANNELS:
            stride = "x".join(str(s) for s in dict.fromkeys(module.stride))  # "2", or "1x2" when they differ
            return f"{name} ({module.in_channels} -> {module.out_channels}, 1x1, stride {stride})"
    return ""


def channels_last_problem(net: nn.Module, device: torch.device | str) -> str:
    """Why ``net`` must not run channels-last on ``device`` ('' if it may): one line that says what to change."""
    if torch.device(device).type != "cpu":
        return ""
    conv = channels_last_hazard(net)
    if not conv:
        return ""
    return (
        f"--channels_last on the CPU breaks the weight gradient of {conv}: a crash or silently wrong gradients on "
        f"AVX2 CPUs (oneDNN bug {ONEDNN_BUG}, strided 1x1 convolutions need >= {MIN_STRIDED_1X1_CHANNELS} input "
        "channels); use --width 8 or more, or drop --channels_last"
    )
