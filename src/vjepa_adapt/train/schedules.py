"""Schedules as pure functions of the step (lr, weight decay, EMA momentum).

Pure functions of ``step`` make resume exact: the checkpoint stores the step, nothing else.
Steps past the end hold the final value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _check_steps(total_steps: int, warmup_steps: int = 0) -> None:
    if total_steps < 0 or warmup_steps < 0:
        raise ValueError(f"steps must be >= 0, got total={total_steps}, warmup={warmup_steps}")


def warmup_cosine(
    step: int,
    total_steps: int,
    warmup_steps: int,
    base: float,
    final: float = 0.0,
    start: float = 0.0,
) -> float:
    """Linear warmup start -> base over ``warmup_steps``, then cosine base -> final at ``total_steps``."""
    _check_steps(total_steps, warmup_steps)
    step = max(int(step), 0)
    if step < warmup_steps:
        return start + (base - start) * step / warmup_steps
    decay_steps = total_steps - warmup_steps
    if decay_steps <= 0:
        return base if step < total_steps else final
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return final + (base - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def staged_warmup_cosine(
    step: int,
    stages: Sequence[tuple[int, int]],
    base: float,
    final: float = 0.0,
) -> float:
    """Warmup + cosine restarted at every stage: ``stages`` = [(steps, warmup_steps), ...] in order.

    Within stage k (starting at the sum of the earlier stages' steps) the lr is
    ``warmup_cosine(step - start_k, steps_k, warmup_k, base, final)``: it re-warms from 0, so a block
    unfrozen at a stage boundary starts on a small lr while its fresh Adam moments fill, and
    reaches ``base`` rather than the tail of a run-long decay. One stage of all steps is plain
    ``warmup_cosine``. Past the last stage: ``final``.
    """
    start = 0
    for steps, warmup in stages:
        if step < start + steps:
            return warmup_cosine(step - start, steps, warmup, base, final=final)
        start += steps
    return final


def linear(step: int, total_steps: int, start: float, end: float) -> float:
    """start -> end linearly over ``total_steps`` (weight decay, EMA momentum ramps)."""
    _check_steps(total_steps)
    if total_steps == 0:
        return end
    progress = min(max(int(step), 0) / total_steps, 1.0)
    return start + (end - start) * progress


def ema_momentum(step: int, total_steps: int, start: float = 0.99925, end: float = 0.99925) -> float:
    """EMA teacher momentum tau: linear start -> end (reference: constant 0.99925)."""
    if not (0.0 <= start <= 1.0 and 0.0 <= end <= 1.0):
        raise ValueError(f"EMA momentum must be in [0, 1], got start={start}, end={end}")
    return linear(step, total_steps, start, end)
