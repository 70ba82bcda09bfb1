"""The arms of a run: which encoders go through the probe, and their names."""

from __future__ import annotations

from vjepa_adapt.config import PipelineConfig
from vjepa_adapt.errors import ConfigError

FROZEN, RANDOM_INIT, FRAME_SHUFFLED, PRETRAIN_HEAD = "frozen", "random_init", "frame_shuffled", "pretrain_head"
SURGERY, SURGERY_HEAD = "surgery", "surgery_head"
UNTRAINED = (FROZEN, RANDOM_INIT, FRAME_SHUFFLED)  # arms that need no training stage


def pretrain_arms(cfg: PipelineConfig) -> dict[str, float]:
    """One arm per λ: 'pretrain' for a single value, else 'pretrain_l<λ>'."""
    lams = cfg.train.l2_anchor
    return {"pretrain": lams[0]} if len(lams) == 1 else {f"pretrain_l{lam:g}": lam for lam in lams}


def surgery_arms(cfg: PipelineConfig) -> dict[str, tuple[str, ...]]:
    """The surgery arm and its ablations: name -> the recipe switches turned off for it.

    'surgery' runs the recipe as configured (``train.surgery``); each switch in
    ``arms.surgery_ablations`` adds 'surgery_no_<switch>', the same recipe with that one switch off.
    """
    if not cfg.arms.surgery:
        return {}
    recipe = cfg.train.surgery
    already_off = [s for s in cfg.arms.surgery_ablations if not getattr(recipe, s)]
    if already_off:
        raise ConfigError(f"arms.surgery_ablations: {', '.join(already_off)} already off in the recipe "
                          f"(train.surgery.{already_off[0]}=false), so its ablation would equal the surgery arm")
    return {SURGERY: (), **{f"{SURGERY}_no_{s}": (s,) for s in cfg.arms.surgery_ablations}}


def is_head_only(arm: str) -> bool:
    """Head-only arms (pretrain_head, surgery_head): the frozen encoder plus a trained motion_aux head."""
    return arm == PRETRAIN_HEAD or arm.endswith("_head")


def all_arms(cfg: PipelineConfig) -> list[str]:
    arms = [FROZEN, *cfg.embed.baselines]
    if cfg.arms.pretrain:
        arms += list(pretrain_arms(cfg))
    if cfg.arms.pretrain_head:
        arms.append(PRETRAIN_HEAD)
    arms += list(surgery_arms(cfg))
    if cfg.arms.surgery_head:
        arms.append(SURGERY_HEAD)
    return arms
