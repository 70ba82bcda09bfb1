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

Several ranks (torchrun): DDP by default; ``train.parallel=fsdp`` fully shards the encoder and
predictor blocks, the teacher's too (FSDP2, ``dist.shard_fsdp``), once before the optimizer is
built, and a stage change only flips ``requires_grad``. Every rank runs every micro-batch's
forward/backward, so the gradient collectives always match. A rank whose micro-batch has no
readable clip runs a zero-weighted stand-in; a micro-batch no rank can read is skipped by all, and
a step with no data anywhere steps neither the optimizer nor the EMA teacher (see
``plan.micro_batch_weights``). ``train.global_batch_size`` keeps the clips per optimizer step on any
number of ranks (``plan.micro_batching``): a step's samples, augmentation and masks are
functions of (seed, step, slot in the global batch), so 2 ranks and 1 rank with the same global
batch train alike, and a checkpoint of one resumes on the other. Checkpoints and exports are full
(unsharded) state dicts, gathered from the shards and written by rank 0: one format for one
process, DDP and FSDP, on any number of ranks.

Host syncs: the step never reads a value back from the device. Its logged values (and the
non-finite guard's flags) stay on the device until the next cadence point (``train.log_every``,
and every heartbeat, eval, checkpoint and stage end), where one read settles all of them (``train/settle.py``). A
non-finite loss is then found up to ``log_every`` steps late — and still before anything is
evaluated, exported or checkpointed, so the last good checkpoint stays intact.
"""

from __future__ import annotations

import contextlib
import copy
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
    FrameReader,
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
from vjepa_adapt.train.losses import (
    IGNORE_LABEL,
    check_labels,
    jepa_loss,
    motion_aux_loss,
)
from vjepa_adapt.train.optim import (
    apply_schedule,
    build_param_groups,
    freeze_module,
    prefix_blocks,
    set_encoder_trainable,
    trainable_summary,
)
from vjepa_adapt.train.plan import (
    micro_batch_weights,
    micro_batching,
    stage_at,
    stage_ends,
    stage_lr,
    stages_of,
)
from vjepa_adapt.train.regularizers import (
    SPD,
    add_l2_anchor_grad_,
    deviation_norms,
    ema_update,
    relative_drift,
    snapshot,
    tensor_norms,
)
from vjepa_adapt.train.schedules import ema_momentum
from vjepa_adapt.train.settle import (
    Pending,
    TrainingError,
    fmt_row,
    non_finite,
    settle_rows,
)

log = get_logger("train")


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
    def __init__(self, model: nn.Module, head: MotionAuxHead | None, mode: str, aux_input: str = "context"):
        super().__init__()
        self.model, self.head = model, head  # model: the full VJEPA2Model (encoder + predictor + config)
        self.mode, self.aux_input = mode, aux_input
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
            if self.mode != "head_only" and self.aux_input == "clip":  # the whole clip (one more forward)
                pooled = encode_full(self.encoder, video).mean(dim=1)  # (B, D)
            logits, reg_pred, _ = self.head(pooled.float())
            out["aux"], parts = motion_aux_loss(logits, label, reg_pred, reg, weight=aux_weight)
            out["aux_ce"], out["aux_mse"] = parts["ce"], parts["mse"]
            out["aux_acc"] = _accuracy(logits, label)
        loss = out.get("jepa", torch.zeros((), device=video.device)) + out.get("aux", 0.0)
        out["loss"] = loss
        return out


class TeacherTargets(nn.Module):
    """The teacher's JEPA targets behind one forward (FSDP's root for a sharded teacher). (B, N, D)"""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return teacher_targets(self.encoder, video)


def _forward(module: nn.Module, targets_of: nn.Module | None, batch: dict[str, Any], aux_weight: float,
             dev: torch.device, dtype: str) -> tuple[dict[str, Any], torch.Tensor | None, dict[str, torch.Tensor]]:
    """Move the batch to the device whole, make the teacher's targets, run the student."""
    b = batch_to_device(batch, dev)
    with autocast_context(dev.type, dtype):
        targets = targets_of(b["video"]) if targets_of is not None else None  # (B, N, D)
        out = module(b["video"], b.get("masks"), targets, b.get("label"), b.get("reg"), aux_weight)
    return b, targets, out


def _gather(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return torch.gather(tokens, 1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))  # (B, N, D)


def _accuracy(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Top-1 over the labelled clips (NaN without any), on the device: no host sync."""
    ok = label >= 0
    return (((logits.argmax(-1) == label) & ok).sum() / ok.sum()).detach()


# --------------------------------------------------------------------------------------------
# Which parameters train: a function of the mode and the current stage.


def fsdp_units(encoder: nn.Module, predictor: nn.Module | None = None) -> list[nn.Module]:
    """What FSDP shards as units: every encoder and predictor block, and the encoder's embeddings and
    final norm (called directly by ``encode_full``/``encode_context``, outside the root's forward).
    The rest (the predictor's embeddings with its mask tokens, norm and projection, the head) is
    the root's (the Student's)."""
    units = [encoder.embeddings, *encoder.layer, encoder.layernorm]
    return units + (list(predictor.layer) if predictor is not None else [])


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
    read: FrameReader | None = None,
) -> TrainResult:
    """Train one arm: ``model`` (+ ``head``) per ``tcfg`` on ``train_clips``; checkpoints and exports go to ``out_dir``.

    ``tcfg`` is the arm's resolved config: ``tcfg.l2_lambda`` (its one ``l2_anchor`` value) is λ of the
    L2 anchor to the initial encoder weights, ``tcfg.spd`` λ of selective projection decay (0 = off).
    ``seed`` (``run.seed``) keys the data stream and the masks. The predictor mask token is the one
    ``model.config`` records (see ``models.vjepa.predictor_mask_index``).
    ``streams``: the factor streams (``layout``, ``agent``, ``interaction``) that ``tcfg.stages``
    mixtures name; the raw stream is ``train_clips`` with ``aux``. Validation stays on raw
    ``val_clips`` (the yardstick is how the encoder sees raw clips). ``read`` decodes a raw clip
    (train, val and probe clips; None = its file), e.g. the run's decoded-frame cache.
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
    all_streams = {"raw": Stream(list(train_clips), aux, read=read), **(streams or {})}
    mixed = any(s.mixture != {"raw": 1.0} for s in stages_of(tcfg))  # else: the one raw stream, as always
    for s in stages_of(tcfg):
        for name, share in s.mixture.items():
            if share > 0 and not all_streams.get(name, Stream([])).clips:
                raise UserError(f"train.stages[{s.name}]: stream {name!r} has {share:.0%} of the mixture but no "
                                "clips (factor streams come from the factorize stage)")
    if mixed and any((st.aux is None) != (aux is None) for st in all_streams.values()):
        raise UserError("every data stream needs motion_aux targets, or none does")
    if head is not None:  # once here, not in the loss of every step (a device sync each; see losses.py)
        for name, st in all_streams.items():
            if st.aux is not None:
                try:
                    check_labels([*st.aux.labels.values(), *st.aux.label_flipped.values()], head.num_classes)
                except ValueError as e:
                    raise UserError(f"the {name} stream's motion_aux targets: {e}") from None

    # -- set up: student, teacher, head, anchors θ₀, optimizer over ALL parameters ---------------
    micro, accum = micro_batching(tcfg, d.world_size)  # per-rank micro-batch, micro-batches per step
    global_batch = micro * accum * d.world_size
    fsdp = tcfg.parallel == "fsdp" and dist.initialized()
    model = model.to(dev)
    student = Student(model, head, tcfg.mode, tcfg.aux_input).to(dev)
    teacher = None
    if tcfg.mode == "jepa":
        teacher = copy.deepcopy(model.encoder).to(dev).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    targets_of = TeacherTargets(teacher) if teacher is not None else None
    if fsdp:  # once, before anything holds a parameter (optimizer, θ₀, SPD); stages only flip requires_grad
        dist.shard_fsdp(student, fsdp_units(model.encoder, model.predictor))
        if targets_of is not None:
            dist.shard_fsdp(targets_of, fsdp_units(teacher))
    log.info(f"global batch {global_batch} = micro-batch {micro} x {accum} accumulation x {d.world_size} rank(s)"
             + (f"; {'FSDP' if fsdp else 'DDP'}" if d.enabled else "")
             + ("; train.parallel=fsdp in one process: nothing to shard" if tcfg.parallel == "fsdp" and not d.enabled
                else ""))
    enc_params = list(model.encoder.parameters())
    anchor_file = out_dir / "anchor.pt"
    # every rank takes the same branch (under FSDP both are collectives): rank 0's view of the file
    if dist.main_value(anchor_file.exists()):  # θ₀ of this run, written once before step 0 (resume must not re-snapshot)
        loaded = storage.load_torch(anchor_file)["anchors"]
        anchors = [dist.shard_like(t.to(dev), p) for t, p in zip(loaded, enc_params)]
    else:
        anchors = snapshot(enc_params)
        if tcfg.mode == "jepa":  # head-only never moves the encoder: nothing to anchor
            full = dist.gather_full(anchors)
            if d.is_main:
                storage.save_torch(anchor_file, {"anchors": [a.cpu() for a in full]})
    rules = [("head.", tcfg.aux_lr_mult, 0.0)]  # the motion_aux head: own lr multiplier, no weight decay
    groups = build_param_groups(list(student.named_parameters()), base_lr=tcfg.lr, weight_decay=tcfg.weight_decay,
                                rules=rules)
    opt = torch.optim.AdamW(groups, lr=tcfg.lr, betas=tcfg.betas, weight_decay=tcfg.weight_decay)
    spd = SPD(enc_params, anchors, tcfg.spd) if tcfg.spd > 0 else None

    # -- resume (a checkpoint of any number of ranks, DDP or FSDP: full state dicts) ----------------
    step, best_step, best_score = 0, -1, -math.inf
    history: list[dict[str, Any]] = []
    if d.is_main:
        storage.remove_stale_temps(out_dir / "checkpoints")  # torn writes of a killed run
    found = dist.main_value(ckpt.find_resume(out_dir / "checkpoints", tcfg.resume))
    if found is not None:
        state = ckpt.load_checkpoint(found)
        _check_same_run(state, tcfg, found)
        _check_data_position(state, global_batch, d.world_size, found)
        dist.load_full_state(student, state["student"])
        if teacher is not None:
            dist.load_full_state(teacher, state["teacher"])
        dist.load_full_optimizer_state(opt, state["optimizer"])
        ckpt.restore_rng(state["rng"])
        step, best_step, best_score = state["step"], state["best"]["step"], state["best"]["score"]
        history = list(state.get("history", []))
        del state
        log.info(f"resumed from {found} at step {step}")

    # -- data: step → batch (stream mixture per stage; masks, MGMAE flow in the collate) ---------
    grid = token_grid(model.config, data.num_frames)
    masker, flow = None, None
    if tcfg.mode == "jepa":
        specs = tuple(MaskSpec(g.num_blocks, g.spatial_scale, tuple(g.aspect_ratio)) for g in masking.generators)
        # one seed for all ranks: a sample's masks are those of its slot in the step's global batch
        masker = MultiblockMasker(grid=grid, specs=specs, seed=seed * 1009)
        if masking.kind == "motion_guided":  # MGMAE: each sample's flow, made in the decode worker
            flow = TokenFlow(grid, model.config.tubelet_size, masking.flow_backend, masking.flow_max_side)

    def clip_set(st: Stream, train: bool) -> ClipDataset:
        return ClipDataset(st.clips, num_frames=data.num_frames, size=data.size, seed=seed, train=train,
                           flip_prob=data.flip_prob, crop_scale=data.crop_scale, crop_ratio=data.crop_ratio,
                           aux=st.aux, fps_stride=data.fps_stride, read=st.read, flow=flow)

    if mixed:
        names = sorted({n for s in stages_of(tcfg) for n, share in s.mixture.items() if share > 0})
        train_set = MixtureDataset({n: clip_set(all_streams[n], train=True) for n in names}, seed=seed)
        sampler = MixtureBatchSampler({n: len(train_set.streams[n]) for n in names},
                                      [(s.steps, s.mixture) for s in stages_of(tcfg)], micro, seed,
                                      start_step=step, total_steps=tcfg.steps, rank=d.rank, world_size=d.world_size,
                                      grad_accum=accum)
    else:
        train_set = clip_set(all_streams["raw"], train=True)
        sampler = StepBatchSampler(len(train_set), micro, seed, start_step=step, total_steps=tcfg.steps, rank=d.rank,
                                   world_size=d.world_size, grad_accum=accum)
    batches = iter(build_train_loader(train_set, sampler, masker, num_workers, pin_memory=dev.type == "cuda"))
    val_set = clip_set(Stream(list(val_clips), aux, read=read), train=False)
    probe_set = ClipDataset(train_clips[:256], num_frames=data.num_frames, size=data.size, seed=seed, train=False,
                            aux=aux, fps_stride=data.fps_stride, read=read)
    skipped: list[tuple[str, str]] = []
    # The head gets no gradient in a run without aux targets: DDP must not wait for it.
    head_unused = head is not None and (aux is None or tcfg.motion_aux_weight <= 0)

    # only rank 0 writes; rows of steps after the resumed one (a crash after its checkpoint) are dropped
    metrics = MetricsLog(out_dir, enabled=d.is_main, start_step=step)
    pending: list[Pending] = []  # rows whose values are still on the device (see settle_rows)
    current_stage: Stage | None = None
    ends = stage_ends(tcfg)
    wrapped: nn.Module = student
    t_data = t_step = 0.0
    for step in progress(range(step, tcfg.steps), desc=f"train[{out_dir.name}]", total=tcfg.steps - step):
        # -- stage: what trains now (progressive unfreezing is data, see train.stages) --------
        stage = stage_at(step, tcfg)
        if stage != current_stage:  # (stage names are unique: equal stages are the same stage)
            set_stage_trainable(student, tcfg, stage)
            # DDP fixes its parameter set: re-wrap per stage (every rank takes this branch at the same step).
            # FSDP2 reads requires_grad at every backward: the sharded student stays as it is.
            if not fsdp:
                wrapped = dist.wrap_ddp(student, dev, find_unused_parameters=head_unused)
            current_stage = stage
            log.info(describe_stage(student, tcfg, stage, step))

        # -- schedules: functions of step (the lr re-warms at every stage start) -------------------
        lr = stage_lr(step, tcfg)
        apply_schedule(opt, lr=lr, wd=tcfg.weight_decay)
        tau = ema_momentum(step, tcfg.steps, *tcfg.ema_momentum)

        # -- the step's micro-batches; the ranks agree which run and with what weight --------------
        t0 = time.perf_counter()
        micro_batches = [next(batches) for _ in range(accum)]
        t_data += time.perf_counter() - t0
        for batch in micro_batches:
            skipped.extend(batch["skipped"])
        have = [batch["video"] is not None for batch in micro_batches]
        ranks_with_data = dist.sum_over_ranks([int(h) for h in have])  # host to host: no device sync
        weights = micro_batch_weights(have, ranks_with_data, d.world_size)
        runs = [i for i, w in enumerate(weights) if w is not None]

        # -- forward / backward; DDP all-reduces gradients on the last micro-batch only ------------
        opt.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        outs: list[dict[str, torch.Tensor]] = []  # this rank's real micro-batches (not the stand-ins)
        for i in runs:
            batch, weight = micro_batches[i], weights[i]
            if weight == 0.0:
                batch = _stand_in(data, masker, aux, step * accum + i, flow)
            with dist.no_sync(wrapped) if i != runs[-1] else contextlib.nullcontext():
                _, _, out = _forward(wrapped, targets_of, batch, tcfg.motion_aux_weight, dev, dtype)
                loss = out["loss"] if weight == 1.0 else out["loss"] * weight
                (loss / len(runs)).backward()  # a NaN loss still joins the all-reduce; caught at the next settle
            if weight != 0.0:  # the stand-in is not logged
                outs.append(out)

        # -- optimizer step, regularisers, EMA teacher (not when no rank had a readable clip) ------
        row: dict[str, Any] = {"step": step + 1, "stage": stage.name, "lr": lr, "tau": tau}
        values: dict[str, torch.Tensor] = {}  # stays on the device until the next settle
        sums: dict[str, torch.Tensor] = {}  # float64 sums give exactly the floats of per-value float() calls
        for out in outs:
            for k, v in out.items():
                v = v.detach().to(dev, torch.float64) / accum
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
            values = {k: dist.gather_full(v, to_cpu=False) for k, v in {"grad_norm": grad_norm, **sums}.items()}
        else:
            row["no_data"] = True
            log.warning(f"step {step + 1}: no readable clip on any rank; optimizer and EMA teacher not stepped")
        t_step += time.perf_counter() - t0
        done = step + 1
        row.update(dict.fromkeys(values))  # their place in the row; the values come at the next settle
        row.update(data_wait_s=t_data, compute_s=t_step)
        pending.append(Pending(row, values, accum, len(outs), non_finite(outs, values, dev)))
        history.append(row)

        # -- settle, log, eval, checkpoint (cadence: functions of step) ---------------------------
        stage_end = bool(tcfg.stages) and done in ends
        eval_now = done % tcfg.eval_every == 0 or done == tcfg.steps
        heartbeat = done % max(tcfg.steps // 10, 1) == 0
        save_now = done % tcfg.checkpoint_every == 0 or done == tcfg.steps
        if not (eval_now or heartbeat or save_now or stage_end or done % tcfg.log_every == 0):
            continue
        settled = settle_rows(pending, out_dir)  # the one device read; raises on a non-finite step
        pending = []
        if stage_end:  # a stage's end: how far each block moved (0 above the prefix)
            row["drift_blocks"] = _per_block_drift(student.encoder, anchors)
        if eval_now:
            ev = evaluate(student, teacher, targets_of, val_set, probe_set, masker, tcfg, anchors, dev, dtype)
            row.update(ev)
            score = dist.main_value(ev["val_score"])  # every rank takes the same export decision
            if score > best_score:
                best_score, best_step = score, done
                _export(out_dir / "best", student, teacher, tcfg, write=d.is_main)
            log.info(f"step {done}: {fmt_row(row)}")
        elif heartbeat:  # a heartbeat where no progress bar is shown (CI, logs)
            loss_s = f"{row['loss']:.4f}" if "loss" in row else "n/a (no readable clip on this rank)"
            log.info(f"step {done}/{tcfg.steps}: loss={loss_s} lr={lr:.3g} "
                     f"data-wait {t_data / max(t_data + t_step, 1e-9):.0%}")
        for r in settled:
            metrics.write(r)
        if save_now:
            state = {  # full state dicts (gathered from the shards under FSDP: every rank joins)
                "student": dist.gather_full(student.state_dict()) if fsdp else student.state_dict(),
                "teacher": (dist.gather_full(teacher.state_dict()) if fsdp else teacher.state_dict())
                if teacher is not None else None,
                "optimizer": dist.gather_full(opt.state_dict()) if fsdp else opt.state_dict(),
            }
            if d.is_main:
                ckpt.save_checkpoint(out_dir / "checkpoints", done, {
                    **state,
                    "rng": ckpt.capture_rng(),
                    "data": {"sampler_position": _data_position(done, global_batch), "world_size": d.world_size,
                             "global_batch": global_batch},
                    "best": {"step": best_step, "score": best_score},
                    "history": history,
                    "config": tcfg.model_dump(mode="json"),
                }, keep_last=tcfg.keep_last)
            del state
        dist.barrier()
    metrics.close()
    _export(out_dir / "final", student, teacher, tcfg, write=d.is_main)
    return TrainResult(steps=tcfg.steps, best_step=best_step, best_score=best_score, history=history,
                       skipped=skipped)


def _data_position(step: int, global_batch: int) -> int:
    """Clips of the global sample stream consumed after ``step`` steps (all ranks together)."""
    return step * global_batch


def _check_data_position(state: dict[str, Any], global_batch: int, world_size: int, path: Path) -> None:
    """The data stream resumes where the checkpoint left it: the same position for the same step.

    The position is step × global batch, so a checkpoint resumes on any number of ranks that keeps
    the global batch (``train.global_batch_size``); without it the global batch is batch_size ×
    grad_accum × ranks, and another number of ranks would move the stream."""
    data = state.get("data", {})
    if "sampler_position" not in data:
        return  # written before positions were recorded
    want = _data_position(state["step"], global_batch)
    if data["sampler_position"] != want:
        then = data.get("world_size", "another number of")
        raise TrainingError(
            f"{path}: the checkpoint's data stream is at clip {data['sampler_position']} after step {state['step']} "
            f"(written with {then} ranks), but this run's global batch of {global_batch} ({world_size} rank(s)) "
            f"would be at clip {want}: resume with the same number of ranks, or keep the global batch on any "
            "number of ranks with train.global_batch_size, or start fresh with train.resume=none")


def _check_same_run(state: dict[str, Any], tcfg: TrainConfig, path: Path) -> None:
    """Resuming continues the same run: a checkpoint written under other settings (λ included) is
    refused; settings of how the run executes (``TrainConfig.EXECUTION_FIELDS``) may differ."""
    skip = dict.fromkeys(TrainConfig.EXECUTION_FIELDS)
    defaults = TrainConfig().model_dump(mode="json")
    now = {**tcfg.model_dump(mode="json"), **skip}
    then = {**state.get("config", {}), **skip}
    # a field this version added reads as its default in an older checkpoint
    diff = sorted(k for k in now.keys() | then.keys() if now.get(k) != then.get(k, defaults.get(k)))
    if diff:
        raise TrainingError(f"{path} was written with different settings ({', '.join(diff)}); resume it with the "
                            "same config, or start fresh with train.resume=none or another --out")


def exported_encoder(student: Student, teacher: nn.Module | None, tcfg: TrainConfig) -> nn.Module:
    """The adapted encoder: the EMA teacher when it tracks the student (as V-JEPA evaluates its
    target encoder); the student when the teacher is frozen (SALT) or absent (head-only)."""
    return teacher if (teacher is not None and tcfg.teacher == "ema") else student.encoder


def _export(folder: Path, student: Student, teacher: nn.Module | None, tcfg: TrainConfig, write: bool) -> None:
    """``folder/encoder`` (HF format) and ``folder/head.safetensors``, written where ``write`` (rank 0).

    Under FSDP every rank calls it (the full tensors are gathered from the shards) and the model is
    saved from an unsharded copy built on the meta device; otherwise only the writer does any work."""
    sharded = any(dist.is_sharded(v) for v in student.model.state_dict().values())
    if not (write or sharded):
        return
    enc_state = dist.gather_full(exported_encoder(student, teacher, tcfg).state_dict())
    head_state = dist.gather_full(student.head.state_dict()) if student.head is not None else None
    model = student.model
    if sharded:
        full = dist.gather_full(model.state_dict())
        if write:
            with torch.device("meta"):
                model = type(model)(model.config)
            model.load_state_dict(full, assign=True)
    if not write:
        return
    export_encoder(model, folder / "encoder", encoder_state=enc_state)
    if head_state is not None:
        from safetensors.torch import save as st_save

        storage.write_bytes(folder / "head.safetensors",
                            st_save({k: v.contiguous().cpu() for k, v in head_state.items()}))


# --------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(student: Student, teacher: nn.Module | None, targets_of: nn.Module | None, val_set: ClipDataset,
             probe_set: ClipDataset, masker: MultiblockMasker | None, tcfg: TrainConfig, anchors: list[torch.Tensor],
             dev: torch.device, dtype: str) -> dict[str, Any]:
    """Val JEPA and motion_aux losses, a nearest-centroid probe on val, collapse and drift monitors.

    Every rank runs it on the whole val set (under FSDP its forwards are collectives). A head-only arm
    skips the centroid probe: its encoder is the frozen one, the probe's score cannot change."""
    student.eval()
    enc = exported_encoder(student, teacher, tcfg)
    probe = tcfg.mode != "head_only"
    sums: dict[str, float] = {}
    n = 0
    val_feats, val_labels = [], []
    for batch in build_eval_loader(val_set, tcfg.batch_size, masker):
        if batch["video"] is None:
            continue
        moved, targets, out = _forward(student, targets_of, batch, tcfg.motion_aux_weight or 1.0, dev, dtype)
        video = moved["video"]
        b = video.shape[0]
        if probe:
            with autocast_context(dev.type, dtype):
                val_feats.append(encode_full(enc, video).mean(dim=1).float().cpu())  # (B, D)
            val_labels.append(batch["label"] if "label" in batch else torch.full((b,), -1))
        n += b
        for k in ("jepa", "aux", "aux_ce", "aux_mse", "pred_std"):
            if k in out:
                sums[k] = sums.get(k, 0.0) + float(out[k]) * b
        if targets is not None:
            sums["target_std"] = sums.get("target_std", 0.0) + float(targets.float().std(dim=1).mean()) * b
    res: dict[str, Any] = {f"val_{k}": v / max(n, 1) for k, v in sums.items()}
    if probe:
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
    ref2 = [r ** 2 for r in tensor_norms(anchors).tolist()]  # ‖θ₀‖² per tensor
    out = []
    for i in range(len(encoder.layer)):
        idx = [j for j, n in enumerate(names) if n.startswith(f"layer.{i}.")]
        out.append(math.sqrt(sum(dev2[j] for j in idx)) / max(math.sqrt(sum(ref2[j] for j in idx)), 1e-12))
    return out
