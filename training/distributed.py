"""Multi-process training through torch.distributed (launched with ``torchrun``), set up in one place.

Single-process runs never touch torch.distributed: every helper here is a no-op when ``world_size == 1``.
Under torchrun (``WORLD_SIZE`` > 1 in the environment) each process drives one device (NCCL on GPUs, gloo on
the CPU); rank 0 alone writes logs, metrics, wandb and checkpoints; the GMM divide stays global (per-sample
losses are gathered from every rank in dataset-index order, the GMM is fitted once on rank 0 and its clean
probabilities are broadcast, so every rank trains on the identical division).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistInfo()


def init_distributed(device_name: str = "auto") -> DistInfo:
    """Join the process group torchrun describes in the environment; ``SINGLE`` when not launched by it."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and not device_name.startswith("cpu")
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_gpu(local_rank))
    if not dist.is_initialized():
        # A rank that fails makes torchrun stop the others; the timeout only bounds a silent hang.
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank, world_size, local_rank, backend)


def local_gpu(local_rank: int) -> int:
    """The GPU index of process ``local_rank`` among those it sees.

    ``local_rank`` itself when the process sees every GPU of its node (torchrun); 0 under launchers that give
    each process one GPU of its own through CUDA_VISIBLE_DEVICES (Slurm's ``--gpus-per-task``, some MPI set-ups),
    where ``cuda:local_rank`` does not exist.
    """
    return local_rank % max(torch.cuda.device_count(), 1)


def device_for(info: DistInfo, device: torch.device) -> torch.device:
    """One process per device: under NCCL, process ``local_rank`` uses its own GPU (:func:`local_gpu`)."""
    if info.enabled and device.type == "cuda":
        return torch.device("cuda", local_gpu(info.local_rank))
    return device


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def _comm_device(info: DistInfo) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if info.backend == "nccl" else torch.device("cpu")


def gather_by_index(info: DistInfo, values: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
    """Concatenate every rank's (values, indices) and sort by index: the whole evaluated set, in index order.

    Shards may differ in length (evaluation shards are not padded), so each is padded to the longest
    before ``all_gather`` and trimmed after. ``values`` may have trailing dimensions (one row per index).
    """
    if not info.enabled:
        return values, indices
    dev = _comm_device(info)
    n = torch.tensor([len(values)], device=dev)
    sizes = [torch.zeros_like(n) for _ in range(info.world_size)]
    dist.all_gather(sizes, n)
    longest = int(max(s.item() for s in sizes))
    padded_v = torch.zeros((longest, *values.shape[1:]), dtype=torch.float32, device=dev)
    padded_i = torch.full((longest,), -1, dtype=torch.long, device=dev)
    padded_v[: len(values)] = values.to(dev, torch.float32)
    padded_i[: len(indices)] = indices.to(dev, torch.long)
    all_v = [torch.zeros_like(padded_v) for _ in range(info.world_size)]
    all_i = [torch.zeros_like(padded_i) for _ in range(info.world_size)]
    dist.all_gather(all_v, padded_v)
    dist.all_gather(all_i, padded_i)
    v = torch.cat([a[: int(s.item())] for a, s in zip(all_v, sizes)]).cpu()
    i = torch.cat([a[: int(s.item())] for a, s in zip(all_i, sizes)]).cpu()
    order = torch.argsort(i)
    return v[order], i[order]


def broadcast(info: DistInfo, tensor: Tensor, src: int = 0) -> Tensor:
    """Rank ``src``'s tensor on every rank (same shape and dtype everywhere)."""
    if not info.enabled:
        return tensor
    dev = _comm_device(info)
    buf = tensor.to(dev).contiguous()
    dist.broadcast(buf, src)
    return buf.to(tensor.device)


def all_reduce_sum(info: DistInfo, tensor: Tensor) -> Tensor:
    if not info.enabled:
        return tensor
    dev = _comm_device(info)
    buf = tensor.to(dev).clone()
    dist.all_reduce(buf)
    return buf.to(tensor.device)


def average_buffers(info: DistInfo, *modules: torch.nn.Module | None) -> None:
    """Replace every floating-point buffer (BatchNorm running mean and variance) by its mean over the ranks.

    Each rank's running statistics are an exponential moving average of its own batches' statistics; the EMA is
    linear, so the mean over ranks is the EMA of the mean batch statistics: exactly single-process training's
    running mean over the same global batches, and its running variance less the spread between the ranks' batch
    means (broadcasting rank 0's would keep the statistics of a quarter, a half... of the data instead).
    """
    if not info.enabled:
        return
    for module in modules:
        if module is None:
            continue
        for buf in module.buffers():
            if buf.is_floating_point():
                buf.copy_(all_reduce_sum(info, buf) / info.world_size)


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
