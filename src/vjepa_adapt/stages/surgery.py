"""Ch 11b stage adapters: surgery (m09c1) and surgery-head (m09c2), both on the one trainer.

``surgery`` (and each ablation ``surgery_no_<switch>``): RUN/surgery/<arm>/{checkpoints, best, final,
metrics.jsonl}. ``surgery_head``: RUN/surgery_head/{...}. Inputs: the run's clips and motion labels
(the raw stream — CLEAR's replay — and the val clips that pick the best checkpoint), RUN/factorize
(the factor streams D_L / D_A / D_I of the train split, each clip with its own motion target) and the
frozen encoder.

What a surgery arm is, is config: :func:`surgery_train_config` turns ``train.surgery`` (stages and
the five recipe-v3 switches) into the trainer's one ``TrainConfig`` plus the ``MaskingConfig`` it
trains with. Each switch changes exactly one thing there:

=======  ==============================================================================
SALT     ``teacher``: ``frozen`` (the initial weights, no EMA) instead of ``ema``
LP-FT    a first stage ``lpft`` of ``lpft_steps`` with ``unfreeze_fraction=0`` (encoder frozen,
         predictor and head train) on the first stage's data
SPD      ``spd``: ``spd_lambda`` instead of 0 (selective projection decay after each step)
CLEAR    the raw (replay) shares of the stage mixtures; off: each stage's factor streams take
         them over in proportion
MGMAE    ``masking.kind``: ``motion_guided`` instead of ``multiblock``
=======  ==============================================================================
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vjepa_adapt import storage
from vjepa_adapt.config import (
    RECIPE_SWITCHES,
    MaskingConfig,
    PipelineConfig,
    Stage,
    TrainConfig,
)
from vjepa_adapt.errors import ConfigError
from vjepa_adapt.pipeline import StageContext
from vjepa_adapt.progress import get_logger
from vjepa_adapt.stage_result import StageResult
from vjepa_adapt.stages.adapt import fit_arm, head_only_config
from vjepa_adapt.stages.data import frame_reader
from vjepa_adapt.stages.segment import FACTORIZE, SEGMENT

log = get_logger("surgery")

LPFT_STAGE = "lpft"
# train.* fields a surgery arm sets itself or ignores (freeze_below: its stages say what trains), so they
# are not in its cache key; it reads every other train.* field
SET_BY_RECIPE = ("mode", "steps", "stages", "teacher", "spd", "freeze_below")


# ------------------------------------------------------------------------------------ the recipe


def recipe_switches(train: TrainConfig, off: Collection[str] = ()) -> dict[str, bool]:
    """Which recipe-v3 switches are on: the configured recipe with ``off`` turned off."""
    unknown = set(off) - set(RECIPE_SWITCHES)
    if unknown:
        raise ValueError(f"unknown recipe switch(es) {sorted(unknown)}; switches: {', '.join(RECIPE_SWITCHES)}")
    r = train.surgery
    configured = {"salt": r.salt, "lpft": r.lpft, "spd": r.spd, "clear": r.clear, "mgmae": r.mgmae}
    return {k: configured[k] and k not in off for k in RECIPE_SWITCHES}


def _without_replay(stage: Stage) -> Stage:
    """CLEAR off: the stage's raw share goes to its factor streams, in proportion to their shares."""
    factor = {k: v for k, v in stage.mixture.items() if k != "raw" and v > 0}
    if not factor:
        raise ConfigError(f"train.surgery.stages[{stage.name}]: all raw, so CLEAR off (no replay) leaves it no data")
    total = sum(factor.values())
    return stage.model_copy(update={"mixture": {k: v / total for k, v in factor.items()}})


def surgery_stages(train: TrainConfig, switches: dict[str, bool]) -> list[Stage]:
    """The surgery's stages with CLEAR and LP-FT applied."""
    stages = list(train.surgery.stages)
    if not switches["clear"]:
        stages = [_without_replay(s) for s in stages]
    if switches["lpft"]:  # LP-FT: heads first, on the data of the first unfreezing stage
        stages.insert(0, Stage(name=LPFT_STAGE, steps=train.surgery.lpft_steps, unfreeze_fraction=0.0,
                               mixture=dict(stages[0].mixture)))
    return stages


def surgery_train_config(train: TrainConfig, masking: MaskingConfig,
                         off: Collection[str] = ()) -> tuple[TrainConfig, MaskingConfig]:
    """The trainer's config of a surgery arm: ``train`` with the surgery's stages and the switches of
    ``train.surgery`` less ``off`` (see the module doc). Its L2 anchor is ``train.l2_anchor``'s first λ
    (a λ sweep makes several pretrain arms; the surgery is one arm)."""
    on = recipe_switches(train, off)
    stages = surgery_stages(train, on)
    update = {"mode": "jepa", "stages": [s.model_dump() for s in stages], "steps": sum(s.steps for s in stages),
              "teacher": "frozen" if on["salt"] else "ema",
              "spd": train.surgery.spd_lambda if on["spd"] else 0.0,
              "l2_anchor": [train.l2_anchor[0]]}
    try:  # validated (stage steps sum, warmups), not model_copy'd
        tcfg = TrainConfig.model_validate({**train.model_dump(), **update})
    except ValueError as e:
        raise ConfigError(f"train.surgery: {e}") from None
    mask = masking.model_copy(update={"kind": "motion_guided" if on["mgmae"] else "multiblock"})
    return tcfg, mask


def pooled_mixture(stages: list[Stage]) -> dict[str, float]:
    """The step-weighted mean of the stages' mixtures: the data a run through them sees, pooled."""
    total = sum(s.steps for s in stages)
    out: dict[str, float] = {}
    for s in stages:
        for k, v in s.mixture.items():
            out[k] = out.get(k, 0.0) + v * s.steps / total
    return {k: v for k, v in out.items() if v > 0}


def surgery_head_train_config(cfg: PipelineConfig) -> TrainConfig:
    """surgery-head (m09c2): the head-only arm's settings (``arms.head_only_*``, as pretrain-head) on
    the surgery's data, pooled into one stage (the recipe's stages, CLEAR and LP-FT applied)."""
    train = cfg.train.for_arm(cfg.train.l2_anchor[0])
    stages = surgery_stages(train, recipe_switches(train))
    tcfg = head_only_config(cfg, train)
    one = Stage(name="factors", steps=tcfg.steps, unfreeze_fraction=0.0, mixture=pooled_mixture(stages))
    return TrainConfig.model_validate({**tcfg.model_dump(), "stages": [one.model_dump()]})


# ------------------------------------------------------------------------------------ the factor streams


@dataclass
class FactorFrames:
    """Rebuilds a factor clip from its source clip and masks while training (``factors.materialise=false``).

    Picklable (plain data), so decode workers can run it. Returns ``num_frames`` frames spread evenly
    over the factor clip's frames, as the clip loader samples a materialised one.
    """

    segment_dir: str
    params: Any  # factors.FactorParams
    sources: dict[str, Any]  # source clip id -> its Clip
    rows: dict[str, dict[str, Any]]  # factor clip id -> its manifest row

    def __call__(self, clip: Any, num_frames: int) -> np.ndarray:
        from vjepa_adapt.data.video import VideoError, sample_frame_indices
        from vjepa_adapt.factors import build_factor_clip, spec_from_row
        from vjepa_adapt.segmentation.masks import load_clip_masks
        from vjepa_adapt.segmentation.stage import masks_path

        row = self.rows[clip.clip_id]
        try:
            masks = load_clip_masks(masks_path(Path(self.segment_dir), row["source_clip"]))
            frames = build_factor_clip(self.sources[row["source_clip"]], masks, spec_from_row(row), self.params)
        except (OSError, ValueError) as e:  # a missing masks file, frames that no longer match the masks
            raise VideoError("unreadable", f"factor clip {clip.clip_id}: {e}") from None
        if len(frames) < num_frames:
            raise VideoError("too_few_frames", f"factor clip {clip.clip_id}: {len(frames)} frames, {num_frames} needed")
        return frames[sample_frame_indices(len(frames), num_frames)]


def factor_streams(cfg: PipelineConfig, factor_dir: Path, segment_dir: Path, mo: Any, clips: list[Any],
                   read: Any = None) -> dict:
    """The train split's factor clips per stream (``layout``, ``agent``, ``interaction``), each with its
    own motion_aux target: its motion vector (RUN/factorize/motion.npz, first ``motion.aux_dims``)
    z-scored with the train statistics of ITS stream, and its motion class under the motion stage's
    cut points (-1 when it is not one of the K classes); both mirrored for a flipped sample.

    Per stream, not with the raw clips' statistics: a D_I tube is a crop blown up to the frame size, so
    its flow is magnified — measured on the demo world, raw statistics put D_I targets at mean z² 204
    (max |z| 219; D_A 2.5, D_L 1.05) and the motion_aux MSE at 127 against a JEPA loss of 0.37.

    ``read``: how a materialised factor clip is decoded (the run's frame cache; None = its file each
    time it is drawn); streamed factor clips are rebuilt from their source by :class:`FactorFrames`."""
    from vjepa_adapt.data.clips import Clip
    from vjepa_adapt.data.loader import AuxTargets, Stream
    from vjepa_adapt.factors import KINDS, MANIFEST_FILE, MOTION_FILE, FactorParams
    from vjepa_adapt.motion import mirror_class, motion_aux_targets
    from vjepa_adapt.motion.classes import classify_features, mirror_motion_aux_targets

    rows = [r for r in storage.read_jsonl(factor_dir / MANIFEST_FILE) if r.get("split") == "train"]
    with np.load(factor_dir / MOTION_FILE, allow_pickle=False) as z:
        feats = {str(c): z["features"][i].astype(np.float32) for i, c in enumerate(z["clip_ids"])}
    dims = cfg.motion.aux_dims
    ls = mo.label_set
    index = {name: i for i, name in enumerate(ls.classes)}
    f = cfg.factors
    reader = read  # materialised: the factor clips' own files, through the run's frame cache when given
    if rows and not rows[0].get("materialised", True):
        params = FactorParams(num_frames=f.num_frames, max_agent_coverage_layout=f.max_agent_coverage_layout,
                              min_agent_coverage_agent=f.min_agent_coverage_agent, dilate=f.dilate, feather=f.feather,
                              blur_sigma=f.blur_sigma, background_level=f.background_level,
                              tube_margin=f.tube_margin, max_tubes=f.max_tubes)
        reader = FactorFrames(str(segment_dir), params, {c.clip_id: c for c in clips},
                              {r["clip_id"]: r for r in rows})
    out = {}
    for kind in KINDS:
        mine = [r for r in rows if r["kind"] == kind and r["clip_id"] in feats]
        ids = [r["clip_id"] for r in mine]
        z, zf = {}, {}
        if ids:  # every row is a train clip: the stream's own train statistics
            zs, mean, std = motion_aux_targets({c: feats[c] for c in ids}, ids, dims=dims)
            z, zf = dict(zip(ids, zs)), dict(zip(ids, mirror_motion_aux_targets(zs, mean, std)))
        names = {cid: classify_features(feats[cid], ls.cuts, ls.magnitude, ls.direction) for cid in ids}
        aux = AuxTargets(labels={c: index.get(n, -1) for c, n in names.items()}, reg=z, reg_flipped=zf,
                         label_flipped={c: index.get(mirror_class(n), -1) for c, n in names.items()})
        source = {c.clip_id: c for c in clips}
        factor_clips = []
        for r in mine:
            if not isinstance(reader, FactorFrames):  # materialised: the factor clip's own file
                factor_clips.append(Clip(r["clip_id"], str(factor_dir / r["path"]), r["video_id"], meta=r))
            else:  # streamed: rebuilt from its source clip (whose window it keeps)
                src = source.get(r["source_clip"])
                if src is not None:
                    factor_clips.append(Clip(r["clip_id"], src.path, r["video_id"], src.start, src.end, meta=r))
        out[kind] = Stream(factor_clips, aux, read=reader)
    return out


# ------------------------------------------------------------------------------------ requirements and stages


def check_factor_frames(cfg: PipelineConfig) -> None:
    """Requirement of the surgery arms: a factor clip has at least the frames the model samples."""
    if cfg.factors.num_frames < cfg.data.num_frames:
        raise ConfigError(f"factors.num_frames: {cfg.factors.num_frames} < data.num_frames={cfg.data.num_frames}; "
                          "the surgery samples data.num_frames frames from every factor clip")


def _fit_on_factors(ctx: StageContext, tcfg: TrainConfig, masking: MaskingConfig, extra: dict) -> StageResult:
    factor_dir, segment_dir = ctx.path_of(FACTORIZE), ctx.path_of(SEGMENT)
    counts: dict[str, int] = {}

    def make_streams(mo, clips):
        streams = factor_streams(ctx.cfg, factor_dir, segment_dir, mo, clips, read=frame_reader(ctx.cfg, ctx.run_dir))
        counts.update({k: len(s.clips) for k, s in streams.items()})
        log.info("%s: factor streams of the train split: %s", ctx.out_dir.name,
                 ", ".join(f"{k} {n}" for k, n in counts.items()))
        return streams

    res = fit_arm(ctx, tcfg, masking, make_streams=make_streams)
    res.extra.update({"factor_clips": counts, **extra})
    return res


def run_surgery(ctx: StageContext, off: Collection[str] = ()) -> StageResult:
    """One surgery arm: the recipe of ``train.surgery`` with the switches in ``off`` turned off."""
    tcfg, masking = surgery_train_config(ctx.cfg.train, ctx.cfg.masking, off)
    switches = recipe_switches(ctx.cfg.train, off)
    log.info("%s: recipe %s; stages %s", ctx.out_dir.name,
             " ".join(f"{k}={'on' if v else 'off'}" for k, v in switches.items()),
             " -> ".join(f"{s.name}({s.steps})" for s in tcfg.stages))
    return _fit_on_factors(ctx, tcfg, masking, {"recipe": switches,
                                                 "stages": [s.model_dump() for s in tcfg.stages]})


def run_surgery_head(ctx: StageContext) -> StageResult:
    """surgery-head (m09c2): encoder and predictor frozen, the motion_aux head trains on the factor streams."""
    tcfg = surgery_head_train_config(ctx.cfg)
    return _fit_on_factors(ctx, tcfg, ctx.cfg.masking, {"mixture": tcfg.stages[0].mixture})
