"""Compact mask storage: run-length encoded instance-id maps, bit-packed boolean masks, and the
per-clip segmentation file (masks + tracklet table + interactions) the segment stage writes.

A clip's masks are one instance-id map ``labels`` (T, H, W) uint16: 0 = nothing, k = tracklet k.
Instances are disjoint (both backends resolve overlaps before this), so one map holds them all, and
its run-length encoding over the flattened array is small for blob-shaped masks (typically
1-3% of the raw map at 128x96). ``pack_bool``/``unpack_bool`` bit-pack any boolean array (8 pixels
per byte) for masks that must keep overlaps.

File ``<clip_id>.npz`` (read with :func:`load_clip_masks`): ``rle_values`` uint16, ``rle_lengths``
uint32, ``shape`` (3,), ``frame_indices`` (T,) int (which frames of the clip were segmented),
``camera_steps`` (T-1, 2, 3), and ``meta_json`` (uint8 bytes of a JSON object: ``tracklets`` — the
tracklet table, ``interactions``, and ``info``: backend, sampling and sizes).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vjepa_adapt import storage

MASKS_FORMAT_VERSION = 1


def rle_encode(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run-length code of ``labels`` (any shape, C order) -> (values uint16, lengths uint32)."""
    flat = np.asarray(labels).ravel()
    if flat.size == 0:
        return np.zeros(0, np.uint16), np.zeros(0, np.uint32)
    if flat.min() < 0 or flat.max() > np.iinfo(np.uint16).max:
        raise ValueError("labels must be in [0, 65535] for uint16 run-length coding")
    starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
    lengths = np.diff(np.r_[starts, flat.size])
    return flat[starts].astype(np.uint16), lengths.astype(np.uint32)


def rle_decode(values: np.ndarray, lengths: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`rle_encode` -> uint16 array of ``shape``."""
    values, lengths = np.asarray(values), np.asarray(lengths)
    if values.shape != lengths.shape:
        raise ValueError(f"run values and lengths differ in length: {values.shape} vs {lengths.shape}")
    total = int(np.prod(shape)) if len(shape) else 1
    if int(lengths.sum()) != total:
        raise ValueError(f"runs cover {int(lengths.sum())} elements, shape {tuple(shape)} needs {total}")
    return np.repeat(values.astype(np.uint16), lengths.astype(np.int64)).reshape(shape)


def pack_bool(mask: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """Bit-pack a boolean array -> (uint8 bytes, shape)."""
    mask = np.asarray(mask, dtype=bool)
    return np.packbits(mask.ravel()), mask.shape


def unpack_bool(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`pack_bool`."""
    n = int(np.prod(shape)) if len(shape) else 1
    return np.unpackbits(np.asarray(packed, np.uint8), count=n).astype(bool).reshape(shape)


@dataclass
class ClipMasks:
    """Segmentation of one clip: what the segment stage stores and factorize reads."""

    clip_id: str
    labels: np.ndarray  # (T, H, W) uint16, 0 = none, k = tracklet id k
    frame_indices: np.ndarray  # (T,) int: which frames of the clip (or its window) were segmented
    tracklets: list[dict[str, Any]]  # the tracklet table: id, role, first, last, frames, category, ...
    interactions: list[dict[str, Any]] = field(default_factory=list)  # a, b (tracklet ids), start, end (exclusive)
    camera_steps: np.ndarray | None = None  # (T-1, 2, 3) frame t-1 -> t
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def agent_ids(self) -> list[int]:
        return [int(t["id"]) for t in self.tracklets if t.get("role") == "agent"]

    @property
    def layout_ids(self) -> list[int]:
        return [int(t["id"]) for t in self.tracklets if t.get("role") != "agent"]

    def agent_mask(self) -> np.ndarray:
        """(T, H, W) bool: pixels of agent tracklets."""
        lut = np.zeros(int(self.labels.max(initial=0)) + 1, dtype=bool)
        for i in self.agent_ids:
            if i < len(lut):
                lut[i] = True
        return lut[self.labels]


def save_clip_masks(path: str | os.PathLike, masks: ClipMasks) -> None:
    """Write one clip's masks atomically (see the module doc for the members)."""
    storage.write_bytes(path, clip_masks_bytes(masks))


def clip_masks_bytes(masks: ClipMasks) -> bytes:
    """The bytes of one clip's masks file (what :func:`save_clip_masks` writes; a segment worker
    returns them to the process that writes the run's files)."""
    values, lengths = rle_encode(masks.labels)
    meta = {"format_version": MASKS_FORMAT_VERSION, "clip_id": masks.clip_id, "tracklets": masks.tracklets,
            "interactions": masks.interactions, "info": masks.info}
    steps = masks.camera_steps if masks.camera_steps is not None else np.zeros((0, 2, 3))
    buf = io.BytesIO()
    np.savez_compressed(
        buf, rle_values=values, rle_lengths=lengths, shape=np.asarray(masks.labels.shape, np.int64),
        frame_indices=np.asarray(masks.frame_indices, np.int64), camera_steps=np.asarray(steps, np.float32),
        meta_json=np.frombuffer(json.dumps(meta, default=_plain).encode("utf-8"), np.uint8))
    return buf.getvalue()


def _plain(obj: Any) -> Any:
    # numpy scalars/arrays in the tracklet table -> plain JSON values
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def load_clip_masks(path: str | os.PathLike) -> ClipMasks:
    """Read a file written by :func:`save_clip_masks`."""
    with np.load(path, allow_pickle=False) as z:
        shape = tuple(int(s) for s in z["shape"])
        labels = rle_decode(z["rle_values"], z["rle_lengths"], shape)
        meta = json.loads(z["meta_json"].tobytes().decode("utf-8"))
        frame_indices = z["frame_indices"].astype(np.int64)
        steps = z["camera_steps"].astype(np.float64)
    return ClipMasks(clip_id=meta["clip_id"], labels=labels, frame_indices=frame_indices,
                     tracklets=meta["tracklets"], interactions=meta["interactions"],
                     camera_steps=steps if len(steps) else None, info=meta.get("info", {}))


def labels_from_instances(masks: np.ndarray, ids: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray:
    """Disjoint id map (H, W) uint16 from possibly overlapping instance masks (N, H, W).

    Where masks overlap, the higher-scoring instance keeps the pixel (ties: the first listed);
    ``ids`` (N,) are the values written (>= 1).
    """
    masks = np.asarray(masks, dtype=bool)
    n = len(masks)
    out = np.zeros(masks.shape[1:], np.uint16)
    if n == 0:
        return out
    order = np.arange(n) if scores is None else np.argsort(-np.asarray(scores, np.float64), kind="stable")
    for i in order[::-1]:  # lowest first, so the best is painted last and wins
        out[masks[i]] = int(ids[i])
    return out
