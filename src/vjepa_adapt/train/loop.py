"""The one trainer: continual JEPA pretraining, surgery stages and the head-only arms.

What differs between arms is data in ``TrainConfig`` (mode, teacher rule, stages, λ), not code:
one arm = one resolved ``TrainConfig`` (``TrainConfig.for_arm``: its ``l2_anchor`` holds that
arm's single λ; SPD's λ is ``spd``; the surgery arms' recipe is resolved into the same fields by
``stages.surgery.surgery_train_config``). The predictor's mask token is the one the weights were
trained with, carried by the model (``models.vjepa.predictor_mask_index``).
Read top to bottom: set up → resume → data → for each step: stage, schedules, forward, backward,
optimizer, regularisers, EMA, log, eval, checkpoint → export.

Every schedule is a function of ``step``; the batch of a step (clips, augmentation, masks) is a
function of (seed, step) too (see ``data/loader.py``), so resume restores state and continues.

Stages (``train.stages``, progressive prefix unfreezing): the stage of a step sets what trains
(``set_stage_trainable``: ceil(fraction × depth) leading blocks, see ``optim.prefix_blocks``), the
data mixture of its batches (``MixtureBatchSampler``: raw replay and factor streams per batch share)
and the lr, which re-warms at every stage start (``schedules.staged_warmup_cosine``). Optimizer
groups hold every parameter from step 0; torch's AdamW creates a parameter's state at its first
gradient, so a block unfrozen late starts with fresh moments (and its own bias correction) exactly
when its stage's warmup keeps the lr small, while parameters already training keep theirs.

Several ranks (DDP): every rank runs every micro-batch's forward/backward, so the gradient
all-reduces always match. A rank whose micro-batch has no readable clip runs a zero-weighted
stand-in; a micro-batch no rank can read is skipped by all, and a step with no data anywhere
steps neither the optimizer nor the EMA teacher (see ``micro_batch_weights``).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vjepa_adapt import dist, storage
from vjepa_adapt.config import DataConfig, MaskingConfig, Stage, TrainConfig
from vjepa_adapt.data.clips import Clip
from vjepa_adapt.data.loader import (
    AuxTargets,
    ClipDataset,
    MixtureBatchSampler,
    MixtureDataset,
    StepBatchSampler,
    Stream,
    batch_to_device,
    build_eval_loader,
    build_train_loader,
)
from vjepa_adapt.errors import UserError
from vjepa_adapt.masking import MaskSpec, MultiblockMasker, TokenFlow
from vjepa_adapt.models.heads import MotionAuxHead
from vjepa_adapt.models.vjepa import (
    autocast_context,
    encode_context,
    encode_full,
    export_encoder,
    predict,
    predictor_mask_index,
    teacher_targets,
    token_grid,
)
from vjepa_adapt.progress import MetricsLog, get_logger, progress
from vjepa_adapt.train import checkpoint as ckpt
from vjepa_adapt.train.losses import IGNORE_LABEL, jepa_loss, motion_aux_loss
from vjepa_adapt.train.optim import (
    apply_schedule,
    build_param_groups,
    freeze_module,
    prefix_blocks,
    set_encoder_trainable,
    trainable_summary,
)
from vjepa_adapt.train.regularizers import (
    SPD,
    add_l2_anchor_grad_,
    deviation_norms,
    ema_update,
    relative_drift,
    snapshot,
)
from vjepa_adapt.train.schedules import ema_momentum, staged_warmup_cosine

log = get_logger("train")


class TrainingError(UserError):
    """The run cannot continue (e.g. a non-finite loss); the last good checkpoint is intact."""


@dataclass
class TrainResult:
    steps: int
    best_step: int
    best_score: float
    history: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# The student: everything that receives gradient, behind one forward (DDP wraps this module).


class Student(nn.Module):
    def __init__(self, model: nn.Module, head: MotionAuxHead | None, mode: str):
        super().__init__()
        self.model, self.head = model, head  # model: the full VJEPA2Model (encoder + predictor + config)
        self.mode = mode
        self.mask_index = predictor_mask_index(model.config)  # the token the weights were trained with

    @property
    def encoder(self) -> nn.Module:
        return self.model.encoder

    @property
    def predictor(self) -> nn.Module:
        return self.model.predictor

    def forward(self, video: torch.Tensor, masks: list | None, targets: torch.Tensor | None,
                label: torch.Tensor | None, reg: torch.Tensor | None, aux_weight: float) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.mode == "head_only":
            with torch.no_grad():
                pooled = encode_full(self.encoder, video).mean(dim=1)  # (B, D) frozen features
        else:
            preds, tgts, pooled_parts = [], [], []
            for m in masks:  # one pass per mask generator, as in V-JEPA
                ctx = encode_context(self.encoder, video, m.context_ids)  # (B, Nc, D)
                preds.append(predict(self.predictor, ctx, m.context_ids, m.target_ids, mask_index=self.mask_index))
                tgts.append(_gather(targets, m.target_ids))  # (B, Nt, D)
                pooled_parts.append(ctx.mean(dim=1))
            out["jepa"] = jepa_loss(preds, tgts)
            out["pred_std"] = torch.stack([p.float().std(dim=1).mean() for p in preds]).mean().detach()
            pooled = torch.stack(pooled_parts).mean(dim=0)  # (B, D) mean-pooled student tokens
        if self.head is not None and label is not None and aux_weight > 0:
            logits, reg_pred, _ = self.head(pooled.float())
            out["aux"], parts = motion_aux_loss(logits, label, reg_pred, reg, weight=aux_weight)
            out["aux_ce"], out["aux_mse"] = parts["ce"], parts["mse"]
            out["aux_acc"] = _accuracy(logits, label)
        loss = out.get("jepa", torch.zeros((), device=video.device)) + out.get("aux", 0.0)
        out["loss"] = loss
        return out


def _forward(module: nn.Module, teacher: nn.Module | None, batch: dict[str, Any], aux_weight: float,
             dev: torch.device, dtype: str) -> tuple[dict[str, Any], torch.Tensor | None, dict[str, torch.Tensor]]:
    """Move the batch to the device whole, make the teacher's targets, run the student."""
    b = batch_to_device(batch, dev)
    with autocast_context(dev.type, dtype):
        targets = teacher_targets(teacher, b["video"]) if teacher is not None else None  # (B, N, D)
        out = module(b["video"], b.get("masks"), targets, b.get("label"), b.get("reg"), aux_weight)
    return b, targets, out


def _gather(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return torch.gather(tokens, 1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))  # (B, N, D)


def _accuracy(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    ok = label >= 0
    if not bool(ok.any()):
        return torch.tensor(float("nan"))
    return (logits.argmax(-1)[ok] == label[ok]).float().mean().detach()


# --------------------------------------------------------------------------------------------
# Which parameters train: a function of the mode and the current stage.


def stages_of(tcfg: TrainConfig) -> list[Stage]:
    """The run's stages; without ``train.stages``, one stage of all steps (warmup ``train.warmup_steps``)."""
    return tcfg.stages or [Stage(name="all", steps=tcfg.steps, warmup_steps=tcfg.warmup_steps)]


def stage_at(step: int, tcfg: TrainConfig) -> Stage:
    stages = stages_of(tcfg)
    end = 0
    for s in stages:
        end += s.steps
        if step < end:
            return s
    return stages[-1]


def stage_ends(tcfg: TrainConfig) -> list[int]:
    """The step count at which each stage is done (its last step + 1)."""
    return list(itertools.accumulate(s.steps for s in stages_of(tcfg)))


def stage_lr(step: int, tcfg: TrainConfig) -> float:
    """The lr of ``step``: warmup then cosine to ``final_lr`` within each stage (re-warmed at its start)."""
    plan = [(s.steps, min(tcfg.warmup_steps, s.steps) if s.warmup_steps is None else s.warmup_steps)
            for s in stages_of(tcfg)]
    return staged_warmup_cosine(step, plan, tcfg.lr, final=tcfg.final_lr)


def set_stage_trainable(student: Student, tcfg: TrainConfig, stage: Stage) -> None:
    """requires_grad per the mode/stage. Optimizer groups already hold every parameter."""
    if tcfg.mode == "head_only":
        # norms too: the head-only arm must not move the encoder or predictor at all
        freeze_module(student.encoder)
        freeze_module(student.predictor)
        return
    if tcfg.stages:  # progressive prefix unfreezing: the first ceil(fraction × depth) blocks train
        prefix = prefix_blocks(stage.unfreeze_fraction, len(student.encoder.layer))
        set_encoder_trainable(student.encoder, train_below=prefix, keep_norms_trainable=False)
    else:  # optional freezing below a block; norms stay trainable (SPEC Ch 10 step 8)
        set_encoder_trainable(student.encoder, freeze_below=tcfg.freeze_below or None)
    for p in student.predictor.parameters():
        p.requires_grad_(True)


def describe_stage(student: Student, tcfg: TrainConfig, stage: Stage, step: int) -> str:
    """The stage's log line: its steps, what trains (read back from requires_grad), its data."""
    i = stages_of(tcfg).index(stage)
    end = stage_ends(tcfg)[i]
    parts = [trainable_summary(student.encoder)]
    for name, module in (("predictor", student.predictor), ("head", student.head)):
        if module is not None:
            parts.append(f"{name} {'trains' if any(p.requires_grad for p in module.parameters()) else 'frozen'}")
    mix = ", ".join(f"{k} {v:.0%}" for k, v in stage.mixture.items() if v > 0)
    n = sum(p.numel() for p in student.parameters() if p.requires_grad)
    return (f"step {step}: stage {stage.name!r} ({i + 1}/{len(stages_of(tcfg))}, steps {step}-{end - 1}): "
            f"{'; '.join(parts)}; data {mix}; {n:,} trainable parameters")


# --------------------------------------------------------------------------------------------
# Ranks agree on data: which micro-batches run, and with what loss weight.


def micro_batch_weights(have: list[bool], ranks_with_data: list[int], world_size: int) -> list[float | None]:
    """This rank's loss weight for each micro-batch of a step.

    ``have[i]``: this rank read at least one clip of micro-batch i; ``ranks_with_data[i]``: how many
    ranks did (all-reduced). None = no rank did: every rank skips it. 0 = others did, this rank did
    not: it runs a zero-weighted stand-in so its backward joins the same gradient all-reduce.
    Otherwise world / ranks_with_data, so DDP's mean over all ranks is the mean over the ranks with
    data (1.0 exactly when every rank has data, and in one process).
    """
    out: list[float | None] = []
    for mine, n in zip(have, ranks_with_data):
        out.append(None if n == 0 else (world_size / n if mine else 0.0))
    return out


def _stand_in(data: DataConfig, masker: MultiblockMasker | None, aux: AuxTargets | None, step: int,
              flow: TokenFlow | None = None) -> dict[str, Any]:
    """A one-clip batch of zeros (label ignored) for a rank with nothing readable; its loss is weighted 0."""
    batch: dict[str, Any] = {"video": torch.zeros(1, data.num_frames, 3, data.size, data.size)}
    if masker is not None:  # (MGMAE: the zero clip does not move)
        batch["masks"] = masker(1, step, flow_tokens=torch.zeros(1, *flow.grid, 2)) if flow else masker(1, step)
    if aux is not None:
        dims = len(next(iter(aux.reg.values())))
        batch["label"], batch["reg"] = torch.full((1,), IGNORE_LABEL), torch.zeros(1, dims)
    return batch


# --------------------------------------------------------------------------------------------


def train(
    *,
    tcfg: TrainConfig,
    data: DataConfig,
    masking: MaskingConfig,
    model: nn.Module,
    head: MotionAuxHead | None,
    train_clips: list[Clip],
    val_clips: list[Clip],
    aux: AuxTargets | None,
    out_dir: str | Path,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "fp32",
    num_workers: int = 0,
    streams: dict[str, Stream] | None = None,
) -> TrainResult:
    """Train one arm: ``model`` (+ ``head``) per ``tcfg`` on ``train_clips``; checkpoints and exports go to ``out_dir``.

    ``tcfg`` is the arm's resolved config: ``tcfg.l2_lambda`` (its one ``l2_anchor`` value) is λ of the
    L2 anchor to the initial encoder weights, ``tcfg.spd`` λ of selective projection decay (0 = off).
    ``seed`` (``run.seed``) keys the data stream and the masks. The predictor mask token is the one
    ``model.config`` records (see ``models.vjepa.predictor_mask_index``).
    ``streams``: the factor streams (``layout``, ``agent``, ``interaction``) that ``tcfg.stages``
    mixtures name; the raw stream is ``train_clips`` with ``aux``. Validation stays on raw
    ``val_clips`` (the yardstick is how the encoder sees raw clips).
    Exports ``out_dir/best`` (best val score) and ``out_dir/final``: ``encoder/`` (HF format) and
    ``head.safetensors``.
    """
    out_dir = Path(out_dir)
    d = dist.info()
    dev = torch.device(device)
    l2_lambda = tcfg.l2_lambda  # raises on a sweep: one arm per call
    if d.enabled and not dist.initialized():
        raise TrainingError(f"WORLD_SIZE={d.world_size} but no process group: call vjepa_adapt.dist.init() first "
                            "(the vjepa-adapt command does under torchrun)")
    all_streams = {"raw": Stream(list(train_clips), aux), **(streams or {})}
    mixed = any(s.mixture != {"raw": 1.0} for s in stages_of(tcfg))  # else: the one raw stream, as always
    for s in stages_of(tcfg):
        for name, share in s.mixture.items():
            if share > 0 and not all_streams.get(name, Stream([])).clips:
                raise UserError(f"train.stages[{s.name}]: stream {name!r} has {share:.0%} of the mixture but no "
                                "clips (factor streams come from the factorize stage)")
    if mixed and any((st.aux is None) != (aux is None) for st in all_streams.values()):
        raise UserError("every data stream needs motion_aux targets, or none does")

    # -- set up: student, teacher, head, anchors θ₀, optimizer over ALL parameters ---------------
    model = model.to(dev)
    student = Student(model, head, tcfg.mode).to(dev)
    teacher = None
    if tcfg.mode == "jepa":
        teacher = copy.deepcopy(model.encoder).to(dev).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    enc_params = list(model.encoder.parameters())
    anchor_file = out_dir / "anchor.pt"
    if anchor_file.exists():  # θ₀ of this run, written once before step 0 (resume must not re-snapshot)
        anchors = [t.to(dev) for t in storage.load_torch(anchor_file)["anchors"]]
    else:
        anchors = snapshot(enc_params)
        if d.is_main and tcfg.mode == "jepa":  # head-only never moves the encoder: nothing to anchor
            storage.save_torch(anchor_file, {"anchors": [a.cpu() for a in anchors]})
    rules = [("head.", tcfg.aux_lr_mult, 0.0)]  # the motion_aux head: own lr multiplier, no weight decay
    groups = build_param_groups(list(student.named_parameters()), base_lr=tcfg.lr, weight_decay=tcfg.weight_decay,
                                rules=rules)
    opt = torch.optim.AdamW(groups, lr=tcfg.lr, betas=tcfg.betas, weight_decay=tcfg.weight_decay)
    spd = SPD(enc_params, anchors, tcfg.spd) if tcfg.spd > 0 else None
    micro = tcfg.batch_size

    # -- resume ------------------------------------------------------------------------------
    step, best_step, best_score = 0, -1, -math.inf
    history: list[dict[str, Any]] = []
    if d.is_main:
        storage.remove_stale_temps(out_dir / "checkpoints")  # torn writes of a killed run
    found = ckpt.find_resume(out_dir / "checkpoints", tcfg.resume)
    if found is not None:
        state = ckpt.load_checkpoint(found)
        _check_same_run(state, tcfg, found)
        _check_data_position(state, micro * tcfg.grad_accum, d.world_size, found)
        student.load_state_dict(state["student"])
        if teacher is not None:
            teacher.load_state_dict(state["teacher"])
        opt.load_state_dict(state["optimizer"])
        ckpt.restore_rng(state["rng"])
        step, best_step, best_score = state["step"], state["best"]["step"], state["best"]["score"]
        history = list(state.get("history", []))
        log.info(f"resumed from {found} at step {step}")

    # -- data: step → batch (stream mixture per stage; masks, MGMAE flow in the collate) ---------
    grid = token_grid(model.config, data.num_frames)
    masker, flow = None, None
    if tcfg.mode == "jepa":
        specs = tuple(MaskSpec(g.num_blocks, g.spatial_scale, tuple(g.aspect_ratio)) for g in masking.generators)
        masker = MultiblockMasker(grid=grid, specs=specs, seed=seed * 1009 + d.rank)  # each rank its own masks
        if masking.kind == "motion_guided":  # MGMAE: each sample's flow, made in the decode worker
            flow = TokenFlow(grid, model.config.tubelet_size, masking.flow_backend, masking.flow_max_side)

    def clip_set(st: Stream, train: bool) -> ClipDataset:
        return ClipDataset(st.clips, num_frames=data.num_frames, size=data.size, seed=seed, train=train,
                           flip_prob=data.flip_prob, crop_scale=data.crop_scale, crop_ratio=data.crop_ratio,
                           aux=st.aux, fps_stride=data.fps_stride, read=st.read, flow=flow)

    start, total = step * tcfg.grad_accum, tcfg.steps * tcfg.grad_accum  # sampler steps are micro-batches
    if mixed:
        names = sorted({n for s in stages_of(tcfg) for n, share in s.mixture.items() if share > 0})
        train_set = MixtureDataset({n: clip_set(all_streams[n], train=True) for n in names}, seed=seed)
        sampler = MixtureBatchSampler({n: len(train_set.streams[n]) for n in names},
                                      [(s.steps * tcfg.grad_accum, s.mixture) for s in stages_of(tcfg)], micro, seed,
                                      start_step=start, total_steps=total, rank=d.rank, world_size=d.world_size)
    else:
        train_set = clip_set(all_streams["raw"], train=True)
        sampler = StepBatchSampler(len(train_set), micro, seed, start_step=start, total_steps=total, rank=d.rank,
                                   world_size=d.world_size)
    batches = iter(build_train_loader(train_set, sampler, masker, num_workers))
    val_set = clip_set(Stream(list(val_clips), aux), train=False)
    probe_set = ClipDataset(train_clips[:256], num_frames=data.num_frames, size=data.size, seed=seed, train=False,
                            aux=aux)
    skipped: list[tuple[str, str]] = []
    # The head gets no gradient in a run without aux targets: DDP must not wait for it.
    head_unused = head is not None and (aux is None or tcfg.motion_aux_weight <= 0)

    # only rank 0 writes; rows of steps after the resumed one (a crash after its checkpoint) are dropped
    metrics = MetricsLog(out_dir, enabled=d.is_main, start_step=step)
    current_stage: Stage | None = None
    ends = stage_ends(tcfg)
    wrapped: nn.Module = student
    t_data = t_step = 0.0
    for step in progress(range(step, tcfg.steps), desc=f"train[{out_dir.name}]", total=tcfg.steps - step):
        # -- stage: what trains now (progressive unfreezing is data, see train.stages) --------
        stage = stage_at(step, tcfg)
        if stage != current_stage:  # (stage names are unique: equal stages are the same stage)
            set_stage_trainable(student, tcfg, stage)
            # DDP fixes its parameter set: re-wrap per stage (every rank takes this branch at the same step)
            wrapped = dist.wrap_ddp(student, dev, find_unused_parameters=head_unused)
            current_stage = stage
            log.info(describe_stage(student, tcfg, stage, step))

        # -- schedules: functions of step (the lr re-warms at every stage start) -------------------
        lr = stage_lr(step, tcfg)
        apply_schedule(opt, lr=lr, wd=tcfg.weight_decay)
        tau = ema_momentum(step, tcfg.steps, *tcfg.ema_momentum)

        # -- the step's micro-batches; the ranks agree which run and with what weight --------------
        t0 = time.perf_counter()
        micro_batches = [next(batches) for _ in range(tcfg.grad_accum)]
        t_data += time.perf_counter() - t0
        for batch in micro_batches:
            skipped.extend(batch["skipped"])
        have = [batch["video"] is not None for batch in micro_batches]
        ranks_with_data = dist.all_reduce_sum(torch.tensor(have, dtype=torch.int64, device=dev)).tolist()
        weights = micro_batch_weights(have, ranks_with_data, d.world_size)
        runs = [i for i, w in enumerate(weights) if w is not None]

        # -- forward / backward; DDP all-reduces gradients on the last micro-batch only ------------
        opt.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        outs: list[dict[str, torch.Tensor]] = []  # this rank's real micro-batches (not the stand-ins)
        for i in runs:
            batch, weight = micro_batches[i], weights[i]
            if weight == 0.0:
                batch = _stand_in(data, masker, aux, step * tcfg.grad_accum + i, flow)
            with dist.no_sync(wrapped) if i != runs[-1] else contextlib.nullcontext():
                _, _, out = _forward(wrapped, teacher, batch, tcfg.motion_aux_weight, dev, dtype)
                loss = out["loss"] if weight == 1.0 else out["loss"] * weight
                (loss / len(runs)).backward()  # a NaN loss still joins the all-reduce; checked below
            if weight != 0.0:  # the stand-in is not logged
                outs.append(out)
        # Every rank stops together: one raising alone would leave the others waiting in a collective.
        # One host sync here (not one per micro-batch): the count stays on the device until then.
        n_bad = torch.zeros(1, dtype=torch.int64, device=dev)
        for out in outs:
            n_bad += (~torch.isfinite(out["loss"].detach())).to(torch.int64)
        if int(dist.all_reduce_sum(n_bad).item()):
            mine = [o for o in outs if not bool(torch.isfinite(o["loss"]))]
            where = _fmt(_to_floats(mine[0])) if mine else "on another rank"
            raise TrainingError(
                f"non-finite loss at step {step} ({where}); stopped. The last good checkpoint in "
                f"{out_dir / 'checkpoints'} is intact: lower train.lr or check the input clips, then resume."
            )

        # -- optimizer step, regularisers, EMA teacher (not when no rank had a readable clip) ------
        row: dict[str, Any] = {"step": step + 1, "stage": stage.name, "lr": lr, "tau": tau}
        sums: dict[str, torch.Tensor] = {}  # float64 sums give exactly the floats of per-value float() calls
        for out in outs:
            for k, v in out.items():
                v = v.detach().to(dev, torch.float64) / tcfg.grad_accum
                sums[k] = sums[k] + v if k in sums else v
        if runs:
            if l2_lambda > 0:  # λ·Σ‖θ−θ₀‖²: its gradient 2λ(θ−θ₀) is added straight into .grad
                live = [(p, a) for p, a in zip(enc_params, anchors) if p.requires_grad]
                sums["l2"] = add_l2_anchor_grad_([p for p, _ in live], [a for _, a in live], l2_lambda)
            grad_norm = torch.nn.utils.clip_grad_norm_([p for p in student.parameters() if p.requires_grad],
                                                       tcfg.grad_clip)
            if spd is not None:
                spd.before_step()
            opt.step()
            if spd is not None:
                spd.after_step()
            if teacher is not None and tcfg.teacher == "ema":
                ema_update(list(teacher.parameters()), enc_params, tau)
            logged = _to_floats({"grad_norm": grad_norm, **sums})
            if 0 < len(outs) < tcfg.grad_accum:  # the mean over the micro-batches this rank really ran
                logged = {k: v if k in ("grad_norm", "l2") else v * tcfg.grad_accum / len(outs)
                          for k, v in logged.items()}
            row.update(logged)
        else:
            row["no_data"] = True
            log.warning(f"step {step + 1}: no readable clip on any rank; optimizer and EMA teacher not stepped")
        t_step += time.perf_counter() - t0

        # -- log, eval, checkpoint (cadence: functions of step) ------------------------------------
        done = step + 1
        row.update(data_wait_s=t_data, compute_s=t_step)
        if tcfg.stages and done in ends:  # a stage's end: how far each block moved (0 above the prefix)
            row["drift_blocks"] = _per_block_drift(student.encoder, anchors)
        if done % tcfg.eval_every == 0 or done == tcfg.steps:
            ev = evaluate(student, teacher, val_set, probe_set, masker, tcfg, anchors, dev, dtype)
            row.update(ev)
            score = ev["val_score"]
            if score > best_score:
                best_score, best_step = score, done
                if d.is_main:
                    _export(out_dir / "best", student, teacher, tcfg)
            log.info(f"step {done}: {_fmt(row)}")
        elif done % max(tcfg.steps // 10, 1) == 0:  # a heartbeat where no progress bar is shown (CI, logs)
            loss_s = f"{row['loss']:.4f}" if "loss" in row else "n/a (no readable clip on this rank)"
            log.info(f"step {done}/{tcfg.steps}: loss={loss_s} lr={lr:.3g} "
                     f"data-wait {t_data / max(t_data + t_step, 1e-9):.0%}")
        history.append(row)
        metrics.write(row)
        if d.is_main and (done % tcfg.checkpoint_every == 0 or done == tcfg.steps):
            ckpt.save_checkpoint(out_dir / "checkpoints", done, {
                "student": student.state_dict(),
                "teacher": teacher.state_dict() if teacher is not None else None,
                "optimizer": opt.state_dict(),
                "rng": ckpt.capture_rng(),
                "data": {"sampler_position": _data_position(done, micro * tcfg.grad_accum, d.world_size),
                         "world_size": d.world_size},
                "best": {"step": best_step, "score": best_score},
                "history": history,
                "config": tcfg.model_dump(mode="json"),
            }, keep_last=tcfg.keep_last)
        dist.barrier()
    metrics.close()
    if d.is_main:
        _export(out_dir / "final", student, teacher, tcfg)
    return TrainResult(steps=tcfg.steps, best_step=best_step, best_score=best_score, history=history,
                       skipped=skipped)


def _to_floats(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """0-d tensors to Python floats with one host sync (float64 keeps the exact values of float())."""
    if not values:
        return {}
    first = next(iter(values.values())).device
    flat = torch.stack([v.detach().reshape(()).to(first, torch.float64) for v in values.values()]).tolist()
    return dict(zip(values, flat))


def _data_position(step: int, clips_per_rank_step: int, world_size: int) -> int:
    """Clips of the global sample stream consumed after ``step`` steps (all ranks together)."""
    return step * clips_per_rank_step * world_size


def _check_data_position(state: dict[str, Any], clips_per_rank_step: int, world_size: int, path: Path) -> None:
    """The data stream resumes where the checkpoint left it: the same position for the same step.

    Batch size and accumulation are part of the config (checked above); what else moves the
    position is the number of ranks, so a mismatch names it."""
    data = state.get("data", {})
    if "sampler_position" not in data:
        return  # written before positions were recorded
    want = _data_position(state["step"], clips_per_rank_step, world_size)
    if data["sampler_position"] != want:
        then = data.get("world_size", "another number of")
        raise TrainingError(
            f"{path}: the checkpoint's data stream is at clip {data['sampler_position']} after step {state['step']} "
            f"(written with {then} ranks), but with {world_size} rank(s) this run would be at clip {want}: "
            "resume with the same number of ranks, or start fresh with train.resume=none")


def _check_same_run(state: dict[str, Any], tcfg: TrainConfig, path: Path) -> None:
    """Resuming continues the same run: a checkpoint written under other settings (λ included) is refused."""
    now = {**tcfg.model_dump(mode="json"), "resume": None}
    then = {**state.get("config", {}), "resume": None}
    diff = sorted(k for k in now.keys() | then.keys() if now.get(k) != then.get(k))
    if diff:
        raise TrainingError(f"{path} was written with different settings ({', '.join(diff)}); resume it with the "
                            "same config, or start fresh with train.resume=none or another --out")


def _fmt(row: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                    if not k.endswith("_s") and k not in ("drift_blocks",))


def exported_encoder(student: Student, teacher: nn.Module | None, tcfg: TrainConfig) -> nn.Module:
    """The adapted encoder: the EMA teacher when it tracks the student (as V-JEPA evaluates its
    target encoder); the student when the teacher is frozen (SALT) or absent (head-only)."""
    return teacher if (teacher is not None and tcfg.teacher == "ema") else student.encoder


def _export(folder: Path, student: Student, teacher: nn.Module | None, tcfg: TrainConfig) -> None:
    enc = exported_encoder(student, teacher, tcfg)
    export_encoder(student.model, folder / "encoder", encoder_state=enc.state_dict())
    if student.head is not None:
        from safetensors.torch import save as st_save

        storage.write_bytes(folder / "head.safetensors",
                            st_save({k: v.contiguous().cpu() for k, v in student.head.state_dict().items()}))


# --------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(student: Student, teacher: nn.Module | None, val_set: ClipDataset, probe_set: ClipDataset,
             masker: MultiblockMasker | None, tcfg: TrainConfig, anchors: list[torch.Tensor], dev: torch.device,
             dtype: str) -> dict[str, Any]:
    """Val JEPA and motion_aux losses, a nearest-centroid probe on val, collapse and drift monitors."""
    student.eval()
    enc = exported_encoder(student, teacher, tcfg)
    sums: dict[str, float] = {}
    n = 0
    val_feats, val_labels = [], []
    for batch in build_eval_loader(val_set, tcfg.batch_size, masker):
        if batch["video"] is None:
            continue
        moved, targets, out = _forward(student, teacher, batch, tcfg.motion_aux_weight or 1.0, dev, dtype)
        video = moved["video"]
        with autocast_context(dev.type, dtype):
            feats = encode_full(enc, video).mean(dim=1).float()  # (B, D)
        b = video.shape[0]
        n += b
        for k in ("jepa", "aux", "aux_ce", "aux_mse", "pred_std"):
            if k in out:
                sums[k] = sums.get(k, 0.0) + float(out[k]) * b
        if targets is not None:
            sums["target_std"] = sums.get("target_std", 0.0) + float(targets.float().std(dim=1).mean()) * b
        val_feats.append(feats.cpu())
        val_labels.append(batch["label"] if "label" in batch else torch.full((b,), -1))
    res: dict[str, Any] = {f"val_{k}": v / max(n, 1) for k, v in sums.items()}
    res["val_centroid_acc"] = _centroid_probe(enc, probe_set, val_feats, val_labels, dev, dtype, tcfg)
    drift = relative_drift(list(student.encoder.parameters()), anchors)
    # NaN entries are tensors with ‖θ₀‖ = 0 (zero-initialised biases): no relative drift defined.
    res["drift_mean"] = float(np.nanmean(drift)) if drift else 0.0
    res["drift_blocks"] = _per_block_drift(student.encoder, anchors)
    # Best checkpoint: by the cheap probe when labels exist; the head-only arm by val motion_aux loss.
    if tcfg.mode == "head_only":
        res["val_score"] = -res.get("val_aux", math.inf)
    else:
        acc = res["val_centroid_acc"]
        res["val_score"] = acc if not math.isnan(acc) else -res.get("val_jepa", math.inf)
    student.train()
    return res


def _centroid_probe(enc: nn.Module, probe_set: ClipDataset, val_feats: list[torch.Tensor],
                    val_labels: list[torch.Tensor], dev: torch.device, dtype: str, tcfg: TrainConfig) -> float:
    """Nearest class centroid (cosine) fitted on a train sample, scored on val. NaN without labels."""
    vx, vy = torch.cat(val_feats), torch.cat(val_labels)
    if probe_set.aux is None or not bool((vy >= 0).any()):
        return float("nan")
    xs, ys = [], []
    for batch in build_eval_loader(probe_set, tcfg.batch_size):
        if batch["video"] is not None:
            with autocast_context(dev.type, dtype):
                xs.append(encode_full(enc, batch_to_device(batch, dev)["video"]).mean(dim=1).float().cpu())
            ys.append(batch["label"])
    tx, ty = torch.cat(xs), torch.cat(ys)
    mu = tx[ty >= 0].mean(0, keepdim=True)  # centre with train statistics only
    tx, vx = F.normalize(tx - mu, dim=-1), F.normalize(vx - mu, dim=-1)
    classes = sorted(int(c) for c in ty.unique() if c >= 0)
    cents = torch.stack([F.normalize(tx[ty == c].mean(0), dim=0) for c in classes])  # (K, D)
    pred = torch.tensor(classes)[(vx @ cents.T).argmax(-1)]
    ok = vy >= 0
    return float((pred[ok] == vy[ok]).float().mean())


def _per_block_drift(encoder: nn.Module, anchors: list[torch.Tensor]) -> list[float]:
    """‖θ−θ₀‖/‖θ₀‖ of each encoder block as a whole (its tensors pooled)."""
    names = [n for n, _ in encoder.named_parameters()]
    dev2 = deviation_norms(list(encoder.parameters()), anchors).pow(2).tolist()  # per tensor
    ref2 = [float(a.float().norm()) ** 2 for a in anchors]  # ‖θ₀‖² per tensor
    out = []
    for i in range(len(encoder.layer)):
        idx = [j for j, n in enumerate(names) if n.startswith(f"layer.{i}.")]
        out.append(math.sqrt(sum(dev2[j] for j in idx)) / max(math.sqrt(sum(ref2[j] for j in idx)), 1e-12))
    return out
