"""Ch 10 stages: continual pretraining and the head-only arm (one trainer); the demo base uses it too."""

from __future__ import annotations

from pathlib import Path

import torch

from vjepa_adapt.config import PipelineConfig, TrainConfig
from vjepa_adapt.pipeline import StageContext
from vjepa_adapt.stage_result import StageResult
from vjepa_adapt.stages.data import frame_reader, load_run_clips
from vjepa_adapt.stages.encoders import load_frozen, resolve_device


def _train_result(res, n_clips: int) -> StageResult:
    out = StageResult(done=res.steps, extra={"best_step": res.best_step, "best_score": res.best_score,
                                             "clips": n_clips, "last": {k: v for k, v in res.history[-1].items()
                                                                       if k != "drift_blocks"}})
    for cid, reason in dict(res.skipped).items():  # a bad clip is met once per epoch: report it once
        out.skip(cid, reason)
    return out


def _aux_targets(cfg: PipelineConfig, run_dir: Path):
    from vjepa_adapt.data.loader import AuxTargets
    from vjepa_adapt.motion import load_motion_outputs, mirror_class, motion_aux_targets
    from vjepa_adapt.motion.classes import mirror_motion_aux_targets

    mo = load_motion_outputs(run_dir / "motion")
    ids = list(mo.features)
    train_ids = [c for c in ids if mo.splits[c] == "train"]
    z, mean, std = motion_aux_targets(mo.features, train_ids, dims=cfg.motion.aux_dims, clip_ids=ids)
    zf = mirror_motion_aux_targets(z, mean, std)
    index = {name: i for i, name in enumerate(mo.label_set.classes)}
    labels = {c: index[n] for c, n in mo.label_set.labels.items()}
    label_flipped = {c: index.get(mirror_class(n), -1) for c, n in mo.label_set.labels.items()}
    aux = AuxTargets(labels=labels, reg={c: z[i] for i, c in enumerate(ids)},
                     reg_flipped={c: zf[i] for i, c in enumerate(ids)}, label_flipped=label_flipped)
    return aux, mo


def _train_arm(ctx: StageContext, mode: str, l2: float) -> StageResult:
    """One trained arm: ``l2`` is its λ of the L2 anchor, one value of the ``train.l2_anchor`` sweep."""
    cfg = ctx.cfg
    tcfg = cfg.train.for_arm(l2)  # one arm = one resolved TrainConfig: its single λ, SPD's λ in tcfg.spd
    if mode == "head_only":
        tcfg = head_only_config(cfg, tcfg)
    return fit_arm(ctx, tcfg, cfg.masking)


def head_only_config(cfg: PipelineConfig, tcfg: TrainConfig) -> TrainConfig:
    """The head-only arms' settings (pretrain-head, surgery-head): ``tcfg`` in mode head_only with
    ``arms.head_only_*`` steps and lr and the motion_aux loss at full weight (no stages)."""
    a = cfg.arms
    return tcfg.model_copy(update={"mode": "head_only", "steps": a.head_only_steps, "lr": a.head_only_lr,
                                   "warmup_steps": min(cfg.train.warmup_steps, a.head_only_steps),
                                   "motion_aux_weight": 1.0, "aux_lr_mult": 1.0, "stages": None,
                                   "eval_every": min(cfg.train.eval_every, a.head_only_steps)})


def fit_arm(ctx: StageContext, tcfg: TrainConfig, masking, make_streams=None, model=None) -> StageResult:
    """Train one arm (``tcfg``) on the run's train clips with their motion_aux targets, validated on
    the val clips; ``make_streams(motion outputs, clips)`` adds the factor streams its stages mix in.
    ``model``: where training starts (default: the frozen encoder every arm starts from)."""
    from vjepa_adapt.models.heads import MotionAuxHead
    from vjepa_adapt.train.loop import train

    cfg = ctx.cfg
    aux, mo = _aux_targets(cfg, ctx.run_dir)
    clips, _ = load_run_clips(ctx.run_dir)
    clips = [c for c in clips if c.clip_id in mo.features]  # clips the motion stage could read
    streams = make_streams(mo, clips) if make_streams is not None else None
    torch.manual_seed(cfg.run.seed)
    model = load_frozen(cfg, ctx.run_dir) if model is None else model
    head = MotionAuxHead(model.config.hidden_size, len(mo.label_set.classes), reg_dims=cfg.motion.aux_dims)
    res = train(tcfg=tcfg, data=cfg.data, masking=masking, model=model, head=head,
                train_clips=[c for c in clips if mo.splits[c.clip_id] == "train"],
                val_clips=[c for c in clips if mo.splits[c.clip_id] == "val"], aux=aux, out_dir=ctx.out_dir,
                seed=cfg.run.seed, device=resolve_device(cfg), dtype=cfg.run.dtype, num_workers=cfg.run.num_workers,
                streams=streams, read=frame_reader(cfg, ctx.run_dir))
    return _train_result(res, len(clips))
