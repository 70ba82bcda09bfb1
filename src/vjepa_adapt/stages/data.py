"""Ch 9 data stages: the synthetic world, the clip list and splits, tags, motion labels."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from vjepa_adapt import storage
from vjepa_adapt.config import PipelineConfig
from vjepa_adapt.data.clips import Clip
from vjepa_adapt.errors import UserError
from vjepa_adapt.pipeline import StageContext
from vjepa_adapt.progress import get_logger
from vjepa_adapt.stage_result import StageResult, check_bad_share
from vjepa_adapt.stages.encoders import resolve_device

log = get_logger("stages")

CLIPS_FILE, SPLITS_FILE = "clips.jsonl", "splits.csv"


def render_world(cfg: PipelineConfig, out: str | Path, style: str, num_clips: int, seed: int) -> list[dict]:
    """``num_clips`` clips of ``style`` with the synth section's sizes; an interrupted render resumes."""
    from vjepa_adapt.world import generate_world

    s = cfg.synth
    return generate_world(out, num_clips=num_clips, style=style, seed=seed, width=s.width, height=s.height,
                          num_frames=s.num_frames, fps=s.fps, clips_per_video=s.clips_per_video,
                          vertical_share=s.vertical_share, num_workers=max(s.workers, 1), skip_existing=True)


# The source style's world seed is derived from the target's, so the two never share a scene.
SOURCE_SEED_OFFSET = 1


def synth_command(cfg: PipelineConfig, out: str, num_clips: int | None, style: str, seed: int | None) -> None:
    s = cfg.synth
    n = num_clips if num_clips is not None else (s.target_clips if style == "target" else cfg.base.clips)
    default_seed = s.seed if style == "target" else s.seed + SOURCE_SEED_OFFSET
    recs = render_world(cfg, out, style, n, default_seed if seed is None else seed)
    print(f"wrote {len(recs)} {style} clips to {out} (manifest.jsonl, contact_sheet.png)")


def run_synth(ctx: StageContext) -> StageResult:
    """The run's clips when data.clips is unset: the target style of the world (the new domain)."""
    s = ctx.cfg.synth
    return StageResult(done=len(render_world(ctx.cfg, ctx.out_dir / "target", "target", s.target_clips, s.seed)))


# ------------------------------------------------------------------------------------ clips + splits


def clips_source(cfg: PipelineConfig, run_dir: Path) -> str:
    return cfg.data.clips if cfg.data.clips else str(run_dir / "synth" / "target" / "manifest.jsonl")


def clips_fingerprint(cfg: PipelineConfig) -> Any:
    """What the clip list depends on outside the run: the source path and its size/mtime."""
    if not cfg.data.clips:
        return None
    p = Path(cfg.data.clips)
    if p.exists():
        st = p.stat()
        return {"source": str(p.resolve()), "mtime": int(st.st_mtime), "size": st.st_size}
    return {"source": cfg.data.clips}


def run_clips(ctx: StageContext) -> StageResult:
    from vjepa_adapt.data.clips import (
        cut_into_clips,
        load_clips,
        plan_splits,
        save_splits,
    )

    d = ctx.cfg.data
    clips = load_clips(clips_source(ctx.cfg, ctx.run_dir))
    if d.clip_seconds:
        clips = cut_into_clips(clips, clip_seconds=d.clip_seconds)
    if not clips:
        raise UserError(f"no clips found in {clips_source(ctx.cfg, ctx.run_dir)}")
    # Stratify by the generator's intended class when the manifest has one (synthetic world).
    labels = {c.clip_id: str(c.meta["motion_class"]) for c in clips if c.meta.get("motion_class")} or None
    plan = plan_splits(clips, ratios=tuple(d.split_ratios), seed=d.split_seed, labels=labels,
                       guard_seconds=d.split_guard_seconds)
    videos = len({c.video_id for c in clips})
    if plan.rule == "time_blocks":
        r = plan.record
        log.warning(f"clips: {r['why']}: each video is cut into contiguous time blocks {' | '.join(r['block_order'])} "
                    f"with a guard gap of {r['guard_seconds']} between blocks; {r['dropped_in_guard']} clips in the "
                    "gaps dropped" + (f", {r['untimed_videos_in_train']} whole-file videos put in train"
                                      if r["untimed_videos_in_train"] else ""))
    kept = [c for c in clips if c.clip_id in plan.splits]  # clips in a guard gap leave the run
    storage.write_jsonl(ctx.out_dir / CLIPS_FILE, [_clip_row(c) for c in kept])
    save_splits(ctx.out_dir / SPLITS_FILE, plan.splits)
    counts = {s: sum(1 for v in plan.splits.values() if v == s) for s in ("train", "val", "test")}
    return StageResult(done=len(kept), extra={"splits": counts, "videos": videos, "split_rule": plan.record})


def _clip_row(c: Clip) -> dict[str, Any]:
    return {"clip_id": c.clip_id, "path": c.path, "video_id": c.video_id, "start": c.start, "end": c.end,
            **{k: v for k, v in c.meta.items() if isinstance(v, (str, int, float, bool)) or v is None}}


def frame_reader(cfg: PipelineConfig, run_dir: Path):
    """The run's decoded-frame cache (``data.frame_cache``) as a ``FrameReader``, or None (decode each time)."""
    if not cfg.data.frame_cache:
        return None
    from vjepa_adapt.data.frame_cache import FrameCache

    return FrameCache(run_dir / "cache" / "frames", num_frames=cfg.data.num_frames, fps_stride=cfg.data.fps_stride,
                      max_short_side=2 * cfg.data.size)


def load_run_clips(run_dir: Path) -> tuple[list[Clip], dict[str, str]]:
    from vjepa_adapt.data.clips import load_splits

    rows = storage.read_jsonl(run_dir / "clips" / CLIPS_FILE)
    base = {"clip_id", "path", "video_id", "start", "end"}
    clips = [Clip(r["clip_id"], r["path"], r["video_id"], r.get("start"), r.get("end"),
                  {k: v for k, v in r.items() if k not in base}) for r in rows]
    return clips, load_splits(run_dir / "clips" / SPLITS_FILE)


# ------------------------------------------------------------------------------------ tag, motion


def check_tag_backend(cfg: PipelineConfig) -> None:
    """Requirement of the tag stage: with ``tag.backend=hf`` the VLM is a model folder or a reachable/cached Hub id."""
    from vjepa_adapt.stages.encoders import check_weights_source

    t = cfg.tag
    if t.backend == "hf":
        resolve_device(cfg)
    if t.backend == "hf" and t.model:
        if Path(t.model).expanduser().is_file():
            raise UserError(f"tag.model: {t.model} is a file; expected a Hugging Face model folder or Hub id")
        check_weights_source(t.model, field="tag.model")


def check_motion_backend(cfg: PipelineConfig) -> None:
    """Requirement of the motion stage: the RAFT backends need torchvision and run.device (the OpenCV ones
    need nothing: they run on the CPU whatever run.device says)."""
    import importlib.util

    backend = cfg.motion.backend
    if backend.startswith("raft") and importlib.util.find_spec("torchvision") is None:
        raise UserError(f"motion.backend={backend} needs torchvision: `pip install vjepa-adapt[raft]`, or use "
                        "motion.backend=farneback or dis (OpenCV, CPU)")
    if backend.startswith("raft"):
        resolve_device(cfg)


def run_tag(ctx: StageContext) -> StageResult:
    import functools

    from vjepa_adapt.engine import ClipJob, run_configured
    from vjepa_adapt.tagging import load_taxonomy
    from vjepa_adapt.tagging.stage import (
        TAGS_FILE,
        finish_tags,
        merge_tag_parts,
    )

    t = ctx.cfg.tag
    clips, _ = load_run_clips(ctx.run_dir)
    job = ClipJob("tag", clips, ctx.cfg.run.chunk_size, ctx.out_dir / "parts",
                  functools.partial(make_tag_worker, ctx.cfg), uses_model=True, uses_device=t.backend == "hf")
    parts = run_configured(job, ctx.cfg.run)
    if parts is None:  # another rank of a torchrun job: rank 0 merges and writes
        return StageResult()
    rows, skipped = merge_tag_parts(parts)
    taxonomy = load_taxonomy(t.taxonomy)
    backend_name, expected = _tag_backend_fields(ctx.cfg, taxonomy)
    result = finish_tags(rows, skipped, ctx.out_dir / TAGS_FILE, backend_name, taxonomy, expected,
                         max_default_fraction=t.max_default_fraction, max_bad_fraction=ctx.cfg.data.max_bad_fraction,
                         before_checks=lambda: shutil.rmtree(job.parts_dir, ignore_errors=True))
    return result


def _build_tag_backend(cfg: PipelineConfig, taxonomy: Any) -> Any:
    from vjepa_adapt.tagging import build_backend

    t = cfg.tag
    kwargs: dict[str, Any] = {}
    if t.backend == "hf":
        kwargs.update(model_id_or_path=t.model, max_new_tokens=t.max_new_tokens, num_frames_for_vlm=t.num_frames,
                      device=resolve_device(cfg))
    elif t.backend == "openai":
        kwargs.update(base_url=t.base_url, model=t.model or "default", api_key=os.environ.get(t.api_key_env),
                      timeout_s=t.timeout_s, max_new_tokens=t.max_new_tokens, num_frames_for_vlm=t.num_frames)
    return build_backend(t.backend, taxonomy=taxonomy, **kwargs)


def _tag_backend_fields(cfg: PipelineConfig, taxonomy: Any) -> tuple[str, tuple[str, ...]]:
    """The backend's name and answered fields, without loading a model (the merge runs where none is)."""
    from vjepa_adapt.tagging.heuristic import HeuristicBackend

    measured = HeuristicBackend.measured_fields if cfg.tag.backend == HeuristicBackend.name else None
    return cfg.tag.backend, tuple(n for n in taxonomy.names if measured is None or n in measured)


def make_tag_worker(cfg: PipelineConfig):
    """The tag stage's per-chunk work (vjepa_adapt.engine): the backend (a VLM: loaded here, once per
    process or Ray actor) on each clip's frames."""
    from vjepa_adapt.data.clips import open_clip
    from vjepa_adapt.data.video import read_frames
    from vjepa_adapt.tagging import load_taxonomy
    from vjepa_adapt.tagging.stage import make_tag_work

    t = cfg.tag
    taxonomy = load_taxonomy(t.taxonomy)
    backend = _build_tag_backend(cfg, taxonomy)
    # The heuristic measures motion from consecutive frames: read a short run at the clip's own fps.
    n = 8 if t.backend == "heuristic" else max(t.num_frames, 8)
    return make_tag_work(backend, taxonomy, lambda c: read_frames(open_clip(c), num_frames=n, start=c.start, end=c.end))


def run_motion(ctx: StageContext) -> StageResult:
    import functools

    from vjepa_adapt.engine import ClipJob, run_configured
    from vjepa_adapt.motion import build_labels, write_motion_outputs
    from vjepa_adapt.motion.stage import make_motion_worker, merge_parts

    m = ctx.cfg.motion
    clips, splits = load_run_clips(ctx.run_dir)
    device = resolve_device(ctx.cfg) if m.backend.startswith("raft") else "cpu"  # OpenCV flow: CPU only
    job = ClipJob("motion", clips, ctx.cfg.run.chunk_size, ctx.out_dir / "parts",
                  functools.partial(make_motion_worker, m.backend, m.max_side, device, m.num_pairs),
                  uses_model=m.backend.startswith("raft"), uses_device=m.backend.startswith("raft"))
    parts = run_configured(job, ctx.cfg.run)
    if parts is None:  # another rank of a torchrun job: rank 0 merges and writes
        return StageResult()
    ext = merge_parts(parts)
    result = StageResult(done=len(ext.features))
    for cid, reason in ext.skipped:
        result.skip(cid, reason)
    check_bad_share(result, ctx.cfg.data.max_bad_fraction, "motion")
    kept_splits = {c: splits[c] for c in ext.features}
    label_set = build_labels(ext.features, kept_splits, num_classes=m.num_classes,
                             min_count_per_split=m.min_count_per_split, magnitude=m.magnitude)
    write_motion_outputs(ctx.out_dir, ext.features, label_set, kept_splits, skipped=ext.skipped, backend=m.backend,
                         max_side=m.max_side)
    shutil.rmtree(job.parts_dir, ignore_errors=True)  # the outputs hold everything the parts did
    agreement = _truth_agreement(clips, label_set.all_labels)
    result.extra.update({"classes": label_set.classes, "kept": len(label_set.labels), "dropped": label_set.dropped,
                         "cuts": list(label_set.cuts), "max_side": m.max_side,
                         **({"truth_agreement": agreement} if agreement else {})})
    if agreement:
        log.info(f"motion: flow-derived class agrees with the generator's intended class on {agreement:.1%} of clips")
    return result


def _truth_agreement(clips: list[Clip], derived: dict[str, str]) -> float | None:
    pairs = [(c.meta.get("motion_class"), derived.get(c.clip_id)) for c in clips if c.meta.get("motion_class")]
    pairs = [(a, b) for a, b in pairs if b is not None]
    return sum(a == b for a, b in pairs) / len(pairs) if pairs else None
