"""The segment stage end to end: clips -> frames -> masks, tracklets, roles, interactions -> files.

Outputs in ``out_dir`` (all through :mod:`vjepa_adapt.storage`, atomic):

- ``masks/<clip_id>.npz``  per clip: RLE instance-id map + tracklet table + interactions
                           (:func:`~vjepa_adapt.segmentation.masks.load_clip_masks`)
- ``summary.jsonl``        one row per clip: clip_id, agents, layout, interactions (counts), frames
- ``overlay.png``          a few clips: sampled frames, then the same frames with agents filled and
                           layout tracklets outlined

A clip whose masks file exists is not segmented again (an interrupted stage resumes; the stage
graph wipes the folder when a setting changes). When clips carry synthetic ground truth, the
four truth scores (:mod:`~vjepa_adapt.segmentation.truth`) are returned in the result's ``extra``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vjepa_adapt import storage
from vjepa_adapt.progress import get_logger, progress
from vjepa_adapt.segmentation.clip import Segmenter, TrackParams, segment_clip
from vjepa_adapt.segmentation.masks import ClipMasks, load_clip_masks, save_clip_masks
from vjepa_adapt.stage_result import StageResult

log = get_logger("segment")

MASKS_DIR, SUMMARY_FILE, OVERLAY_FILE = "masks", "summary.jsonl", "overlay.png"


@dataclass(frozen=True)
class Sampling:
    """Which frames of a clip are segmented (factorize decodes the very same frames)."""

    num_frames: int = 32
    short_side: int | None = 384


def masks_path(out_dir: Path, clip_id: str) -> Path:
    return Path(out_dir) / MASKS_DIR / f"{re.sub(r'[^A-Za-z0-9._-]', '_', clip_id)}.npz"


def read_clip_frames(src: Any, sampling: Sampling, start: float | None = None,
                     end: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``num_frames`` frames spread evenly over the clip -> ((T, H, W, 3) uint8, (T,) frame indices).

    A clip with fewer frames than asked is ``too_few_frames`` (repeated frames would read as still).
    """
    from vjepa_adapt.data.video import read_frames_at, sample_frame_indices
    from vjepa_adapt.motion.stage import count_clip_frames

    n = count_clip_frames(src, start, end)
    if n < sampling.num_frames:
        from vjepa_adapt.data.video import VideoError

        raise VideoError("too_few_frames", f"{n} frames, segment needs {sampling.num_frames} (segment.num_frames)")
    idx = sample_frame_indices(n, sampling.num_frames)
    return read_frames_at(src, idx, start=start, end=end, short_side=sampling.short_side), idx


@dataclass
class SegmentItem:
    clip_id: str
    read: Callable[[], tuple[np.ndarray, np.ndarray]]  # -> frames, frame indices
    truth: Callable[[], Any] | None = None  # -> the synthetic Truth, when the clip has one


def summary_row(m: ClipMasks) -> dict[str, Any]:
    return {"clip_id": m.clip_id, "agents": len(m.agent_ids), "layout": len(m.layout_ids),
            "interactions": len(m.interactions), "frames": int(m.labels.shape[0])}


def run_segment_stage(items: Sequence[SegmentItem], segmenter: Segmenter, params: TrackParams, out_dir: Path,
                      sampling: Sampling, skip_errors: tuple[type[BaseException], ...],
                      overlay_clips: int = 4) -> StageResult:
    """Segment every item; bad clips are skipped with their reason (the caller checks the share)."""
    from vjepa_adapt.segmentation.truth import aggregate, score_clip

    out_dir = Path(out_dir)
    result = StageResult()
    rows: list[dict[str, Any]] = []
    truth_counts: list[dict[str, float]] = []
    t_decode = t_segment = 0.0
    n_new = 0
    done_items: list[SegmentItem] = []
    for item in progress(items, desc="segment", total=len(items), unit="clip"):
        path = masks_path(out_dir, item.clip_id)
        try:
            if path.exists():
                masks = load_clip_masks(path)
            else:
                t0 = time.perf_counter()
                frames, idx = item.read()
                t1 = time.perf_counter()
                masks = segment_clip(item.clip_id, frames, idx, segmenter, params,
                                     info={"num_frames": sampling.num_frames, "short_side": sampling.short_side})
                t2 = time.perf_counter()
                save_clip_masks(path, masks)
                t_decode, t_segment, n_new = t_decode + (t1 - t0), t_segment + (t2 - t1), n_new + 1
        except skip_errors as err:
            reason = f"{type(err).__name__}: {err}"
            log.warning("segment: skipping clip %s: %s", item.clip_id, reason)
            result.skip(item.clip_id, reason)
            continue
        rows.append(summary_row(masks))
        done_items.append(item)
        if item.truth is not None:
            truth_counts.append(score_clip(masks, item.truth()))
    result.done = len(rows)
    storage.write_jsonl(out_dir / SUMMARY_FILE, rows)
    if done_items and overlay_clips:
        write_overlay(out_dir / OVERLAY_FILE, out_dir, done_items[:overlay_clips])
    result.extra.update({
        "backend": segmenter.name,
        "segmented_now": n_new,
        "seconds_per_clip": round(t_segment / n_new, 4) if n_new else None,
        "decode_seconds_per_clip": round(t_decode / n_new, 4) if n_new else None,
        "tracklets": sum(r["agents"] + r["layout"] for r in rows),
        "agents": sum(r["agents"] for r in rows),
        "layout": sum(r["layout"] for r in rows),
        "interactions": sum(r["interactions"] for r in rows),
    })
    if truth_counts:
        result.extra["truth"] = aggregate(truth_counts)
        log.info("segment: truth scores %s", result.extra["truth"])
    return result


def _fit_height(frames: np.ndarray, labels: np.ndarray, max_height: int = 128) -> tuple[np.ndarray, np.ndarray]:
    h, w = frames.shape[1:3]
    if h <= max_height:
        return frames, labels
    size = (max(2, round(w * max_height / h)), max_height)
    return (np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames]),
            np.stack([cv2.resize(m, size, interpolation=cv2.INTER_NEAREST) for m in labels]))


def write_overlay(path: Path, out_dir: Path, items: Sequence[SegmentItem]) -> None:
    """Contact sheet of a few segmented clips: agents filled, layout tracklets outlined."""
    from vjepa_adapt.data.contact_sheet import SheetRow, write_contact_sheet

    rows = []
    for item in items:
        masks = load_clip_masks(masks_path(out_dir, item.clip_id))
        frames, _ = item.read()
        frames, labels = _fit_height(frames, masks.labels)
        label = (f"{item.clip_id} | {len(masks.agent_ids)} agents, {len(masks.layout_ids)} layout, "
                 f"{len(masks.interactions)} interactions")
        rows.append(SheetRow(frames, labels, label, agent_ids=masks.agent_ids))
    scale = 2 if rows[0].frames.shape[1] <= 100 else 1
    write_contact_sheet(path, rows, frames_per_clip=4, scale=scale)
