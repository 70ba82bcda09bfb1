"""The step plan of a training run: pure functions of (step, ``TrainConfig``, world size).

Which stage a step is in and where stages end, the lr of a step (per-stage warmup + cosine), how a
global batch splits into micro-batches on a number of ranks, and the loss weight of each
micro-batch when some ranks have no readable clip. ``train/loop.py`` reads them once per step.
"""

from __future__ import annotations

import itertools

from vjepa_adapt.config import Stage, TrainConfig
from vjepa_adapt.errors import ConfigError
from vjepa_adapt.train.schedules import staged_warmup_cosine


def stages_of(tcfg: TrainConfig) -> list[Stage]:
    """The run's stages; without ``train.stages``, one stage of all steps (warmup ``train.warmup_steps``)."""
    return tcfg.stages or [Stage(name="all", steps=tcfg.steps, warmup_steps=tcfg.warmup_steps)]


def stage_at(step: int, tcfg: TrainConfig) -> Stage:
    stages = stages_of(tcfg)
    end = 0
    for s in stages:
        end += s.steps
        if step < end:
            return s
    return stages[-1]


def stage_ends(tcfg: TrainConfig) -> list[int]:
    """The step count at which each stage is done (its last step + 1)."""
    return list(itertools.accumulate(s.steps for s in stages_of(tcfg)))


def micro_batching(tcfg: TrainConfig, world_size: int) -> tuple[int, int]:
    """(micro-batch per rank, micro-batches per step) on ``world_size`` ranks.

    Without ``train.global_batch_size``: (batch_size, grad_accum), so the global batch grows with the
    ranks. With it: global = micro × accum × ranks on any world size, micro the largest divisor of
    global / ranks that is at most ``batch_size`` (64 on 8 ranks with batch_size 4: micro 4,
    accum 2; on 1 rank: micro 4, accum 16).
    """
    if tcfg.global_batch_size is None:
        return tcfg.batch_size, tcfg.grad_accum
    g = tcfg.global_batch_size
    if g % world_size:
        raise ConfigError(f"train.global_batch_size={g} is not divisible by the {world_size} ranks of this run: "
                          f"use a multiple of {world_size}")
    per_rank = g // world_size
    micro = max(d for d in range(1, min(tcfg.batch_size, per_rank) + 1) if per_rank % d == 0)
    return micro, per_rank // micro


def stage_lr(step: int, tcfg: TrainConfig) -> float:
    """The lr of ``step``: warmup then cosine to ``final_lr`` within each stage (re-warmed at its start)."""
    plan = [(s.steps, min(tcfg.warmup_steps, s.steps) if s.warmup_steps is None else s.warmup_steps)
            for s in stages_of(tcfg)]
    return staged_warmup_cosine(step, plan, tcfg.lr, final=tcfg.final_lr)


# Ranks agree on data: which micro-batches run, and with what loss weight.


def micro_batch_weights(have: list[bool], ranks_with_data: list[int], world_size: int) -> list[float | None]:
    """This rank's loss weight for each micro-batch of a step.

    ``have[i]``: this rank read at least one clip of micro-batch i; ``ranks_with_data[i]``: how many
    ranks did (all-reduced). None = no rank did: every rank skips it. 0 = others did, this rank did
    not: it runs a zero-weighted stand-in so its backward joins the same gradient all-reduce.
    Otherwise world / ranks_with_data, so DDP's mean over all ranks is the mean over the ranks with
    data (1.0 exactly when every rank has data, and in one process).
    """
    out: list[float | None] = []
    for mine, n in zip(have, ranks_with_data):
        out.append(None if n == 0 else (world_size / n if mine else 0.0))
    return out
