"""The 23-D per-clip motion feature vector (SPEC Ch 9, m04d) and its horizontal-flip mirror.

Conventions: flow is (dx, dy) in pixels per frame at the analysed resolution, image y points
down, angle = atan2(dy, dx). So angle 0 is rightwards, -pi/2 upwards, +pi/2 downwards, +-pi leftwards.

Direction bins split [-pi, pi) into 8 half-open sectors: bin i = [-pi + i*pi/4, -pi + (i+1)*pi/4).
Grouped by true image direction: left = bins 0, 7; up = bins 1, 2; right = bins 3, 4; down = 5, 6.

Feature layout (index: meaning):

- 0-2   flow magnitude mean, std (population), max -- over every pixel of every pair pooled
        (P*H*W per-pixel magnitudes |(dx, dy)|).
- 3-10  8-bin direction histogram of the flow, MAGNITUDE-WEIGHTED, normalised to sum 1.
        Weighting by magnitude is deliberate: in static regions (most pixels of most street clips)
        the flow is sub-pixel noise whose angle is random; counted unweighted, those pixels flatten
        every histogram towards uniform and bury the direction of the few moving things.
- 11-12 camera motion x, y: median over pairs of each pair's per-channel median flow. The median
        over pixels is the motion of the majority of the image, i.e. the background/ego-motion
        whenever moving agents cover less than half of the frame.
- 13-14 foreground magnitude mean, max: magnitude of (flow - that pair's per-channel median),
        pooled over all pixels of all pairs. For a static camera and an object covering a share c
        of the frame moving k px/frame, the mean is ~ k * c.
- 15-22 8-bin direction histogram of the foreground flow, magnitude-weighted, normalised.

Either histogram with zero total weight (a perfectly still clip, or no foreground flow at all) is
the uniform 1/8 vector: "no direction" rather than a fake direction, and still a distribution.

Ties: an angle exactly on a bin edge (exact axis-aligned or exact diagonal flow -- common in
synthetic clips and hand-made flow, rare in real flow) gives half its weight to each of the two bins
sharing that edge. Without this, the half-open convention sends pure-right flow (angle 0) to bin 4
but pure-left flow (angle pi == -pi) to bin 0 instead of bin 7, its mirror image, and the
histogram would not be exactly flip-equivariant.

Horizontal flip: dx -> -dx, so angle -> pi - angle, which maps bin i to bin (3 - i) mod 8
(right 3, 4 <-> left 0, 7; up 1 <-> 2; down 5 <-> 6); camera x is negated; magnitudes are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from vjepa_adapt.motion.flow import compute_flow_batch

NUM_FEATURES = 23
NUM_BINS = 8
FEATURE_NAMES: tuple[str, ...] = (
    ("mag_mean", "mag_std", "mag_max")
    + tuple(f"dir_bin{i}" for i in range(NUM_BINS))
    + ("camera_x", "camera_y", "fg_mag_mean", "fg_mag_max")
    + tuple(f"fg_dir_bin{i}" for i in range(NUM_BINS))
)
# Index slices into the vector, named so callers never hard-code numbers.
MAG_MEAN, MAG_STD, MAG_MAX = 0, 1, 2
DIR_HIST = slice(3, 11)
CAMERA_X, CAMERA_Y = 11, 12
FG_MAG_MEAN, FG_MAG_MAX = 13, 14
FG_DIR_HIST = slice(15, 23)

# bin i -> its mirror bin (3 - i) mod 8; an involution, so it is also the inverse permutation.
MIRROR_BIN = tuple((3 - i) % NUM_BINS for i in range(NUM_BINS))  # (3, 2, 1, 0, 7, 6, 5, 4)


def select_pair_indices(num_frames_in_clip: int, num_pairs: int = 16) -> list[int]:
    """Start indices i of the adjacent-frame pairs (i, i+1), spread evenly over the clip.

    The first pair starts at frame 0 and the last ends at the clip's last frame. A clip with fewer
    than ``num_pairs`` + 1 frames yields every pair it has (fewer than ``num_pairs``), not duplicates.
    """
    if num_pairs < 1:
        raise ValueError(f"num_pairs must be >= 1, got {num_pairs}")
    if num_frames_in_clip < 2:
        raise ValueError(f"a clip needs at least 2 frames for optical flow, got {num_frames_in_clip}")
    last_start = num_frames_in_clip - 2
    if num_pairs == 1:
        return [last_start // 2]
    starts = np.round(np.linspace(0, last_start, num_pairs)).astype(int)
    return sorted(set(starts.tolist()))


def pair_frame_indices(starts: Sequence[int]) -> list[int]:
    """The sorted distinct frame indices to decode for pairs starting at ``starts``."""
    return sorted({i for s in starts for i in (s, s + 1)})


def pairs_from_frames(
    frames: Sequence[np.ndarray] | np.ndarray, frame_indices: Sequence[int], starts: Sequence[int]
) -> np.ndarray:
    """Arrange decoded frames (in ``frame_indices`` order) into pairs -> (P, 2, H, W, 3)."""
    pos = {int(f): k for k, f in enumerate(frame_indices)}
    missing = [s for s in starts if s not in pos or s + 1 not in pos]
    if missing:
        raise ValueError(f"frames for pairs starting at {missing[:5]} were not decoded")
    return np.stack([np.stack([frames[pos[s]], frames[pos[s + 1]]]) for s in starts])


def pairs_from_clip(frames: np.ndarray, num_pairs: int = 16) -> np.ndarray:
    """A whole decoded clip (T, H, W, 3) -> its evenly spread adjacent pairs (P, 2, H, W, 3)."""
    frames = np.asarray(frames)
    starts = np.asarray(select_pair_indices(len(frames), num_pairs))
    return np.stack([frames[starts], frames[starts + 1]], axis=1)


# Octant lookup without trigonometry: key = 4*[dy > 0] + 2*[dx > 0] + [|dx| > |dy|] -> bin index.
# E.g. key 3 (dy <= 0, dx > 0, flatter than diagonal) is angle in (-pi/4, 0) -> bin 3.
_OCTANT_BIN = np.array([1, 0, 2, 3, 6, 7, 5, 4], dtype=np.int64)


def direction_histogram(dx: np.ndarray, dy: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted 8-bin histogram of atan2(dy, dx) over [-pi, pi), normalised (uniform if empty).

    The sector of each vector comes from sign and |dx| vs |dy| comparisons (exact, and ~10x faster
    than atan2 on millions of pixels). The key is computed twice, once with strict and once with
    non-strict comparisons: off an edge both agree; on an edge (dx = 0, dy = 0 or |dx| = |dy|) they
    name the two bins sharing that edge, and each gets half the weight (see the module docstring).
    """
    dx = np.asarray(dx).ravel()
    dy = np.asarray(dy).ravel()
    w = np.asarray(weights, dtype=np.float64).ravel()
    ax, ay = np.abs(dx), np.abs(dy)
    strict = 4 * (dy > 0) + 2 * (dx > 0) + (ax > ay)
    loose = 4 * (dy >= 0) + 2 * (dx >= 0) + (ax >= ay)
    hist = 0.5 * (np.bincount(_OCTANT_BIN[strict], weights=w, minlength=NUM_BINS)
                  + np.bincount(_OCTANT_BIN[loose], weights=w, minlength=NUM_BINS))
    total = hist.sum()
    if not total > 0:
        return np.full(NUM_BINS, 1.0 / NUM_BINS)
    return hist / total


def features_from_flows(flows: np.ndarray) -> np.ndarray:
    """(P, H, W, 2) flow of P pairs -> (23,) float32 feature vector (layout in the module doc).

    Per-pixel work runs in float32 (the flow's own precision); sums accumulate in float64.
    """
    flows = np.asarray(flows, dtype=np.float32)
    if flows.ndim == 3:
        flows = flows[None]
    if flows.ndim != 4 or flows.shape[-1] != 2 or flows.shape[0] < 1:
        raise ValueError(f"flows must be (P, H, W, 2) with P >= 1, got {flows.shape}")
    if not np.isfinite(flows).all():
        raise ValueError("optical flow contains NaN or inf")
    dx, dy = flows[..., 0], flows[..., 1]
    mag = np.hypot(dx, dy)  # (P, H, W)

    pair_median = np.median(flows.reshape(flows.shape[0], -1, 2), axis=1)  # (P, 2)
    camera = np.median(pair_median.astype(np.float64), axis=0)  # (2,)
    fg = flows - pair_median[:, None, None, :]  # (P, H, W, 2)
    fg_mag = np.hypot(fg[..., 0], fg[..., 1])

    out = np.empty(NUM_FEATURES, dtype=np.float64)
    out[MAG_MEAN], out[MAG_STD], out[MAG_MAX] = mag.mean(dtype=np.float64), mag.std(dtype=np.float64), mag.max()
    out[DIR_HIST] = direction_histogram(dx, dy, mag)
    out[CAMERA_X], out[CAMERA_Y] = camera
    out[FG_MAG_MEAN], out[FG_MAG_MAX] = fg_mag.mean(dtype=np.float64), fg_mag.max()
    out[FG_DIR_HIST] = direction_histogram(fg[..., 0], fg[..., 1], fg_mag)
    return out.astype(np.float32)


def resize_max_side(frame: np.ndarray, max_side: int | None) -> np.ndarray:
    """Downscale (never upscale) so that max(H, W) <= max_side; area interpolation."""
    if max_side is None:
        return frame
    h, w = frame.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return frame
    size = (max(2, round(w * scale)), max(2, round(h * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def extract_motion_features(
    frames: np.ndarray | Sequence[tuple[np.ndarray, np.ndarray]],
    backend: str = "farneback",
    max_side: int | None = None,
    device: str = "cuda",
) -> np.ndarray:
    """Frame pairs -> (23,) float32 motion features.

    ``frames``: (P, 2, H, W, 3) uint8 RGB, or a list of P (prev, next) frames. ``max_side``:
    downscale frames first so the longer side is at most this (magnitudes are then in px/frame at
    that size -- keep it fixed across a dataset). ``device`` is for the RAFT backends only.
    """
    if isinstance(frames, np.ndarray):
        if frames.ndim != 5 or frames.shape[1] != 2:
            raise ValueError(f"frames must be (P, 2, H, W, 3), got shape {frames.shape}")
        pairs = [(frames[p, 0], frames[p, 1]) for p in range(frames.shape[0])]
    else:
        pairs = [tuple(p) for p in frames]
        if any(len(p) != 2 for p in pairs):
            raise ValueError("each element of frames must be a (prev, next) pair")
    if not pairs:
        raise ValueError("no frame pairs given")
    pairs = [(resize_max_side(np.asarray(a), max_side), resize_max_side(np.asarray(b), max_side)) for a, b in pairs]
    flows = compute_flow_batch(pairs, backend=backend, device=device)  # (P, H, W, 2)
    return features_from_flows(flows)


def mirror_features(f: np.ndarray) -> np.ndarray:
    """Features of the horizontally flipped clip: (..., 23) -> (..., 23); also (..., 13).

    The first 13 dims (magnitudes, histogram, camera) are closed under the flip, so the 13-D
    motion_aux target can be mirrored on its own. Works on raw (not z-scored) features.
    """
    f = np.asarray(f)
    d = f.shape[-1]
    if d not in (13, NUM_FEATURES):
        raise ValueError(f"motion features have 13 or 23 dims in the last axis, got {d}")
    out = f.copy()
    out[..., DIR_HIST] = f[..., 3 + np.array(MIRROR_BIN)]
    out[..., CAMERA_X] = -f[..., CAMERA_X]
    if d == NUM_FEATURES:
        out[..., FG_DIR_HIST] = f[..., 15 + np.array(MIRROR_BIN)]
    return out
