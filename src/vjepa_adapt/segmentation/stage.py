"""The segment stage end to end: clips -> frames -> masks, tracklets, roles, interactions -> files.

Outputs in ``out_dir`` (all through :mod:`vjepa_adapt.storage`, atomic):

- ``masks/<clip_id>.npz``  per clip: RLE instance-id map + tracklet table + interactions
                           (:func:`~vjepa_adapt.segmentation.masks.load_clip_masks`)
- ``summary.jsonl``        one row per clip: clip_id, agents, layout, interactions (counts), frames
- ``overlay.png``          a few clips: sampled frames, then the same frames with agents filled and
                           layout tracklets outlined

The stage is clip-parallel (:mod:`vjepa_adapt.engine`): workers segment chunks of clips into parts
(:func:`make_segment_work`), the driver writes the files from them (:func:`merge_segment_parts`), the
same bytes on every engine. A chunk with a part is not segmented again (an interrupted stage resumes;
the stage graph wipes the folder when a setting changes). When clips carry synthetic ground truth,
the four truth scores (:mod:`~vjepa_adapt.segmentation.truth`) are returned in the result's ``extra``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vjepa_adapt import storage
from vjepa_adapt.engine import clips_of, pack_bytes, unpack_bytes
from vjepa_adapt.progress import get_logger
from vjepa_adapt.segmentation.clip import Segmenter, TrackParams, segment_clip
from vjepa_adapt.segmentation.masks import ClipMasks, clip_masks_bytes, load_clip_masks
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


# ------------------------------------------------------------------- clip-parallel (engine) form
# The stage as vjepa_adapt.engine runs it: a worker segments a chunk of clips and returns one part
# holding everything the driver writes (it needs to read the clips, never to write the run folder);
# merge_segment_parts writes the files from the parts, in chunk order.


def make_segment_work(segmenter: Segmenter, params: TrackParams, sampling: Sampling,
                      read: Callable[[Any], tuple[np.ndarray, np.ndarray]], truth_of: Callable[[Any], Any],
                      skip_errors: tuple[type[BaseException], ...]):
    """``work(chunks) -> (chunk index, part)``; ``read(clip)`` -> (frames, frame indices), ``truth_of(clip)``
    -> the clip's synthetic Truth or None. A part (per segmented clip, in clip order):

    - ``clip_ids`` (n,) str; ``masks_data`` (bytes,) uint8 = the n masks files back to back, ``masks_offsets``
      (n + 1,) int64 (clip i is ``masks_data[off[i]:off[i + 1]]``, the bytes of :func:`clip_masks_bytes`);
    - ``summary`` (n,) str: the summary.jsonl rows (JSON);
    - ``truth_counts`` (n, len(COUNT_KEYS)) float64 and ``has_truth`` (n,) bool (truth.score_clip);
    - ``seconds`` (n, 2) float64: decode, segment;
    - ``skipped_ids``, ``skipped_reasons`` (str): the bad clips and why.
    """
    from vjepa_adapt.segmentation.truth import COUNT_KEYS, score_clip

    info = {"num_frames": sampling.num_frames, "short_side": sampling.short_side}

    def work(chunks):
        acc = _SegmentAcc()
        for chunk, c, last in clips_of(chunks, "segment"):
            try:
                t0 = time.perf_counter()
                frames, idx = read(c)
                t1 = time.perf_counter()
                masks = segment_clip(c.clip_id, frames, idx, segmenter, params, info=info)
                t2 = time.perf_counter()
                data = clip_masks_bytes(masks)
            except skip_errors as err:
                reason = f"{type(err).__name__}: {err}"
                log.warning("segment: skipping clip %s: %s", c.clip_id, reason)
                acc.skipped.append((c.clip_id, reason))
            else:
                truth = truth_of(c)
                counts = score_clip(masks, truth) if truth is not None else None
                acc.add(c.clip_id, data, summary_row(masks), counts, (t1 - t0, t2 - t1))
            if last:
                yield chunk.index, acc.part(COUNT_KEYS)
                acc = _SegmentAcc()

    return work


class _SegmentAcc:
    def __init__(self) -> None:
        self.ids: list[str] = []
        self.data: list[bytes] = []
        self.rows: list[dict[str, Any]] = []
        self.counts: list[dict[str, float] | None] = []
        self.seconds: list[tuple[float, float]] = []
        self.skipped: list[tuple[str, str]] = []

    def add(self, clip_id: str, data: bytes, row: dict[str, Any], counts: dict[str, float] | None,
            seconds: tuple[float, float]) -> None:
        self.ids.append(clip_id)
        self.data.append(data)
        self.rows.append(row)
        self.counts.append(counts)
        self.seconds.append(seconds)

    def part(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        return {
            "clip_ids": np.asarray(self.ids, dtype=str),
            **pack_bytes(self.data, "masks"),
            "summary": np.asarray([json.dumps(r) for r in self.rows], dtype=str),
            "truth_counts": np.asarray([[c[k] for k in keys] if c else [0.0] * len(keys) for c in self.counts],
                                       np.float64).reshape(len(self.ids), len(keys)),
            "has_truth": np.asarray([c is not None for c in self.counts], bool),
            "seconds": np.asarray(self.seconds, np.float64).reshape(len(self.ids), 2),
            "skipped_ids": np.asarray([c for c, _ in self.skipped], dtype=str),
            "skipped_reasons": np.asarray([r for _, r in self.skipped], dtype=str),
        }


def merge_segment_parts(parts: Sequence[dict[str, np.ndarray]], out_dir: Path, backend: str,
                        read: Callable[[str], tuple[np.ndarray, np.ndarray]] | None = None,
                        overlay_clips: int = 4) -> StageResult:
    """Write the stage's files from the parts (in chunk order): masks/<clip>.npz, summary.jsonl, overlay.png
    (``read(clip_id)`` decodes the few clips it shows), the truth scores in ``extra``. Bad clips are
    skipped with their reason (the caller checks the share)."""
    from vjepa_adapt.segmentation.truth import COUNT_KEYS, aggregate

    out_dir = Path(out_dir)
    result = StageResult()
    rows: list[dict[str, Any]] = []
    truth_counts: list[dict[str, float]] = []
    seconds = np.zeros((0, 2))
    for part in parts:
        ids = [str(c) for c in part["clip_ids"]]
        for cid, data in zip(ids, unpack_bytes(part, "masks")):
            storage.write_bytes(masks_path(out_dir, cid), data)
        rows.extend(json.loads(str(r)) for r in part["summary"])
        truth_counts.extend(dict(zip(COUNT_KEYS, (float(x) for x in c)))
                            for c, has in zip(part["truth_counts"], part["has_truth"]) if has)
        seconds = np.concatenate([seconds, part["seconds"].reshape(-1, 2)])
        for cid, reason in zip(part["skipped_ids"], part["skipped_reasons"]):
            result.skip(str(cid), str(reason))
    result.done = len(rows)
    storage.write_jsonl(out_dir / SUMMARY_FILE, rows)
    if rows and overlay_clips and read is not None:
        items = [SegmentItem(r["clip_id"], lambda cid=r["clip_id"]: read(cid)) for r in rows[:overlay_clips]]
        write_overlay(out_dir / OVERLAY_FILE, out_dir, items)
    n = len(seconds)
    result.extra.update({
        "backend": backend,
        "seconds_per_clip": round(float(seconds[:, 1].mean()), 4) if n else None,
        "decode_seconds_per_clip": round(float(seconds[:, 0].mean()), 4) if n else None,
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
