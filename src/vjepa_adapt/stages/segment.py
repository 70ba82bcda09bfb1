"""Ch 11a stage adapters: config -> calls of :mod:`vjepa_adapt.segmentation` and :mod:`vjepa_adapt.factors`.

``segment``: RUN/segment/{masks/<clip>.npz, summary.jsonl, overlay.png}, stage.json extra.truth when
the clips carry synthetic ground truth. ``factorize``: RUN/factorize/{manifest.jsonl, motion.npz,
samples_<kind>.png, <kind>/<clip>.mp4 when materialised}. Neither needs V-JEPA weights; the
classical segment backend needs no model at all. Both are clip-parallel (:mod:`vjepa_adapt.engine`):
workers compute chunks of clips into parts (they read the clips, and factorize's read segment's masks
files), this process writes the files from the parts.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Any

from vjepa_adapt.config import PipelineConfig
from vjepa_adapt.errors import UserError
from vjepa_adapt.pipeline import StageContext
from vjepa_adapt.stage_result import StageResult, check_bad_share
from vjepa_adapt.stages.data import clips_source, load_run_clips
from vjepa_adapt.stages.encoders import resolve_device

SEGMENT, FACTORIZE = "segment", "factorize"


def segment_reads() -> list[str]:
    return ["segment", "data.max_bad_fraction", "factors.splits"]


def factorize_reads() -> list[str]:
    # the motion_aux targets of the factor clips use the motion stage's flow settings
    return ["factors", "motion.backend", "motion.num_pairs", "motion.max_side", "data.max_bad_fraction",
            "segment.in_run"]


def processed_splits(cfg: PipelineConfig) -> set[str] | None:
    """The splits whose clips segment and factorize process (``factors.splits``); None = every clip.

    Unset, it is every split when the run executes the stages for their own sake (``segment.in_run``)
    and the train split alone when they run only as the surgery arms' input: those train on train
    factor clips and pick their best checkpoint on raw val clips.
    """
    f = cfg.factors.splits
    if f is not None:
        return set(f)
    return None if cfg.segment.in_run else {"train"}


def _clips_to_process(cfg: PipelineConfig, run_dir: Path) -> tuple[list, dict[str, str]]:
    clips, splits = load_run_clips(run_dir)
    wanted = processed_splits(cfg)
    return ([c for c in clips if splits.get(c.clip_id) in wanted] if wanted is not None else clips), splits


def check_segment_backend(cfg: PipelineConfig) -> None:
    """Requirement of the segment stage: sam3 needs transformers' SAM 3 and its model; classical nothing."""
    s = cfg.segment
    if s.backend != "sam3":
        return
    import importlib.util

    if importlib.util.find_spec("transformers.models.sam3_video") is None:
        raise UserError("segment.backend=sam3 needs transformers >= 5 with SAM 3 (Sam3VideoModel); "
                        "or use segment.backend=classical (CPU, no model)")
    from vjepa_adapt.stages.encoders import check_weights_source

    check_weights_source(s.model or "", field="segment.model")
    resolve_device(cfg)


def _skip_errors() -> tuple[type[BaseException], ...]:
    from vjepa_adapt.motion.stage import default_skip_errors

    return default_skip_errors()


def _truth_base(cfg: PipelineConfig, run_dir: Path) -> Path:
    src = Path(clips_source(cfg, run_dir))
    return src if src.is_dir() else src.parent


def build_segmenter(cfg: PipelineConfig) -> Any:
    s = cfg.segment
    if s.backend == "sam3":
        from vjepa_adapt.segmentation.sam3 import Sam3VideoSegmenter

        return Sam3VideoSegmenter.from_pretrained(s.model, device=resolve_device(cfg), prompts=s.prompts,
                                                  score_threshold=s.score_threshold, nms_iou=s.nms_iou)
    from vjepa_adapt.segmentation.classical import ClassicalParams, ClassicalSegmenter

    return ClassicalSegmenter(ClassicalParams(min_area=s.min_area, diff_threshold=s.diff_threshold,
                                              min_motion=s.min_motion, flow_backend=s.flow_backend))


def track_params(cfg: PipelineConfig) -> Any:
    from vjepa_adapt.segmentation.clip import TrackParams

    s = cfg.segment
    return TrackParams(iou_threshold=s.iou_threshold, max_gap=s.max_gap, min_tracklet_frames=s.min_tracklet_frames,
                       agent_min_frames=s.agent_min_frames,
                       agent_min_speed=s.agent_min_speed, speed_window=s.speed_window,
                       interaction_distance=s.interaction_distance, interaction_min_frames=s.interaction_min_frames,
                       flow_backend=s.flow_backend)


def sampling(cfg: PipelineConfig) -> Any:
    from vjepa_adapt.segmentation.stage import Sampling

    return Sampling(num_frames=cfg.segment.num_frames, short_side=cfg.segment.short_side)


def _uses_model(cfg: PipelineConfig) -> bool:
    return cfg.segment.backend == "sam3"


def run_segment(ctx: StageContext) -> StageResult:
    """Clip-parallel (vjepa_adapt.engine): workers segment chunks of clips, this process writes the files."""
    from vjepa_adapt.engine import ClipJob, run_configured
    from vjepa_adapt.segmentation.stage import merge_segment_parts

    cfg = ctx.cfg
    clips, _ = _clips_to_process(cfg, ctx.run_dir)
    sam3 = _uses_model(cfg)  # a model: loaded once per process / Ray actor, on the run's device
    job = ClipJob(SEGMENT, clips, cfg.run.chunk_size, ctx.out_dir / "parts",
                  functools.partial(make_segment_worker, cfg, str(_truth_base(cfg, ctx.run_dir))),
                  uses_model=sam3, uses_device=sam3)
    parts = run_configured(job, cfg.run)
    if parts is None:  # another rank of a torchrun job: rank 0 merges and writes
        return StageResult()
    by_id = {c.clip_id: c for c in clips}
    result = merge_segment_parts(parts, ctx.out_dir, cfg.segment.backend, read=lambda cid: _read(cfg, by_id[cid]),
                                 overlay_clips=cfg.segment.overlay_clips)
    check_bad_share(result, cfg.data.max_bad_fraction, SEGMENT)
    shutil.rmtree(job.parts_dir, ignore_errors=True)  # the masks files hold everything the parts did
    return result


def _read(cfg: PipelineConfig, clip: Any) -> Any:
    from vjepa_adapt.data.clips import open_clip
    from vjepa_adapt.segmentation.stage import read_clip_frames

    return read_clip_frames(open_clip(clip), sampling(cfg), clip.start, clip.end)


def _truth_of(base: Path, clip: Any) -> Any:
    from vjepa_adapt.world import load_truth

    truth = clip.meta.get("truth")
    if not truth:
        return None
    path = Path(truth) if Path(truth).is_absolute() else base / truth
    return load_truth(path) if path.exists() else None


def make_segment_worker(cfg: PipelineConfig, truth_base: str):
    """The segment stage's per-chunk work: the segmenter (SAM 3: loaded here, once per process or Ray
    actor) on each clip's sampled frames, the clip's truth counts when it has synthetic ground truth."""
    from vjepa_adapt.segmentation.stage import make_segment_work

    return make_segment_work(build_segmenter(cfg), track_params(cfg), sampling(cfg),
                             read=functools.partial(_read, cfg), truth_of=functools.partial(_truth_of, Path(truth_base)),
                             skip_errors=_skip_errors())


def _factor_params(cfg: PipelineConfig) -> Any:
    from vjepa_adapt.factors import FactorParams

    f = cfg.factors
    return FactorParams(num_frames=f.num_frames, max_agent_coverage_layout=f.max_agent_coverage_layout,
                        min_agent_coverage_agent=f.min_agent_coverage_agent, dilate=f.dilate, feather=f.feather,
                        blur_sigma=f.blur_sigma, background_level=f.background_level, tube_margin=f.tube_margin,
                        max_tubes=f.max_tubes)


def _segmented(cfg: PipelineConfig, seg_dir: Path, clip: Any) -> tuple[Any, Any]:
    """A segmented clip's masks (segment's file) and its decoded segmented frames."""
    from vjepa_adapt.data.clips import open_clip
    from vjepa_adapt.segmentation.masks import load_clip_masks
    from vjepa_adapt.segmentation.stage import masks_path, read_clip_frames

    masks = load_clip_masks(masks_path(seg_dir, clip.clip_id))
    frames = _segmented_frames(open_clip(clip), sampling(cfg), clip.start, clip.end, masks, read_clip_frames)
    return masks, frames


def make_factorize_worker(cfg: PipelineConfig, seg_dir: str, splits: dict[str, str]):
    """The factorize stage's per-chunk work (reads segment's masks files and the clips, writes nothing)."""
    from vjepa_adapt.factors import MotionSettings, make_factorize_work

    f, m = cfg.factors, cfg.motion
    device = resolve_device(cfg) if m.backend.startswith("raft") else "cpu"
    motion = MotionSettings(num_pairs=m.num_pairs, backend=m.backend, max_side=m.max_side, device=device)
    return make_factorize_work(_factor_params(cfg), materialise=f.materialise, motion=motion, fps=f.fps,
                               segmented=functools.partial(_segmented, cfg, Path(seg_dir)),
                               split_of=lambda c: splits.get(c.clip_id), skip_errors=_skip_errors())


def run_factorize(ctx: StageContext) -> StageResult:
    """Clip-parallel (vjepa_adapt.engine): workers build chunks of factor clips, this process writes the files."""
    from vjepa_adapt.engine import ClipJob, run_configured
    from vjepa_adapt.factors import merge_factor_parts
    from vjepa_adapt.segmentation.stage import masks_path

    cfg, f = ctx.cfg, ctx.cfg.factors
    clips, splits = _clips_to_process(cfg, ctx.run_dir)
    seg_dir = ctx.path_of(SEGMENT)
    clips = [c for c in clips if masks_path(seg_dir, c.clip_id).exists()]
    if not clips:
        raise UserError(f"factorize: no segmented clips in {seg_dir / 'masks'} (run `vjepa-adapt segment` first)")
    raft = cfg.motion.backend.startswith("raft")  # the factor clips' flow on the run's device
    job = ClipJob(FACTORIZE, clips, cfg.run.chunk_size, ctx.out_dir / "parts",
                  functools.partial(make_factorize_worker, cfg, str(seg_dir),
                                    {c.clip_id: splits.get(c.clip_id) for c in clips}),
                  uses_model=raft, uses_device=raft)
    parts = run_configured(job, cfg.run)
    if parts is None:  # another rank of a torchrun job: rank 0 merges and writes
        return StageResult()
    by_id = {c.clip_id: c for c in clips}
    result = merge_factor_parts(parts, _factor_params(cfg), ctx.out_dir, materialise=f.materialise,
                                segmented=lambda cid: _segmented(cfg, seg_dir, by_id[cid]),
                                sample_clips=f.sample_clips)
    check_bad_share(result, cfg.data.max_bad_fraction, FACTORIZE)
    shutil.rmtree(job.parts_dir, ignore_errors=True)  # the outputs hold everything the parts did
    return result


def _segmented_frames(src: Any, samp: Any, start: float | None, end: float | None, masks: Any, reader: Any) -> Any:
    import numpy as np

    frames, idx = reader(src, samp, start, end)
    if not np.array_equal(idx, masks.frame_indices) or frames.shape[:3] != masks.labels.shape:
        raise ValueError(f"{masks.clip_id}: decoded frames differ from the segmented ones (re-run segment)")
    return frames
