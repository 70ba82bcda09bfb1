"""The arms of a run: which encoders go through the probe, and their names."""

from __future__ import annotations

from vjepa_adapt.config import PipelineConfig

FROZEN, RANDOM_INIT, FRAME_SHUFFLED, PRETRAIN_HEAD = "frozen", "random_init", "frame_shuffled", "pretrain_head"
UNTRAINED = (FROZEN, RANDOM_INIT, FRAME_SHUFFLED)  # arms that need no training stage


def pretrain_arms(cfg: PipelineConfig) -> dict[str, float]:
    """One arm per λ: 'pretrain' for a single value, else 'pretrain_l<λ>'."""
    lams = cfg.train.l2_anchor
    return {"pretrain": lams[0]} if len(lams) == 1 else {f"pretrain_l{lam:g}": lam for lam in lams}


def all_arms(cfg: PipelineConfig) -> list[str]:
    arms = [FROZEN, *cfg.embed.baselines]
    if cfg.arms.pretrain:
        arms += list(pretrain_arms(cfg))
    if cfg.arms.pretrain_head:
        arms.append(PRETRAIN_HEAD)
    return arms
