"""The only module that knows about torch.distributed.

Reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK). In one process every call is a no-op.
An init failure is raised, never swallowed: a silently single-process "multi-GPU" run would train
on 1/N of the data while looking healthy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as td


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
    if td.is_available() and td.is_initialized():
        td.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Average a tensor over ranks (in place); identity in one process."""
    if td.is_available() and td.is_initialized() and td.get_world_size() > 1:
        td.all_reduce(t, op=td.ReduceOp.SUM)
        t /= td.get_world_size()
    return t


def broadcast_object(obj: object, src: int = 0) -> object:
    if td.is_available() and td.is_initialized() and td.get_world_size() > 1:
        box = [obj]
        td.broadcast_object_list(box, src=src)
        return box[0]
    return obj


def wrap_ddp(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Wrap for data-parallel training; identity in one process.

    Call again after a stage boundary changes which parameters train: DDP fixes its set of
    gradient-bearing parameters when it is built.
    """
    if not (td.is_available() and td.is_initialized() and td.get_world_size() > 1):
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(module, device_ids=ids, find_unused_parameters=False)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return module.module if hasattr(module, "module") and isinstance(getattr(module, "module"), torch.nn.Module) else module
