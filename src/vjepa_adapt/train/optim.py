"""Optimizer parameter groups, schedule application and layer freezing.

Groups are built over ALL parameters, frozen ones included: a later stage (surgery's prefix
unfreezing, LP-FT) only flips ``requires_grad`` and the same optimizer trains them. This works
because torch optimizers skip parameters whose ``.grad`` is None (no moment update, no weight
decay), so ``set_encoder_trainable`` clears the grads of everything it freezes.
"""

from __future__ import annotations

import math
import re
from typing import Iterable, Sequence

import torch
from torch import nn

Rule = tuple[str, float, float]  # (name prefix or regex, lr_mult, wd_mult)


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """Biases, norm weights and any 0-/1-D tensor get no weight decay."""
    lowered = name.lower()
    return param.ndim <= 1 or "norm" in lowered or lowered.endswith("bias") or ".bias" in lowered


def _rule_matches(pattern: str, name: str) -> bool:
    # A plain prefix or a regex anchored at the start. Note "encoder.layer.1" as a prefix also
    # matches "encoder.layer.10": end block prefixes with "." ("encoder.layer.1.").
    return name.startswith(pattern) or re.match(pattern, name) is not None


def build_param_groups(
    named_params: Iterable[tuple[str, nn.Parameter]],
    base_lr: float,
    weight_decay: float,
    rules: Sequence[Rule] = (),
) -> list[dict]:
    """AdamW-ready param groups over every parameter (trainable or not).

    Each parameter takes the (lr_mult, wd_mult) of the FIRST matching rule (default 1, 1), and
    wd_mult becomes 0 for biases / norms / 1-D tensors. One group per (rule, decay/no-decay),
    named "<rule or default>[/no_decay]" in ``group_name``. Group keys: params, names, lr = base_lr * lr_mult, weight_decay = weight_decay *
    wd_mult, lr_mult, wd_mult, group_name. A tensor seen twice (tied weights) is kept once.
    """
    rules = [(str(p), float(lm), float(wm)) for p, lm, wm in rules]
    for pattern, _, _ in rules:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"optimizer rule pattern {pattern!r} is not a valid prefix/regex: {exc}") from exc
    groups: dict[tuple[str, bool], dict] = {}
    seen: set[int] = set()
    for name, param in named_params:
        if id(param) in seen:
            continue
        seen.add(id(param))
        lr_mult, wd_mult, rule_name = 1.0, 1.0, "default"
        for pattern, lm, wm in rules:
            if _rule_matches(pattern, name):
                lr_mult, wd_mult, rule_name = lm, wm, pattern
                break
        no_decay = is_no_decay(name, param)
        if no_decay:
            wd_mult = 0.0
        key = (rule_name, no_decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "names": [],
                "lr": base_lr * lr_mult,
                "weight_decay": weight_decay * wd_mult,
                "lr_mult": lr_mult,
                "wd_mult": wd_mult,
                "group_name": f"{rule_name}{'/no_decay' if no_decay else ''}",
            }
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    return list(groups.values())


def apply_schedule(optimizer: torch.optim.Optimizer, lr: float, wd: float) -> None:
    """Set every group's lr = lr * lr_mult and weight_decay = wd * wd_mult for this step."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
        group["weight_decay"] = wd * group.get("wd_mult", 1.0)


def set_encoder_trainable(
    encoder: nn.Module,
    freeze_below: int | None = None,
    train_below: int | None = None,
    layers_attr: str = "layer",
    embeddings_attr: str = "embeddings",
    keep_norms_trainable: bool = True,
) -> dict[str, int]:
    """Toggle requires_grad on an encoder with ``embeddings`` and a block list ``layer``.

    - neither given: everything trainable.
    - freeze_below=N (pretrain's optional freezing): embeddings and blocks [0, N) frozen, the
      rest trainable.
    - train_below=N (surgery's prefix unfreezing): embeddings and blocks [0, N) trainable, later
      blocks frozen; anything outside the blocks and embeddings (the final norm) trains only when
      N is the whole depth (the encoder trains whole); N = 0 freezes the whole encoder.
    Norm parameters (name containing "norm") stay trainable when ``keep_norms_trainable``;
    pass False for head-only arms ("norms too"). Frozen parameters get ``grad = None`` so the
    optimizer skips them. Returns counts: trainable_params, frozen_params, trainable_tensors,
    frozen_tensors.
    """
    if freeze_below is not None and train_below is not None:
        raise ValueError("set_encoder_trainable: give freeze_below or train_below, not both")
    layers = getattr(encoder, layers_attr, None)
    if not isinstance(layers, (nn.ModuleList, nn.Sequential)):
        raise ValueError(f"set_encoder_trainable: encoder has no block list '{layers_attr}' "
                         f"(got {type(layers).__name__})")
    n_blocks = len(layers)
    cut = freeze_below if freeze_below is not None else train_below
    if cut is not None and not 0 <= cut <= n_blocks:
        raise ValueError(f"set_encoder_trainable: block index {cut} outside [0, {n_blocks}]")

    block_of: dict[int, int] = {}
    for i, block in enumerate(layers):
        for p in block.parameters():
            block_of[id(p)] = i
    emb = getattr(encoder, embeddings_attr, None)
    emb_ids = {id(p) for p in emb.parameters()} if isinstance(emb, nn.Module) else set()

    counts = {"trainable_params": 0, "frozen_params": 0, "trainable_tensors": 0, "frozen_tensors": 0}
    for name, p in encoder.named_parameters():
        if cut is None:
            trainable = True
        else:
            # Embeddings go with block 0: frozen by any freeze_below >= 1, trained by any
            # train_below >= 1, so N = 0 means "no prefix" in both modes.
            idx = 0 if id(p) in emb_ids else block_of.get(id(p))
            # outside every block (the final norm): in the prefix only when the prefix is everything
            in_prefix = idx < cut if idx is not None else (train_below is not None and cut == n_blocks)
            if freeze_below is not None:
                trainable = not in_prefix
            else:
                trainable = in_prefix
            if keep_norms_trainable and "norm" in name.lower():
                trainable = True
        p.requires_grad_(trainable)
        if not trainable:
            p.grad = None
        kind = "trainable" if trainable else "frozen"
        counts[f"{kind}_params"] += p.numel()
        counts[f"{kind}_tensors"] += 1
    return counts


def prefix_blocks(fraction: float, depth: int) -> int:
    """How many leading blocks a stage's ``unfreeze_fraction`` trains: ceil(fraction × depth).

    A fraction is a share of the blocks, rounded up so any fraction > 0 trains at least one block:
    0.25 of 40 = 10 blocks (0–9), 0.3 of 6 = 2, 0 = none, 1 = all. A hair of slack absorbs float
    error (0.7 × 10 is 7.000000000000001 in floats, and must stay 7).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"unfreeze fraction must be in [0, 1], got {fraction}")
    return min(depth, max(0, math.ceil(fraction * depth - 1e-9)))


def trainable_summary(encoder: nn.Module, layers_attr: str = "layer", embeddings_attr: str = "embeddings") -> str:
    """What of the encoder trains now, in words: 'blocks 0-9 of 40 + embeddings (final norm frozen)'."""
    layers = getattr(encoder, layers_attr)
    blocks = [i for i, b in enumerate(layers) if any(p.requires_grad for p in b.parameters())]
    emb = getattr(encoder, embeddings_attr, None)
    emb_params = list(emb.parameters()) if isinstance(emb, nn.Module) else []
    emb_on = any(p.requires_grad for p in emb_params)
    inside = {id(p) for b in layers for p in b.parameters()} | {id(p) for p in emb_params}
    rest_on = any(p.requires_grad for p in encoder.parameters() if id(p) not in inside)
    if not blocks and not emb_on and not rest_on:
        return f"encoder frozen (0 of {len(layers)} blocks)"
    runs, start = [], None
    for i in range(len(layers) + 1):  # consecutive block indices as "a-b" runs
        on = i in blocks
        if on and start is None:
            start = i
        if not on and start is not None:
            runs.append(f"{start}-{i - 1}" if i - 1 > start else f"{start}")
            start = None
    text = f"blocks {', '.join(runs) or 'none'} of {len(layers)}"
    text += " + embeddings" if emb_on else ""
    return text + (" + final norm" if rest_on else " (final norm frozen)")


def freeze_module(module: nn.Module) -> int:
    """Freeze every parameter (norms too) and clear its grad; returns the parameter count."""
    n = 0
    for p in module.parameters():
        p.requires_grad_(False)
        p.grad = None
        n += p.numel()
    return n
