"""Logged values stay on the device between cadence points; one read settles them.

A training step never reads a tensor back to the host (on a GPU that waits for the whole queued
step). Each step leaves a ``Pending`` row (its 0-d device values and a count of non-finite
losses); ``settle_rows`` reads all pending rows with one host sync at the trainer's cadence
points and is where the non-finite guard raises ``TrainingError``, on every rank together.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vjepa_adapt import dist
from vjepa_adapt.errors import UserError


class TrainingError(UserError):
    """The run cannot continue (e.g. a non-finite loss); the last good checkpoint is intact."""


@dataclass
class Pending:
    row: dict[str, Any]  # the step's row; its device values are filled in by settle_rows
    values: dict[str, torch.Tensor]  # 0-d tensors on the device
    accum: int  # micro-batches of the step ...
    ran: int  # ... and how many this rank really ran (its means are rescaled to those)
    bad: torch.Tensor | None  # 0-d int count of non-finite losses / grad norm, on the device


def non_finite(outs: list[dict[str, torch.Tensor]], values: dict[str, torch.Tensor],
               dev: torch.device) -> torch.Tensor | None:
    """How many of this step's losses (and its grad norm) are not finite, as a device tensor (no sync)."""
    checks = [o["loss"].detach().reshape(()) for o in outs]
    if "grad_norm" in values:
        checks.append(values["grad_norm"].detach().reshape(()))
    if not checks:
        return None
    return (~torch.isfinite(torch.stack([c.to(dev, torch.float64) for c in checks]))).sum()


def settle_rows(pending: list[Pending], out_dir: Path) -> list[dict[str, Any]]:
    """Read every pending row's values from the device at once (one host sync), fill the rows in.

    The non-finite guard lives here: the ranks agree on the first step with a non-finite loss
    (or grad norm) on any rank and all raise ``TrainingError`` together, before the caller
    evaluates, exports or checkpoints anything — so no checkpoint ever holds a non-finite state.
    Returns the rows, complete, in step order.
    """
    tensors: list[torch.Tensor] = []
    for p in pending:
        tensors.extend(v.reshape(()).to(torch.float64) for v in p.values.values())
        tensors.append(p.bad.to(torch.float64) if p.bad is not None else torch.zeros((), dtype=torch.float64))
    flat = _read_back(tensors)
    bad_here, at = [], 0
    for p in pending:
        vals = flat[at:at + len(p.values)]
        at += len(p.values)
        bad_here.append(int(flat[at]))
        at += 1
        logged = dict(zip(p.values, vals))
        if 0 < p.ran < p.accum:  # the mean over the micro-batches this rank really ran
            logged = {k: v if k in ("grad_norm", "l2") else v * p.accum / p.ran for k, v in logged.items()}
        p.row.update(logged)
    bad_any = dist.sum_over_ranks(bad_here)
    for p, mine, anywhere in zip(pending, bad_here, bad_any):
        if anywhere:
            where = fmt_row({k: v for k, v in p.row.items() if k in p.values}) if mine else "on another rank"
            raise TrainingError(
                f"non-finite loss at step {p.row['step'] - 1} ({where}); stopped. The last good checkpoint in "
                f"{out_dir / 'checkpoints'} is intact: lower train.lr or check the input clips, then resume.")
    return [p.row for p in pending]


def _read_back(tensors: list[torch.Tensor]) -> list[float]:
    """0-d tensors (one device) to Python floats with one host sync (float64: the exact values of float())."""
    if not tensors:
        return []
    return torch.stack(tensors).tolist()


def fmt_row(row: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                    if not k.endswith("_s") and k not in ("drift_blocks",))
