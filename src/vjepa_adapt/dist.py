"""The only module that knows about torch.distributed.

Reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK). In one process every call is a no-op.
An init failure is raised, never swallowed: a silently single-process "multi-GPU" run would train
on 1/N of the data while looking healthy.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as td

# How long the other ranks wait while rank 0 alone runs a stage (see wait_for_main).
WAIT_FOR_MAIN_TIMEOUT = datetime.timedelta(days=2)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def info() -> DistInfo:
    if td.is_available() and td.is_initialized():
        return DistInfo(td.get_rank(), td.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo(
        int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
    )


def init(device: str = "auto") -> DistInfo:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1); else do nothing.

    Backend: NCCL on CUDA, gloo on CPU (the 2-process CPU test uses gloo).
    """
    d = info()
    if d.world_size <= 1 or td.is_initialized():
        return d
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(d.local_rank)
    td.init_process_group(backend="nccl" if use_cuda else "gloo")  # raises on failure, by design
    return info()


def shutdown() -> None:
    if td.is_available() and td.is_initialized():
        td.destroy_process_group()


def barrier() -> None:
    if initialized():
        td.barrier()


def wait_for_main() -> None:
    """Every rank waits here until all arrive, with a long timeout: used where rank 0 alone runs a
    stage (hours for motion/tag at real scale) while the others idle. Training collectives keep the
    default timeout, so a real hang there still surfaces in minutes."""
    if initialized():
        td.barrier(group=_wait_group())


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks, in place (the trainer's "which rank has data" flags); identity in one process."""
    if initialized():
        td.all_reduce(t, op=td.ReduceOp.SUM)
    return t


def wrap_ddp(module: torch.nn.Module, device: torch.device, find_unused_parameters: bool = False) -> torch.nn.Module:
    """Wrap for data-parallel training; identity in one process.

    Call again after a stage boundary changes which parameters train: DDP fixes its set of
    gradient-bearing parameters when it is built. ``find_unused_parameters``: some trainable
    parameter gets no gradient in a step (e.g. the motion_aux head of a run without aux targets);
    without it DDP waits for that gradient forever.
    """
    if not initialized():
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = None
    if device.type == "cuda":  # "cuda" without an index means the device dist.init selected
        ids = [device.index if device.index is not None else torch.cuda.current_device()]
    return DDP(module, device_ids=ids, find_unused_parameters=find_unused_parameters)


def no_sync(module: torch.nn.Module) -> contextlib.AbstractContextManager:
    """Skip DDP's gradient all-reduce inside (gradient accumulation: every micro-batch but the last)."""
    sync_free = getattr(module, "no_sync", None)
    return sync_free() if initialized() and sync_free is not None else contextlib.nullcontext()


def initialized() -> bool:
    """A process group of several ranks is up (torchrun + ``init``)."""
    return td.is_available() and td.is_initialized() and td.get_world_size() > 1


@functools.cache
def _wait_group() -> Any:
    # gloo whatever the training backend: a CPU barrier that may wait for days costs nothing.
    return td.new_group(backend="gloo", timeout=WAIT_FOR_MAIN_TIMEOUT)
