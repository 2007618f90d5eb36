"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node=2``: the global divide on real DDP."""

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataloaders.base import InMemoryDataModule  # noqa: E402
from training import distributed as dist_lib  # noqa: E402
from training.config import Config  # noqa: E402
from training.launch import build_peers, wrap_distributed  # noqa: E402
from training.metrics import MetricSink  # noqa: E402
from training.noise_rate import NoiseRateEstimator  # noqa: E402
from training.runtime import autocast_factory, seed_everything  # noqa: E402
from training.trainer import CoTrainer  # noqa: E402


def main(out_dir: str) -> None:
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    info = dist_lib.init_distributed("cpu")
    seed_everything(11 + info.rank)
    rng = np.random.RandomState(0)  # the same data on every rank
    n, k = 203, 4  # odd size: shards differ in length
    clean = rng.randint(0, k, n)
    images = rng.randint(0, 60, (n, 32, 32, 3)).astype(np.uint8)
    for i, c in enumerate(clean):
        images[i, c * 8 : (c + 1) * 8] += 150
    noisy = clean.copy()
    flip = rng.rand(n) < 0.3
    noisy[flip] = (clean[flip] + 1) % k
    data = InMemoryDataModule("toy", images, noisy, images[:50], clean[:50], k, clean_labels=clean, seed=5)
    data.set_distributed(info.rank, info.world_size, seed=5)
    cfg = Config(dataset="toy", num_classes=k, width=8, batch_size=16, num_epochs=2, warm_up=1, log_interval=2)
    peers = build_peers(cfg, torch.device("cpu"))
    wrap_distributed(peers, cfg, info, torch.device("cpu"))
    trainer = CoTrainer(
        cfg,
        data,
        peers,
        torch.device("cpu"),
        autocast_factory("off", torch.device("cpu")),
        MetricSink(Path(out_dir)),
        Path(out_dir),
        dist_info=info,
    )
    for peer in trainer.peers:
        trainer.warmup_epoch(0, peer)
    record: dict = {"epoch": 1}
    splits = {peer.name: trainer.divide(peer, record) for peer in trainer.peers}
    metrics = trainer.train_epoch(1, trainer.peers[0], trainer.peers[1], splits["net2"])
    acc = trainer.evaluate(1)
    # what every rank saw, gathered to compare
    mine = torch.cat([splits[p].prob for p in ("net1", "net2")])
    gathered = [torch.zeros_like(mine) for _ in range(info.world_size)]
    dist.all_gather(gathered, mine)
    # BatchNorm running statistics of both nets and generative models (each trained this epoch or in warm-up)
    bn = torch.cat([b.flatten() for p in peers for m in (p.net, p.vae) for b in m.buffers() if b.is_floating_point()])
    all_bn = [torch.zeros_like(bn) for _ in range(info.world_size)]
    dist.all_gather(all_bn, bn)
    weights = peers[0].net.state_dict()["linear.weight"].flatten()
    all_w = [torch.zeros_like(weights) for _ in range(info.world_size)]
    dist.all_gather(all_w, weights)
    # --selection noise_rate: rows gathered from both ranks, EM on rank 0, the estimate broadcast.
    nr_record: dict = {"epoch": 1}
    for peer in trainer.peers:
        peer.rate_estimator = NoiseRateEstimator(k, seed=1)
    nr_split = trainer.divide(trainer.peers[0], nr_record)
    result = {
        "rank": info.rank,
        "probs_identical": all(torch.equal(gathered[0], g) for g in gathered),
        "weights_identical": all(torch.equal(all_w[0], w) for w in all_w),
        "bn_identical": all(torch.equal(all_bn[0], b) for b in all_bn),
        "evaluated": len(splits["net1"].indices),
        "indices_sorted": splits["net1"].indices.tolist() == list(range(n)),
        "labeled": len(splits["net2"].labeled),
        "lx": metrics["train/net1/dm/lx"],
        "test_acc": acc["test/acc"],
        "nr_rate": nr_record["noise/net1/estimated_rate"],
        "nr_labeled": nr_split.labeled.tolist(),
    }
    Path(out_dir, f"rank{info.rank}.json").write_text(json.dumps(result))
    dist_lib.cleanup(info)


if __name__ == "__main__":
    main(sys.argv[1])
