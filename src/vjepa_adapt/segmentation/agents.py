"""Agent-vs-layout motion filter and interaction mining over tracklets (pure functions).

A tracklet is an **agent** when its motion relative to the camera stays above ``min_speed``
(pixels per frame) on at least ``min_frames`` of its frames, or on every frame of a tracklet seen
on fewer frames than that (short tracklets are common in dense traffic, where touching movers are
cut apart and rejoin; on the synthetic target world every such tracklet that was called layout
was in fact an agent); everything else (parked vehicles, signs, the scene, segmentation noise) is
**layout**. Motion relative to the camera is measured two
ways; a frame's speed is the larger of the two (measured on the synthetic world: dense optical flow
reads sub-pixel motion at a fifth to a half of its size, so for slow walkers only the centroid over
a long window sees it; for fast movers whose masks change shape the flow is the steadier one):

- centroid displacement minus the camera's: ``|c_t - A(s->t) c_s| / (t - s)``, with s the earliest
  frame the tracklet was seen in ``[t - window, t - 1]`` (a longer baseline makes slow walkers
  measurable above mask jitter);
- flow inside the mask minus camera flow: the magnitude of the mean residual flow vector over the
  mask's pixels (the mean vector, not the mean magnitude, so noise does not add up to motion).

Interactions: pairs of agent tracklets whose centroids stay within ``distance`` pixels for at
least ``min_frames`` consecutive frames (both visible), one entry per maximal run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vjepa_adapt.segmentation import camera as cam

AGENT, LAYOUT = "agent", "layout"


def centroids_from_labels(labels: np.ndarray, ids: Sequence[int]) -> dict[int, np.ndarray]:
    """Per id a (T, 2) float array of mask centroids (x, y), NaN where the id is absent."""
    t_len, h, w = labels.shape
    n = int(max(ids, default=0)) + 1
    yy, xx = np.mgrid[0:h, 0:w]
    xx, yy = xx.ravel().astype(np.float64), yy.ravel().astype(np.float64)
    cx = np.full((n, t_len), np.nan)
    cy = np.full((n, t_len), np.nan)
    for t in range(t_len):
        lab = labels[t].ravel().astype(np.int64)
        lab = np.where(lab < n, lab, 0)
        cnt = np.bincount(lab, minlength=n)
        sx = np.bincount(lab, weights=xx, minlength=n)
        sy = np.bincount(lab, weights=yy, minlength=n)
        seen = cnt > 0
        cx[seen, t] = sx[seen] / cnt[seen]
        cy[seen, t] = sy[seen] / cnt[seen]
    return {int(i): np.stack([cx[i], cy[i]], axis=1) for i in ids}


def in_mask_motion(labels: np.ndarray, residual_flow: np.ndarray, ids: Sequence[int]) -> dict[int, np.ndarray]:
    """Per id a (T,) array: |mean residual flow vector| over its mask at t (NaN where absent).

    ``residual_flow`` (T, H, W, 2): flow minus camera flow at each sampled frame.
    """
    t_len = labels.shape[0]
    n = int(max(ids, default=0)) + 1
    out = np.full((n, t_len), np.nan)
    for t in range(t_len):
        lab = labels[t].ravel().astype(np.int64)
        lab = np.where(lab < n, lab, 0)
        cnt = np.bincount(lab, minlength=n)
        mx = np.bincount(lab, weights=residual_flow[t, ..., 0].ravel().astype(np.float64), minlength=n)
        my = np.bincount(lab, weights=residual_flow[t, ..., 1].ravel().astype(np.float64), minlength=n)
        seen = cnt > 0
        out[seen, t] = np.hypot(mx[seen] / cnt[seen], my[seen] / cnt[seen])
    return {int(i): out[i] for i in ids}


def centroid_speeds(centroid: np.ndarray, camera_steps: np.ndarray | None = None, window: int = 8) -> np.ndarray:
    """(T,) residual centroid speed (px/frame) of one tracklet; NaN where not measurable."""
    c = np.asarray(centroid, np.float64)
    seen = np.flatnonzero(np.isfinite(c[:, 0]))
    out = np.full(len(c), np.nan)
    for t in seen:
        prev = seen[(seen < t) & (seen >= t - window)]
        if not len(prev):
            continue
        s = int(prev[0])
        expected = c[s] if camera_steps is None else cam.apply(cam.between(camera_steps, s, int(t)), c[s])
        out[t] = float(np.hypot(*(c[t] - expected))) / (t - s)
    return out


def combine_speeds(centroid_speed: np.ndarray, flow_speed: np.ndarray | None) -> np.ndarray:
    """The larger of the two measures where both exist, whichever exists elsewhere (NaN if neither)."""
    a = np.asarray(centroid_speed, np.float64)
    if flow_speed is None:
        return a
    b = np.asarray(flow_speed, np.float64)
    both = np.isfinite(a) & np.isfinite(b)
    out = np.where(np.isfinite(a), a, b)
    out[both] = np.maximum(a[both], b[both])
    return out


def classify_role(speeds: np.ndarray, min_speed: float, min_frames: int) -> str:
    """``agent`` if the speed exceeds ``min_speed`` on at least ``min_frames`` frames, else ``layout``."""
    s = np.asarray(speeds, np.float64)
    moving = int(np.sum(np.nan_to_num(s, nan=0.0) > min_speed))
    return AGENT if moving >= min_frames else LAYOUT


def classify_tracklets(
    centroids: Mapping[int, np.ndarray],
    min_speed: float,
    min_frames: int,
    camera_steps: np.ndarray | None = None,
    flow_speeds: Mapping[int, np.ndarray] | None = None,
    window: int = 8,
) -> dict[int, dict[str, Any]]:
    """Per tracklet id: ``role``, ``moving_frames`` and ``median_speed`` (px/frame, where measured).

    A tracklet seen on fewer than ``min_frames`` frames must move on all of them to be an agent.
    """
    out = {}
    for tid, c in centroids.items():
        speeds = combine_speeds(centroid_speeds(c, camera_steps, window),
                                None if flow_speeds is None else flow_speeds.get(tid))
        finite = speeds[np.isfinite(speeds)]
        seen = int(np.sum(np.isfinite(np.asarray(c, np.float64)[:, 0])))
        out[tid] = {"role": classify_role(speeds, min_speed, max(1, min(min_frames, seen))),
                    "moving_frames": int(np.sum(finite > min_speed)),
                    "median_speed": round(float(np.median(finite)), 4) if len(finite) else None}
    return out


def mine_interactions(
    centroids: Mapping[int, np.ndarray], agent_ids: Sequence[int], distance: float, min_frames: int
) -> list[dict[str, Any]]:
    """Agent pairs (a < b) whose centroids stay within ``distance`` px for ``min_frames``+ consecutive frames.

    Returns ``{"a", "b", "start", "end", "min_distance"}`` per maximal run (end exclusive,
    min_distance in px).
    """
    ids = sorted(int(i) for i in agent_ids)
    out = []
    for k, a in enumerate(ids):
        for b in ids[k + 1:]:
            d = np.hypot(*(np.asarray(centroids[a], np.float64) - centroids[b]).T)
            close = np.nan_to_num(d, nan=np.inf) < distance
            edges = np.diff(np.r_[0, close.astype(np.int8), 0])
            for s, e in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
                if e - s >= min_frames:
                    out.append({"a": a, "b": b, "start": int(s), "end": int(e),
                                "min_distance": round(float(d[s:e].min()), 3)})
    return out
