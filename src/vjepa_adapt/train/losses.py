"""Training losses: the JEPA L1 regression and the motion_aux head's CE + MSE.

Pure functions of tensors; the trainer decides what to log (parts are detached tensors so
logging does not force a device sync on every step).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

IGNORE_LABEL = -1  # a clip with no motion class (e.g. untagged) contributes no CE term


def jepa_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over batch, tokens and dims (V-JEPA loss with exponent 1).

    pred, target: (B, N, D) predictions and teacher features at the target positions.
    The target is detached here too: the teacher must never receive gradient.
    """
    if pred.shape != target.shape:
        raise ValueError(f"jepa_l1 shape mismatch: pred {tuple(pred.shape)} vs target {tuple(target.shape)}")
    return (pred - target.detach()).abs().mean()


def jepa_loss(preds: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """L1 averaged over the mask generators (one (pred, target) pair per generator)."""
    if len(preds) != len(targets) or not preds:
        raise ValueError(f"jepa_loss needs equal, non-zero numbers of preds and targets, got {len(preds)} and {len(targets)}")
    return torch.stack([jepa_l1(p, t) for p, t in zip(preds, targets)]).mean()


def motion_aux_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    reg_pred: torch.Tensor,
    reg_target: torch.Tensor,
    weight: float = 0.1,
    ce_weight: float = 1.0,
    mse_weight: float = 1.0,
    reg_valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """weight * (ce_weight * CE + mse_weight * MSE) for the motion_aux head.

    logits: (B, K); labels: (B,) long, -1 = no class (ignored by CE).
    reg_pred, reg_target: (B, R) regression of the motion features.
    reg_valid: optional (B,) bool, rows to include in the MSE (default: all).
    CE is the mean over labelled clips, MSE the mean over valid rows and all R dims; a term with
    no rows is 0 (kept in the graph so DDP sees a gradient for every head parameter).
    Returns (total, parts) with parts = {ce, mse, total, n_labeled, n_reg} as detached tensors.
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (B, K) and labels (B,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if reg_pred.shape != reg_target.shape or reg_pred.shape[0] != logits.shape[0]:
        raise ValueError(
            f"reg_pred {tuple(reg_pred.shape)} and reg_target {tuple(reg_target.shape)} must match, batch {logits.shape[0]}"
        )
    labels = labels.long()
    labeled = labels != IGNORE_LABEL
    n_labeled = labeled.sum()
    # Checked where it is free: on a GPU the check would read back from the device at every call (a
    # host sync per micro-batch); the trainer checks its targets once before training (check_labels).
    if labels.device.type == "cpu":
        check_labels(labels, logits.shape[1])
    # sum / max(n, 1): 0 when no clip is labelled (cross_entropy's 'mean' would give NaN).
    ce_sum = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_LABEL, reduction="sum")
    ce = ce_sum / n_labeled.clamp(min=1)

    rows = torch.ones(reg_pred.shape[0], dtype=torch.bool, device=reg_pred.device) if reg_valid is None else reg_valid.bool()
    n_reg = rows.sum()
    # Zero the targets of excluded rows BEFORE subtracting: masking the squared error afterwards
    # would still send NaN gradients through where() if such a target is NaN.
    target = torch.where(rows.unsqueeze(1), reg_target.float().detach(), torch.zeros((), device=reg_target.device))
    sq = (reg_pred.float() - target).pow(2)  # (B, R)
    sq = torch.where(rows.unsqueeze(1), sq, torch.zeros_like(sq))
    mse = sq.sum() / (n_reg.clamp(min=1) * max(reg_pred.shape[1], 1))

    total = weight * (ce_weight * ce + mse_weight * mse)
    parts = {
        "ce": ce.detach(),
        "mse": mse.detach(),
        "total": total.detach(),
        "n_labeled": n_labeled.detach(),
        "n_reg": n_reg.detach(),
    }
    return total, parts


def check_labels(labels: torch.Tensor | list[int], num_classes: int) -> None:
    """Motion labels are class indices in [0, num_classes) or IGNORE_LABEL; ValueError otherwise."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    labeled = labels != IGNORE_LABEL
    if bool((labels[labeled] < 0).any()) or bool((labels[labeled] >= num_classes).any()):
        raise ValueError(f"motion labels must be in [0, {num_classes}) or {IGNORE_LABEL}, got {labels.tolist()}")
