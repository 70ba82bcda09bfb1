"""One clip end to end: frames -> instances (a backend) -> tracklets -> agent/layout -> interactions.

The result is a :class:`~vjepa_adapt.segmentation.masks.ClipMasks`: one disjoint id map per frame
(value = tracklet id) and the tracklet table (one row per tracklet: ``id``, ``role``, ``first``,
``last`` (sampled-frame indices), ``frames`` (how many frames it was seen in), ``mean_area`` (share
of the frame), ``category``, ``score``, ``moving_frames``, ``median_speed`` (px/frame relative to
the camera), ``source_id`` (the backend's own object id, SAM 3 video; else null)).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from vjepa_adapt.segmentation import camera as cam
from vjepa_adapt.segmentation.agents import (
    AGENT,
    centroids_from_labels,
    classify_tracklets,
    in_mask_motion,
    mine_interactions,
)
from vjepa_adapt.segmentation.instances import Instances
from vjepa_adapt.segmentation.masks import ClipMasks, labels_from_instances
from vjepa_adapt.segmentation.tracklets import link_tracklets


class Segmenter(Protocol):
    name: str

    def segment(self, frames: np.ndarray, camera_steps: np.ndarray) -> list[Instances]: ...


@dataclass(frozen=True)
class TrackParams:
    """The tracklet, agent-filter and interaction settings (``segment.*`` of the config)."""

    iou_threshold: float = 0.3
    max_gap: int = 2
    min_tracklet_frames: int = 3
    agent_min_frames: int = 4
    agent_min_speed: float = 0.001  # x frame width, px per frame
    speed_window: int = 8
    interaction_distance: float = 0.2  # x frame width
    interaction_min_frames: int = 4
    flow_backend: str = "dis"


def disjoint(inst: Instances) -> tuple[np.ndarray, list[int]]:
    """Overlaps resolved by score -> (masks (N', H, W) of the instances that keep pixels, their indices)."""
    if not len(inst):
        return inst.masks, []
    lab = labels_from_instances(inst.masks, np.arange(1, len(inst) + 1), inst.scores)
    kept = [int(v) - 1 for v in np.unique(lab) if v]
    return np.stack([lab == i + 1 for i in kept]) if kept else inst.masks[:0], kept


def segment_clip(clip_id: str, frames: np.ndarray, frame_indices: np.ndarray, segmenter: Segmenter,
                 params: TrackParams, info: dict[str, Any] | None = None) -> ClipMasks:
    """Segment one clip's sampled frames (T, H, W, 3) uint8 RGB."""
    frames = np.asarray(frames)
    n, h, w, _ = frames.shape
    steps = cam.estimate_steps(frames)
    per_frame = segmenter.segment(frames, steps)
    if len(per_frame) != n:
        raise ValueError(f"segmenter {segmenter.name} returned {len(per_frame)} frames of instances for {n} frames")
    dets, kept = zip(*(disjoint(i) for i in per_frame)) if n else ((), ())
    flows = cam.frame_flows(frames, params.flow_backend)  # (T, H, W, 2): predicts tracks, measures motion
    tracks = link_tracklets(list(dets), iou_threshold=params.iou_threshold, max_gap=params.max_gap,
                            camera_steps=steps, flows=flows)
    # flicker (regions seen on fewer frames than min_tracklet_frames) is dropped; ids stay 1..K in order
    tracks = [tr for tr in tracks if len(tr) >= params.min_tracklet_frames]
    for k, tr in enumerate(tracks, start=1):
        tr.id = k
    labels = np.zeros((n, h, w), np.uint16)
    for tr in tracks:
        for t, j in zip(tr.frames, tr.detections):
            labels[t][dets[t][j]] = tr.id
    ids = [tr.id for tr in tracks]
    centroids = centroids_from_labels(labels, ids)
    flow_speed = in_mask_motion(labels, cam.residual_of(flows, steps), ids) if ids else {}
    roles = classify_tracklets(centroids, min_speed=params.agent_min_speed * w, min_frames=params.agent_min_frames,
                               camera_steps=steps, flow_speeds=flow_speed, window=params.speed_window)
    table = []
    for tr in tracks:
        src = [per_frame[t] for t in tr.frames]
        orig = [kept[t][j] for t, j in zip(tr.frames, tr.detections)]
        cats = Counter(s.categories[o] for s, o in zip(src, orig))
        source = [int(s.source_ids[o]) for s, o in zip(src, orig) if s.source_ids is not None]
        area = float(np.mean([dets[t][j].sum() for t, j in zip(tr.frames, tr.detections)])) / (h * w)
        table.append({
            "id": tr.id, **roles[tr.id], "first": tr.first, "last": tr.last, "frames": len(tr),
            "mean_area": round(area, 5), "category": cats.most_common(1)[0][0],
            "score": round(float(np.mean([s.scores[o] for s, o in zip(src, orig)])), 4),
            "source_id": Counter(source).most_common(1)[0][0] if source else None,
        })
    agents = [r["id"] for r in table if r["role"] == AGENT]
    interactions = mine_interactions(centroids, agents, distance=params.interaction_distance * w,
                                     min_frames=params.interaction_min_frames)
    meta = {"backend": segmenter.name, "height": h, "width": w, "num_frames": n, **(info or {})}
    return ClipMasks(clip_id=clip_id, labels=labels, frame_indices=np.asarray(frame_indices, np.int64),
                     tracklets=table, interactions=interactions, camera_steps=steps, info=meta)
