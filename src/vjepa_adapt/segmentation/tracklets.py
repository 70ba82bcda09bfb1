"""Greedy IoU tracklets: link per-frame instances into tracks, frame to frame (pure functions).

At frame t every open tracklet (last seen at most ``max_gap`` frames ago, i.e. a gap of up to
``max_gap`` missing frames) is compared with every detection of frame t by IoU of the tracklet's
last region and the detection. Pairs are taken greedily, highest IoU first (ties: the more recently
seen tracklet, then the lower id, then the earlier detection), each tracklet and detection at most
once, and only pairs with IoU >= ``iou_threshold``. Detections left over start new tracklets.
Ids are 1, 2, 3, ... in order of first appearance (within a frame, in detection order), so the same
input always gives the same ids.

Regions are boxes ``(N, 4)`` ``(x0, y0, x1, y1)`` (x1/y1 exclusive) or boolean masks ``(N, H, W)``.
Before the IoU, a tracklet's last region is moved to where it should be at t, by the first of:
the mean optical flow inside it at the frame it was last seen (``flows``, image flow t -> t+1),
times the frames since; its own velocity in the image (the displacement between its last two
observations, per frame, times the frames since); the camera's motion since it was seen
(``camera_steps``, see :mod:`~vjepa_adapt.segmentation.camera`). Without this, anything that moves
more than its own size per frame (a fast two-wheeler at 128 px) would start a new tracklet every
frame, and a panning camera would break every track.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from vjepa_adapt.segmentation import camera as cam


@dataclass
class Tracklet:
    id: int
    frames: list[int] = field(default_factory=list)  # frame indices, increasing
    detections: list[int] = field(default_factory=list)  # index of the detection in each of those frames

    @property
    def first(self) -> int:
        return self.frames[0]

    @property
    def last(self) -> int:
        return self.frames[-1]

    def __len__(self) -> int:
        return len(self.frames)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (N, M) of boxes ``a`` (N, 4) and ``b`` (M, 4), ``(x0, y0, x1, y1)``."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (N, M) of boolean masks ``a`` (N, H, W) and ``b`` (M, H, W)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    a = a.reshape(len(a), int(np.prod(a.shape[1:])))
    b = b.reshape(len(b), int(np.prod(b.shape[1:])))
    if a.shape[0] == 0 or b.shape[0] == 0:
        return np.zeros((a.shape[0], b.shape[0]))
    inter = a.astype(np.float32) @ b.astype(np.float32).T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0).astype(np.float64)


def _is_boxes(r: np.ndarray) -> bool:
    return r.ndim == 2 and r.shape[-1] == 4


def _centre(region: np.ndarray) -> np.ndarray:
    if region.ndim == 1:
        return np.array([(region[0] + region[2]) / 2, (region[1] + region[3]) / 2], np.float64)
    ys, xs = np.nonzero(region)
    return np.array([xs.mean(), ys.mean()]) if len(xs) else np.zeros(2)


def _mean_flow(flow: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Mean (dx, dy) of ``flow`` (H, W, 2) inside a box or mask."""
    if region.ndim == 1:
        h, w = flow.shape[:2]
        x0, y0 = int(np.clip(np.floor(region[0]), 0, w - 1)), int(np.clip(np.floor(region[1]), 0, h - 1))
        x1, y1 = int(np.clip(np.ceil(region[2]), x0 + 1, w)), int(np.clip(np.ceil(region[3]), y0 + 1, h))
        return flow[y0:y1, x0:x1].reshape(-1, 2).mean(axis=0)
    sel = flow[region]
    return sel.mean(axis=0) if len(sel) else np.zeros(2)


def _translation(d: np.ndarray) -> np.ndarray:
    return np.array([[1.0, 0.0, d[0]], [0.0, 1.0, d[1]], [0.0, 0.0, 1.0]])


def _move(region: np.ndarray, a: np.ndarray) -> np.ndarray:
    """One region moved by the (3, 3) affine ``a``."""
    if np.allclose(a, np.eye(3)):
        return region
    if region.ndim == 1:  # a box: the bounding box of its moved corners
        x0, y0, x1, y1 = region
        pts = cam.apply(a, np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], np.float64))
        return np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()])
    return cam.warp_mask(region, a)


def link_tracklets(
    regions: Sequence[np.ndarray],
    iou_threshold: float = 0.3,
    max_gap: int = 2,
    camera_steps: np.ndarray | None = None,
    flows: np.ndarray | None = None,
) -> list[Tracklet]:
    """Link the per-frame regions ``regions[t]`` ((N_t, 4) boxes or (N_t, H, W) masks) into tracklets.

    ``flows``: (T, H, W, 2) image flow from each frame to the next, to predict where regions move.
    """
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0, got {max_gap}")
    tracks: list[Tracklet] = []
    last_region: dict[int, np.ndarray] = {}
    velocity: dict[int, np.ndarray] = {}  # image-space px per frame, from the last two observations
    for t, dets in enumerate(regions):
        dets = np.asarray(dets)
        n = len(dets)
        open_tracks = [tr for tr in tracks if t - tr.last - 1 <= max_gap]
        assigned: set[int] = set()
        if n and open_tracks:
            prev = []
            for tr in open_tracks:
                r = last_region[tr.id]
                if flows is not None:
                    r = _move(r, _translation(_mean_flow(flows[tr.last], r) * (t - tr.last)))
                elif tr.id in velocity:
                    r = _move(r, _translation(velocity[tr.id] * (t - tr.last)))
                elif camera_steps is not None:
                    r = _move(r, cam.between(camera_steps, tr.last, t))
                prev.append(r)
            prev_arr = np.stack(prev)
            iou = box_iou(prev_arr, dets) if _is_boxes(dets) else mask_iou(prev_arr, dets)
            cand = [(-iou[i, j], t - tr.last, tr.id, j, i) for i, tr in enumerate(open_tracks) for j in range(n)
                    if iou[i, j] >= iou_threshold]
            used_tracks: set[int] = set()
            for _, _, tid, j, i in sorted(cand):
                if tid in used_tracks or j in assigned:
                    continue
                tr = open_tracks[i]
                velocity[tid] = (_centre(dets[j]) - _centre(last_region[tid])) / (t - tr.last)
                tr.frames.append(t)
                tr.detections.append(j)
                last_region[tid] = dets[j]
                used_tracks.add(tid)
                assigned.add(j)
        for j in range(n):
            if j not in assigned:
                tr = Tracklet(id=len(tracks) + 1, frames=[t], detections=[j])
                tracks.append(tr)
                last_region[tr.id] = dets[j]
    return tracks
