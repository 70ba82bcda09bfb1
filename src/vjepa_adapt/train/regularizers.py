"""Drift control and teacher updates on lists of tensors: EMA, L2 anchor, SPD, drift metrics.

All functions take parallel lists (params[i] <-> anchors[i]) and use the ``torch._foreach_*``
kernels so a billion-parameter encoder costs a handful of fused launches, not one per tensor.
Anchors (theta_0) are tensors like the parameters: on their device, and FSDP shards (DTensors)
of the same placement when the parameters are sharded — then every norm here is the norm of the
whole tensor (its shards reduced over the ranks), returned as a plain tensor.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch


def _as_lists(
    params: Iterable[torch.Tensor], others: Iterable[torch.Tensor], what: str
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    params, others = list(params), list(others)
    if len(params) != len(others):
        raise ValueError(f"{what}: {len(params)} parameters but {len(others)} reference tensors")
    for i, (p, o) in enumerate(zip(params, others)):
        if p.shape != o.shape:
            raise ValueError(f"{what}: tensor {i} has shape {tuple(p.shape)} but its reference {tuple(o.shape)}")
    return params, others


def _full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (a value computed from FSDP shards) as the plain tensor of its full value; a tensor as is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def snapshot(params: Iterable[torch.Tensor], device: torch.device | str | None = None) -> list[torch.Tensor]:
    """theta_0: detached copies of ``params`` (same device unless ``device`` is given)."""
    return [p.detach().clone() if device is None else p.detach().to(device, copy=True) for p in params]


@torch.no_grad()
def ema_update(
    teacher_params: Iterable[torch.Tensor], student_params: Iterable[torch.Tensor], momentum: float
) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, in place.

    momentum = 0 copies the student, momentum = 1 leaves the teacher unchanged (SALT).
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
    teacher, student = _as_lists(teacher_params, student_params, "ema_update")
    if not teacher or momentum == 1.0:
        return
    student = [s.detach() for s in student]
    torch._foreach_mul_(teacher, momentum)
    torch._foreach_add_(teacher, student, alpha=1.0 - momentum)


@torch.no_grad()
def add_l2_anchor_grad_(
    params: Sequence[torch.Tensor], anchors: Sequence[torch.Tensor], lam: float
) -> torch.Tensor:
    """The L2 anchor lam * sum_i ||theta_i - theta0_i||^2: its gradient 2 lam (theta - theta0) is added
    straight into ``.grad``, in place.

    Same update as putting the penalty in the loss, without keeping theta - theta0 in the
    autograd graph. Call after backward (and after the DDP gradient all-reduce: the term is
    identical on every rank) and before grad clipping. A parameter whose grad is None gets one.
    Returns the penalty value (0-d, detached) for logging.
    """
    params, anchors = _as_lists(params, anchors, "add_l2_anchor_grad_")
    if not params:
        return torch.zeros(())
    diffs = torch._foreach_sub(params, anchors)
    # Accumulate in fp32: bf16 squares of many tensors would lose the small drifts we measure.
    value = _full(lam * torch.stack([n.float() for n in torch._foreach_norm(diffs)]).pow(2).sum())
    torch._foreach_mul_(diffs, 2.0 * lam)
    for p, d in zip(params, diffs):
        if p.grad is None:
            p.grad = d
        else:
            p.grad.add_(d)
    return value


@torch.no_grad()
def deviation_norms(params: Iterable[torch.Tensor], anchors: Iterable[torch.Tensor]) -> torch.Tensor:
    """(N,) float32: ||theta_i - theta0_i|| per tensor, on the parameters' device."""
    params, anchors = _as_lists(params, anchors, "deviation_norms")
    if not params:
        return torch.zeros(0)
    return _full(torch.stack([n.float() for n in torch._foreach_norm(torch._foreach_sub(params, anchors))]))


@torch.no_grad()
def tensor_norms(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """(N,) float32: ||t_i|| per tensor (the whole tensor's, also for FSDP shards)."""
    tensors = list(tensors)
    if not tensors:
        return torch.zeros(0)
    return _full(torch.stack([t.float().norm() for t in tensors]))


@torch.no_grad()
def relative_drift(params: Iterable[torch.Tensor], anchors: Iterable[torch.Tensor]) -> list[float]:
    """||theta - theta0|| / ||theta0|| per tensor; NaN where ||theta0|| = 0 (undefined)."""
    params, anchors = _as_lists(params, anchors, "relative_drift")
    if not params:
        return []
    dev = deviation_norms(params, anchors)
    ref = _full(torch.stack([n.float() for n in torch._foreach_norm(anchors)]))
    rel = torch.where(ref > 0, dev / torch.where(ref > 0, ref, torch.ones_like(ref)), torch.full_like(ref, float("nan")))
    return rel.tolist()


@torch.no_grad()
def spd_step(
    params: Sequence[torch.Tensor],
    anchors: Sequence[torch.Tensor],
    prev_norms: torch.Tensor | Sequence[float],
    lam: float,
) -> torch.Tensor:
    """Selective projection decay (Tian et al. 2024), applied after an optimizer step.

    For each tensor W with anchor W0 and pre-step deviation norm ||W_prev - W0|| (``prev_norms``):
        r = clip((||W - W0|| - ||W_prev - W0||) / ||W - W0||, 0, 1)
        W <- W - lam * r * (W - W0)
    r > 0 only when the step moved W away from W0, so tensors moving toward W0 are untouched.
    (The official AdamSPD additionally gates on the sign of grad . (W_prev - W0); with the ratio
    clipped at 0 the realised norm growth is the criterion we apply, for any optimizer.)
    Returns r, (N,) float32 on the parameters' device, for logging.
    """
    params, anchors = _as_lists(params, anchors, "spd_step")
    if not params:
        return torch.zeros(0)
    diffs = torch._foreach_sub(params, anchors)  # W - W0
    cur = _full(torch.stack([n.float() for n in torch._foreach_norm(diffs)]))  # (N,)
    prev = torch.as_tensor(_full(prev_norms) if isinstance(prev_norms, torch.Tensor) else prev_norms,
                           dtype=torch.float32, device=cur.device)
    if prev.shape != cur.shape:
        raise ValueError(f"spd_step: {cur.numel()} tensors but {prev.numel()} previous norms")
    safe = torch.where(cur > 0, cur, torch.ones_like(cur))
    ratio = torch.where(cur > 0, (cur - prev) / safe, torch.zeros_like(cur)).clamp(0.0, 1.0)
    # No host sync: every tensor is projected by its scale on the device, 0 for one that needs none
    # (W + 0·(W − W0) is W exactly, so the result is that of projecting only the moved tensors).
    scales = list((-lam * ratio).unbind())  # 0-d tensors on the device
    local = [d.to_local() if hasattr(d, "to_local") else d for d in diffs]  # (FSDP: this rank's shard)
    torch._foreach_mul_(local, scales)
    torch._foreach_add_(list(params), diffs)
    return ratio


class SPD:
    """Stateful SPD around an optimizer step::

        spd = SPD(trainable_params, anchors, lam)
        spd.before_step(); optimizer.step(); ratios = spd.after_step()

    ``before_step`` stores the deviation norms ||W_prev - W0||; ``after_step`` projects.
    """

    def __init__(self, params: Iterable[torch.Tensor], anchors: Iterable[torch.Tensor], lam: float) -> None:
        if lam < 0:
            raise ValueError(f"SPD lambda must be >= 0, got {lam}")
        self.params, self.anchors = _as_lists(params, anchors, "SPD")
        self.lam = float(lam)
        self._prev: torch.Tensor | None = None

    def before_step(self) -> None:
        self._prev = deviation_norms(self.params, self.anchors)

    def after_step(self) -> torch.Tensor:
        if self._prev is None:
            raise RuntimeError("SPD.after_step() called without before_step() for this optimizer step")
        ratio = spd_step(self.params, self.anchors, self._prev, self.lam)
        self._prev = None
        return ratio
