"""Ground truth of a synthetic street clip: the :class:`Truth` record, its file format, and the
tracks and interactions derived from an instance-id map.

A truth file is an ``.npz`` (readable with ``np.load``) whose bytes depend only on its content:
members carry a fixed zip date, so the same clip always gives the same bytes.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vjepa_adapt.storage import write_bytes

TRUTH_FORMAT_VERSION = 1


@dataclass
class Truth:
    """Ground truth of one clip.

    Object ``i`` in ``objects`` has instance id ``i + 1`` in ``instance_map`` (0 = background).
    Boxes are ``(x0, y0, x1, y1)`` in pixels with x1/y1 exclusive, -1 where the object is not
    visible; centroids are NaN there. ``position`` is the object's ground-contact point in frame
    coordinates even when it is hidden. ``camera_affine[t]`` maps world-canvas coordinates to
    frame t; ``camera_motion[t] = (dx, dy, zoom)``: where the scene point at the frame centre at
    t-1 moved to in frame t (pixels), and the zoom ratio z_t / z_{t-1} (row 0: 0, 0, 1).
    Interactions: pairs of moving agents whose mask centroids stay within
    ``interaction_distance x width`` for at least ``interaction_min_frames`` consecutive frames;
    ``start``/``end`` are frame indices (end exclusive), ``passing`` says they swapped order along
    the direction of travel inside the window.

    ``objects[i]``: ``id``, ``category``, ``role`` ("agent" moves on its own; "static" is an agent
    category standing still, e.g. a waiting pedestrian; "layout": parked vehicles, poles, signs,
    stalls), ``is_agent`` (= role is "agent"), and for agents ``stop_frames`` / ``turn_frames``
    ([start, end) or None). ``meta``: tier, direction, lighting, camera (mode and its parameters),
    size, fps, seed, speeds (``tier_speed`` as a fraction of the width per frame, ``speed_px``
    actual, ``speed_factor``), ``target_coverage`` and measured ``moving_coverage``.
    """

    clip_id: str
    video_id: str
    style: str
    motion_class: str
    instance_map: np.ndarray  # (T, H, W) uint16
    bbox: np.ndarray  # (N, T, 4) int32
    centroid: np.ndarray  # (N, T, 2) float32
    area: np.ndarray  # (N, T) int32
    position: np.ndarray  # (N, T, 2) float32
    camera_affine: np.ndarray  # (T, 2, 3) float32
    camera_motion: np.ndarray  # (T, 3) float32
    objects: list[dict[str, Any]]
    interactions: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def visible(self) -> np.ndarray:  # (N, T) bool
        return self.area > 0

    @property
    def is_agent(self) -> np.ndarray:  # (N,) bool
        return np.array([o["is_agent"] for o in self.objects], dtype=bool)

    @property
    def categories(self) -> list[str]:
        return [o["category"] for o in self.objects]

    def agent_mask(self) -> np.ndarray:
        """(T, H, W) bool: pixels of moving agents."""
        lut = np.concatenate([[False], self.is_agent])
        return lut[self.instance_map]


def save_truth(path: str | os.PathLike, truth: Truth) -> None:
    """Write a truth file: an .npz whose bytes depend only on the content (fixed zip dates)."""
    meta = dict(truth.meta)
    meta.update(
        format_version=TRUTH_FORMAT_VERSION, clip_id=truth.clip_id, video_id=truth.video_id,
        style=truth.style, motion_class=truth.motion_class, objects=truth.objects,
        interactions=truth.interactions,
    )
    arrays = {
        "instance_map": truth.instance_map.astype(np.uint16),
        "bbox": truth.bbox.astype(np.int32),
        "centroid": truth.centroid.astype(np.float32),
        "area": truth.area.astype(np.int32),
        "position": truth.position.astype(np.float32),
        "camera_affine": truth.camera_affine.astype(np.float32),
        "camera_motion": truth.camera_motion.astype(np.float32),
        "meta_json": np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8),
    }
    write_bytes(path, _deterministic_npz(arrays))


def load_truth(path: str | os.PathLike) -> Truth:
    """Read a truth file written by :func:`save_truth` / :func:`generate_world`."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"cannot read synthetic truth file {path}: {exc}") from exc
    missing = {"instance_map", "bbox", "centroid", "area", "meta_json"} - set(arrays)
    if missing:
        raise ValueError(f"{path} is not a synthetic truth file (missing {sorted(missing)})")
    meta = json.loads(arrays.pop("meta_json").tobytes().decode("utf-8"))
    return Truth(
        clip_id=meta.pop("clip_id"), video_id=meta.pop("video_id"), style=meta.pop("style"),
        motion_class=meta.pop("motion_class"), instance_map=arrays["instance_map"],
        bbox=arrays["bbox"], centroid=arrays["centroid"], area=arrays["area"],
        position=arrays["position"], camera_affine=arrays["camera_affine"],
        camera_motion=arrays["camera_motion"], objects=meta.pop("objects"),
        interactions=meta.pop("interactions"), meta=meta,
    )


def _deterministic_npz(arrays: dict[str, np.ndarray]) -> bytes:
    # np.savez stamps members with the current time; a fixed date makes equal content equal bytes.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for name, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
    return buf.getvalue()



def extract_tracks(instance_map: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-object per-frame box, centroid and area from the instance map."""
    T, H, W = instance_map.shape
    bbox = np.full((n, T, 4), -1, np.int32)
    centroid = np.full((n, T, 2), np.nan, np.float32)
    area = np.zeros((n, T), np.int32)
    yy, xx = np.mgrid[0:H, 0:W]
    xx, yy = xx.ravel(), yy.ravel()
    for t in range(T):
        lab = instance_map[t].ravel().astype(np.int64)
        cnt = np.bincount(lab, minlength=n + 1)[1:]
        sx = np.bincount(lab, weights=xx, minlength=n + 1)[1:]
        sy = np.bincount(lab, weights=yy, minlength=n + 1)[1:]
        area[:, t] = cnt
        seen = cnt > 0
        centroid[seen, t, 0] = sx[seen] / cnt[seen]
        centroid[seen, t, 1] = sy[seen] / cnt[seen]
        fg = lab > 0
        if not fg.any():
            continue
        order = np.argsort(lab[fg], kind="stable")
        ls, xs, ys = lab[fg][order], xx[fg][order], yy[fg][order]
        starts = np.flatnonzero(np.r_[True, ls[1:] != ls[:-1]])
        ids = ls[starts] - 1
        bbox[ids, t, 0] = np.minimum.reduceat(xs, starts)
        bbox[ids, t, 1] = np.minimum.reduceat(ys, starts)
        bbox[ids, t, 2] = np.maximum.reduceat(xs, starts) + 1
        bbox[ids, t, 3] = np.maximum.reduceat(ys, starts) + 1
    return bbox, centroid, area


def find_interactions(
    centroid: np.ndarray, is_agent: np.ndarray, width: int, direction: tuple[float, float] = (1.0, 0.0),
    interaction_distance: float = 0.2, interaction_min_frames: int = 4,
) -> list[dict[str, Any]]:
    """Pairs of agents whose centroids (N, T, 2) stay within ``interaction_distance * width``.

    One entry per maximal run of at least ``interaction_min_frames`` consecutive frames in which
    both are visible and close: ``{"a", "b", "start", "end", "min_distance", "passing"}`` with
    instance ids a < b, end exclusive, and passing = their order along ``direction`` flipped.
    """
    agents = np.flatnonzero(is_agent)
    out = []
    d = np.asarray(direction, np.float64)
    limit = interaction_distance * width
    for ii, a in enumerate(agents):
        for b in agents[ii + 1:]:
            delta = centroid[a].astype(np.float64) - centroid[b]
            dist = np.hypot(delta[:, 0], delta[:, 1])
            close = np.nan_to_num(dist, nan=np.inf) < limit
            if close.sum() < interaction_min_frames:
                continue
            edges = np.diff(np.r_[0, close.astype(np.int8), 0])
            for s, e in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
                if e - s < interaction_min_frames:
                    continue
                along = delta[s:e] @ d
                out.append({"a": int(a + 1), "b": int(b + 1), "start": int(s), "end": int(e),
                            "min_distance": round(float(dist[s:e].min()) / width, 4),
                            "passing": bool(along.min() < 0 < along.max())})
    return out


