"""What a run says about time: at start, roughly how long it will take; per epoch, how long the rest will."""

from __future__ import annotations

import math
import time

from training.config import Config


def phase_of(epoch: int, cfg: Config) -> str:
    """What an epoch (0-based) does: "ce" (method ce), "warmup" or "train" (divide + co-train)."""
    if cfg.method == "ce":
        return "ce"
    return "warmup" if epoch < cfg.warm_up else "train"


def remaining_time_s(history: list[dict], cfg: Config) -> tuple[float, bool]:
    """Seconds the epochs after the last recorded one will take, from the latest epochs of each phase.

    Returns (seconds, exact_phases): ``exact_phases`` is False when a phase still to come has not run yet
    (co-training after warm-up), whose epochs are then counted at the slowest time seen: a lower bound.
    """
    if not history:
        return 0.0, False
    per_phase: dict[str, list[float]] = {}
    for r in history:
        if "time/epoch_s" in r:
            per_phase.setdefault(r.get("phase", phase_of(r["epoch"], cfg)), []).append(r["time/epoch_s"])
    slowest = max((t for times in per_phase.values() for t in times), default=0.0)
    total, exact = 0.0, True
    for epoch in range(history[-1]["epoch"] + 1, cfg.num_epochs):
        times = per_phase.get(phase_of(epoch, cfg), [])[-3:]  # recent epochs: the lr and split sizes change
        if times:
            total += sum(times) / len(times)
        else:
            total, exact = total + slowest, False
    return total, exact


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def remaining_time_text(history: list[dict], cfg: Config) -> str:
    """The per-epoch log line's tail: how long the rest of the run will roughly take."""
    seconds, exact = remaining_time_s(history, cfg)
    if not history or history[-1]["epoch"] + 1 >= cfg.num_epochs:
        return ""
    if exact:
        return f" | about {format_duration(seconds)} left"
    return f" | at least {format_duration(seconds)} left (co-training epochs are slower than warm-up)"


# A co-training step against a warm-up step (which trains one net on 2B images): DivideMix adds the co-guessing
# forwards of both nets and trains on 4B mixed images; InstanceGM adds the generative model's step on 2B more.
# Fitted to the Fashion-MNIST benchmark runs on 2 CPU cores (width 8, B 16; co-training epochs 2-7x a warm-up
# epoch, depending on the labeled share).
STEP_COST = {"ce": 1.0, "dividemix": 3.0, "instancegm": 5.0}
EVAL_COST = 1 / 3  # per image, a forward pass without gradient against a training step's forward and backward
STARTUP_STEPS = 6  # timed: the steps after the first (which also sets up kernels and buffers)


def expected_run_s(step_s: float, cfg: Config, num_train: int, num_test: int, start_epoch: int = 0) -> float:
    """Seconds epochs ``start_epoch``.. will take, from the time of one warm-up step (batch 2B) of one net.

    A co-training epoch's labeled share is taken as 1 - r (the clean share; 0.8 for real noise): the splits vary
    from epoch to epoch and between the nets, so this is a rough figure that tells minutes from hours or days.
    """
    batch = 2 * cfg.batch_size
    per_image = step_s / batch
    test = num_test * per_image * EVAL_COST
    warmup_epoch = 2 * math.ceil(num_train / batch) * step_s + test
    share = 1 - cfg.r if cfg.noise_mode in ("instance", "sym", "asym") else 0.8
    steps = math.ceil(share * num_train / cfg.batch_size)
    divide = num_train * per_image * EVAL_COST
    train_epoch = 2 * (divide + steps * step_s * STEP_COST[cfg.method]) + test
    return sum(warmup_epoch if phase_of(e, cfg) != "train" else train_epoch for e in range(start_epoch, cfg.num_epochs))


class StartupTimer:
    """Times the first warm-up steps of a run and says, once, how long the whole run will roughly take."""

    def __init__(self, cfg: Config, steps: int, num_train: int, num_test: int, start_epoch: int, device_type: str):
        self.cfg, self.num_train, self.num_test, self.start_epoch = cfg, num_train, num_test, start_epoch
        self.last = max(min(STARTUP_STEPS, steps), 1)  # the step after which it speaks
        self.device_type = device_type
        self.t0 = self.t1 = time.perf_counter()

    def step_done(self, i: int) -> str:
        """After step ``i`` (from 0): the message at the last timed step, else ""."""
        if i + 1 > self.last:
            return ""
        if self.device_type == "cuda":  # kernels run asynchronously: wait for them, or only their launch is timed
            import torch

            torch.cuda.synchronize()
        now = time.perf_counter()
        if i == 0:
            self.t1 = now
        if i + 1 < self.last:
            return ""
        step_s = (now - self.t1) / i if i > 0 else now - self.t0
        on_cpu = self.device_type == "cpu"
        return expected_duration_text(step_s, self.cfg, self.num_train, self.num_test, self.start_epoch, on_cpu)


def expected_duration_text(
    step_s: float, cfg: Config, num_train: int, num_test: int, start_epoch: int = 0, on_cpu: bool = False
) -> str:
    """The start-up line: the whole run's rough duration and, for a CPU run of hours, what makes it minutes."""
    seconds = expected_run_s(step_s, cfg, num_train, num_test, start_epoch)
    text = (
        f"expected duration: roughly {format_duration(seconds)} for epochs {start_epoch + 1}-{cfg.num_epochs} "
        f"({step_s:.3g} s per warm-up step of {2 * cfg.batch_size} images; co-training epochs estimated)"
    )
    if seconds > 6 * 3600 and on_cpu:
        text += (
            "; on a CPU, fewer images, a narrower net and fewer epochs (README, Quick start: --train_subset 1000 "
            "--width 8 --num_epochs 12 ...) take minutes"
        )
    return text
