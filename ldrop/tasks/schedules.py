"""Learning-rate schedules of the tasks."""

from __future__ import annotations

import math
from collections.abc import Callable


def lr_schedule(kind: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the base learning rate at a step: linear warm-up, then the named decay.

    ``tri_stage`` follows the wav2vec 2.0 fine-tuning recipe: warm-up, hold until 50% of training, then
    exponential decay to 5% of the peak.
    """
    if kind not in ("linear", "tri_stage", "constant"):
        raise ValueError(f"schedule must be 'linear', 'tri_stage' or 'constant', got {kind!r}")
    warmup_steps = max(0, min(warmup_steps, total_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if kind == "constant":
            return 1.0
        if kind == "linear":
            return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
        hold_end = max(warmup_steps, total_steps // 2)
        if step < hold_end:
            return 1.0
        progress = min(1.0, (step - hold_end) / max(1, total_steps - hold_end))
        return math.exp(math.log(0.05) * progress)

    return factor
