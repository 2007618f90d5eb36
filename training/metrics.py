"""Metric accumulation without per-step host syncs, the JSONL run log, and the optional wandb sink."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger("training")


class RunningMeans:
    """Sums of detached scalar tensors kept on their device; ``.means()`` syncs once (at log time)."""

    def __init__(self) -> None:
        self._sums: dict[str, Tensor] = {}
        self._counts: dict[str, int] = {}

    def update(self, **values: Tensor | float) -> None:
        for k, v in values.items():
            v = v.detach().float() if isinstance(v, Tensor) else torch.tensor(float(v))
            self._sums[k] = self._sums[k] + v if k in self._sums else v.clone()
            self._counts[k] = self._counts.get(k, 0) + 1

    def means(self) -> dict[str, float]:
        if not self._sums:
            return {}
        keys = list(self._sums)
        stacked = torch.stack([self._sums[k].to(self._sums[keys[0]].device) for k in keys]).cpu()
        return {k: float(stacked[i]) / self._counts[k] for i, k in enumerate(keys)}


def split_quality(prob: Tensor, is_clean: Tensor, p_threshold: float) -> dict[str, float]:
    """How well a clean/noisy split matches the truth: precision/recall of 'clean' and the AUC of prob."""
    from sklearn.metrics import roc_auc_score

    pred = (prob > p_threshold).numpy()
    truth = is_clean.numpy().astype(bool)
    tp = float(np.sum(pred & truth))
    out = {
        "precision": tp / max(float(pred.sum()), 1.0),
        "recall": tp / max(float(truth.sum()), 1.0),
    }
    out["auc"] = float(roc_auc_score(truth, prob.numpy())) if 0 < truth.sum() < len(truth) else math.nan
    return out


def summarise(history: list[dict[str, Any]], key: str = "test/acc") -> dict[str, Any]:
    """Last, best (and its epoch, from 1) and mean-of-last-10 of a metric over the epochs (the paper's rule is not
    stated: all three)."""
    values = [(h["epoch"], h[key]) for h in history if key in h]
    if not values:
        return {}
    accs = [v for _, v in values]
    best_epoch, best = max(values, key=lambda ev: ev[1])
    return {
        "last": accs[-1],
        "best": best,
        "best_epoch": best_epoch + 1,  # numbered from 1, as the log numbers epochs
        "mean_last10": float(np.mean(accs[-10:])),
        "epochs": len(accs),
    }


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


class MetricSink:
    """Writes one JSON line per epoch to ``metrics.jsonl``; mirrors everything to wandb when enabled."""

    def __init__(
        self,
        run_dir: Path,
        wandb_mode: str = "off",
        wandb_project: str = "instanceGM",
        run_name: str = "",
        config: dict | None = None,
    ):
        self.path = run_dir / "metrics.jsonl"
        self.wandb = None
        if wandb_mode != "off":
            import wandb  # imported only when asked for

            self.wandb = wandb.init(
                project=wandb_project,
                name=run_name,
                config=config,
                mode=wandb_mode,
                dir=str(run_dir),
                resume="allow",
                id=run_name or None,
            )
            self.wandb.define_metric("epoch")
            self.wandb.define_metric("*", step_metric="epoch")

    def log_epoch(self, record: dict[str, Any]) -> None:
        line = jsonl_line(record).encode()
        with open(self.path, "ab") as fh:
            end = fh.tell()
            try:
                fh.write(line)
                fh.flush()
            except OSError:  # e.g. a full disk: leave no partial line behind
                fh.truncate(end)
                raise
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if isinstance(v, (int, float))})

    def log_images(self, key: str, images: Tensor, captions: list[str], epoch: int) -> None:
        if self.wandb is None:
            return
        import wandb

        self.wandb.log(
            {
                key: [wandb.Image(img.permute(1, 2, 0).numpy(), caption=c) for img, c in zip(images, captions)],
                "epoch": epoch,
            }
        )

    def log_media(self, values: dict[str, Any], epoch: int) -> None:
        """Log wandb objects (tables, images, histograms) against ``epoch``; a no-op without wandb."""
        if self.wandb is not None:
            self.wandb.log({**values, "epoch": epoch})

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def jsonl_line(record: dict[str, Any]) -> str:
    """One epoch's line of ``metrics.jsonl`` (non-finite floats become null)."""
    return json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n"


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file; an unfinished last line (a file being written) is skipped with a warning."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise
            log.warning("%s: skipping an unfinished last line", path)
    return rows
