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
    """Skip DDP's gradient all-reduce inside (gradient accumulation: every micro-batch but the last).

    FSDP modules have no ``no_sync``: they reduce-scatter every micro-batch and accumulate sharded
    gradients (skipping it would keep a full unsharded gradient per rank, what FSDP is there to avoid).
    """
    sync_free = getattr(module, "no_sync", None)
    return sync_free() if initialized() and sync_free is not None else contextlib.nullcontext()


def sum_over_ranks(values: list[int]) -> list[int]:
    """Element-wise sum of small host-side ints over ranks (the trainer's "which rank has data" flags).

    Host to host, never through the accelerator: on a gloo group, so with NCCL training this costs no
    device synchronisation (a CUDA tensor read back to the host would wait for the whole step queue).
    """
    if not initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.int64)
    td.all_reduce(t, op=td.ReduceOp.SUM, group=_cpu_group())
    return t.tolist()


def main_value(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a decision every rank must take alike, e.g. "export the best
    checkpoint now", which is a collective under FSDP); ``value`` itself in one process."""
    if not initialized():
        return value
    box = [value]
    td.broadcast_object_list(box, src=0, group=_cpu_group())
    return box[0]


# -- FSDP (train.parallel=fsdp): torch's FSDP2 ``fully_shard`` --------------------------------------


def shard_fsdp(root: torch.nn.Module, units: list[torch.nn.Module]) -> torch.nn.Module:
    """Fully shard ``units`` (the transformer blocks, ...) and then ``root`` over all ranks; identity in one process.

    FSDP2 (``torch.distributed.fsdp.fully_shard``): each unit's parameters become DTensor shards
    (dim 0 over the ranks), gathered for its forward and backward and freed after; ``root`` takes
    every parameter outside the units. Parameters keep their names and stay real ``nn.Parameter``s,
    so ``requires_grad`` may change between stages without re-wrapping (a frozen parameter gets no
    gradient and no reduce-scatter) and an optimizer built after this call trains the shards.
    Forward must first run through ``root`` (it is FSDP's root); a unit may be called directly after.
    """
    if not initialized():
        return root
    from torch.distributed.fsdp import fully_shard

    for unit in units:
        fully_shard(unit)
    fully_shard(root)
    return root


def is_sharded(t: Any) -> bool:
    """``t`` is an FSDP shard (a DTensor)."""
    return hasattr(t, "full_tensor") and hasattr(t, "placements")


def gather_full(obj: Any, to_cpu: bool = True) -> Any:
    """``obj`` (a state dict, an optimizer state dict, a tensor) with every shard gathered into its full tensor.

    A collective: every rank calls it with the same structure (the same module/optimizer), in the
    same order. Plain tensors pass through (moved to the CPU with ``to_cpu`` only when gathered).
    """
    if is_sharded(obj):
        full = obj.full_tensor()
        return full.cpu() if to_cpu else full
    if isinstance(obj, dict):
        return {k: gather_full(v, to_cpu) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(gather_full(v, to_cpu) for v in obj)
    return obj


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` cut into this rank's shard of ``like`` (a DTensor), no communication; ``full`` as is otherwise."""
    if not is_sharded(like):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements, src_data_rank=None)


def load_full_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``module.load_state_dict`` of a full (unsharded) state dict, into a sharded module or a plain one."""
    current = module.state_dict()
    module.load_state_dict({k: shard_like(v, current[k]) if k in current else v for k, v in state.items()})


def load_full_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict`` of a full optimizer state: per-parameter tensors shaped like their
    (sharded) parameter are cut to this rank's shard; scalars (``step``) stay as they are."""
    params = [p for group in optimizer.param_groups for p in group["params"]]  # the order state ids follow
    per_param = {}
    for i, entry in state["state"].items():
        p = params[int(i)]
        per_param[i] = {k: shard_like(v, p) if isinstance(v, torch.Tensor) and v.shape == p.shape and v.ndim
                        else v for k, v in entry.items()}
    optimizer.load_state_dict({**state, "state": per_param})


def initialized() -> bool:
    """A process group of several ranks is up (torchrun + ``init``)."""
    return td.is_available() and td.is_initialized() and td.get_world_size() > 1


@functools.cache
def _wait_group() -> Any:
    # gloo whatever the training backend: a CPU barrier that may wait for days costs nothing.
    return td.new_group(backend="gloo", timeout=WAIT_FOR_MAIN_TIMEOUT)


@functools.cache
def _cpu_group() -> Any:
    # host-side collectives of small values; the default group already is one on CPU (gloo)
    return None if td.get_backend() == "gloo" else td.new_group(backend="gloo")
