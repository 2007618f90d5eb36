"""CPU speed defaults: the evaluation batch and the divide's memory format."""

import pytest
import torch

from models.preact_resnet import preact_resnet18
from training import Config, dividemix
from training.runtime import eval_batch_size


def test_eval_batch_is_b_on_the_cpu_large_on_a_gpu_and_overridable():
    cfg = Config(batch_size=64)
    assert eval_batch_size(cfg, torch.device("cpu")) == 64
    assert eval_batch_size(cfg.replace(width=16), torch.device("cpu")) == 256  # 4 KiB x 16 x 256 = 16 MiB
    assert eval_batch_size(cfg.replace(width=32, batch_size=16), torch.device("cpu")) == 128
    assert eval_batch_size(cfg.replace(backbone="resnet50", batch_size=32), torch.device("cpu")) == 32
    assert eval_batch_size(cfg, torch.device("cuda")) == 256
    assert eval_batch_size(cfg.replace(batch_size=200), torch.device("cuda")) == 400
    assert eval_batch_size(cfg.replace(eval_batch_size=32), torch.device("cuda")) == 32


@pytest.mark.isolated  # channels_last kernels depend on the CPU
def test_divide_losses_equal_across_batch_sizes_and_memory_formats():
    torch.manual_seed(0)
    net = preact_resnet18(10, width=8)
    x, y = torch.rand(40, 3, 32, 32), torch.randint(0, 10, (40,))

    def batches(n):
        return [(x[i : i + n], y[i : i + n], torch.arange(i, min(i + n, 40))) for i in range(0, 40, n)]

    ref, idx = dividemix.per_sample_losses(net, batches(40))
    small, _ = dividemix.per_sample_losses(net, batches(16))
    cl_net = net.to(memory_format=torch.channels_last)
    seen = []

    def prep(t):
        seen.append(t.is_contiguous(memory_format=torch.channels_last))
        return t.contiguous(memory_format=torch.channels_last)

    cl, _ = dividemix.per_sample_losses(cl_net, batches(16), prep=prep)
    assert torch.equal(idx, torch.arange(40))
    torch.testing.assert_close(small, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-5)
    assert seen == [False, False, False]  # prep saw every (contiguous) batch of the loader
