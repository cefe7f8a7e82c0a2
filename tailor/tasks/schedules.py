"""Learning-rate schedules shared by the training tasks: a linear warm-up, then a decay to the end."""

from __future__ import annotations

import math
from typing import Callable

import torch

#: learning-rate multiplier after warm-up, as a function of training progress in [0, 1]
SCHEDULES: dict[str, Callable[[float], float]] = {
    "cosine": lambda progress: 0.5 * (1 + math.cos(math.pi * progress)),
    "linear": lambda progress: 1.0 - progress,
    "constant": lambda progress: 1.0,
}


def warmup_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup: float,
                    schedule: str = "cosine") -> dict:
    """Lightning's ``lr_scheduler`` entry: ``warmup`` (a fraction of ``total_steps``) rising linearly, then
    ``schedule``, stepped every optimisation step."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}: one of {sorted(SCHEDULES)}")
    total = max(1, int(total_steps))
    warm = int(warmup * total)
    decay = SCHEDULES[schedule]

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return decay(min(1.0, (step - warm) / max(1, total - warm)))

    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step"}
