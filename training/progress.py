"""What the per-epoch log line says about time: how long the rest of the run will roughly take."""

from __future__ import annotations

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
