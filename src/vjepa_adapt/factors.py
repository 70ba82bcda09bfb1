"""The factor datasets of Ch 11 (m11), built from a clip and its segmentation:

- **D_L** ``layout``: agents removed. Their mask is dilated and feathered, and under it the frame is
  replaced by a strong blur of the frame *without* the agents (a normalised convolution: blur of
  the frame x weight over blur of the weight, weight 0 on agents), so the hole fills with the
  colours around it rather than a smear of the agent. Kept when agents cover at most
  ``max_agent_coverage_layout`` of the frame (mean over frames).
- **D_A** ``agent``: background suppressed — greyed and darkened to ``background_level`` of its
  brightness, with a feathered edge around the (slightly dilated) agent mask. Kept when agents cover
  at least ``min_agent_coverage_agent``.
- **D_I** ``interaction``: one tube per interacting agent pair (up to ``max_tubes`` per clip, the
  longest first): the union box of both agents over the interaction's window, plus ``tube_margin``
  of its size on every side, grown to the frame's aspect ratio and clamped to the frame; the
  window's frames are resampled evenly to the clip length (:func:`resample_indices`: every output
  frame comes from inside the real window — a short window is stretched evenly, never padded with
  its last frame).

Each factor clip is ``num_frames`` frames at the segmented frames' size. Its **motion_aux target**
is the 23-D motion vector of :mod:`vjepa_adapt.motion` computed on the factor's own frames at the
segmented rate (before the temporal resampling; for D_I on the crop over the window), so a
surgery trainer can z-score them with train statistics like the raw clips' targets.

Materialised (``factors.materialise``): the factor clips are written as MP4 files with a manifest
the clip loader reads (``factorize/manifest.jsonl``: clip_id, path, video_id = the source video, so
splits by source video carry over). Streamed: the manifest holds the source clip and the factor's
parameters, and :func:`build_factor_clip` rebuilds the frames while training.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vjepa_adapt import storage
from vjepa_adapt.progress import get_logger
from vjepa_adapt.segmentation.masks import ClipMasks
from vjepa_adapt.stage_result import StageResult

log = get_logger("factorize")

LAYOUT, AGENT, INTERACTION = "layout", "agent", "interaction"
KINDS = (LAYOUT, AGENT, INTERACTION)  # the names of the data streams in train.stages[].mixture
MANIFEST_FILE, MOTION_FILE = "manifest.jsonl", "motion.npz"


@dataclass(frozen=True)
class FactorParams:
    """The ``factors.*`` settings (fractions are of the frame width unless said otherwise)."""

    num_frames: int = 16
    max_agent_coverage_layout: float = 0.7
    min_agent_coverage_agent: float = 0.05
    dilate: float = 0.02
    feather: float = 0.02
    blur_sigma: float = 0.06
    background_level: float = 0.3  # of the grey value
    tube_margin: float = 0.25  # of the union box's larger side
    max_tubes: int = 4


@dataclass
class FactorSpec:
    """What one factor clip is made of (everything :func:`build_factor_clip` needs)."""

    kind: str
    clip_id: str  # the factor clip's id
    source_clip: str
    window: tuple[int, int]  # [start, end) in the segmented frames
    coverage: float  # agents' mean share of the frame over the window
    pair: tuple[int, int] | None = None  # D_I: the two tracklet ids
    box: tuple[int, int, int, int] | None = None  # D_I: crop (x0, y0, x1, y1), x1/y1 exclusive
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------ pure builders


def agent_coverage(agent_mask: np.ndarray) -> float:
    """Mean share of the frame covered by agents, (T, H, W) bool -> float."""
    m = np.asarray(agent_mask, bool)
    return float(m.mean()) if m.size else 0.0


def _odd(k: float) -> int:
    k = max(1, int(round(k)))
    return k if k % 2 else k + 1


def soft_mask(mask: np.ndarray, dilate_px: float, feather_px: float) -> np.ndarray:
    """(H, W) bool -> (H, W) float32 in [0, 1]: 1 on the dilated mask, falling off over ``feather_px``."""
    m = np.asarray(mask, np.uint8)
    if dilate_px >= 0.5:
        m = cv2.dilate(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (_odd(2 * dilate_px), _odd(2 * dilate_px))))
    soft = m.astype(np.float32)
    if feather_px > 0:
        soft = cv2.GaussianBlur(soft, (0, 0), sigmaX=feather_px)
        soft = np.maximum(soft, m.astype(np.float32))  # the dilated mask itself stays fully covered
    return np.clip(soft, 0.0, 1.0)


def remove_agents(frames: np.ndarray, agent_mask: np.ndarray, dilate_px: float, feather_px: float,
                  blur_sigma_px: float) -> np.ndarray:
    """D_L: (T, H, W, 3) uint8 with agents blurred away (see the module doc)."""
    out = np.empty_like(frames)
    for t, (f, m) in enumerate(zip(frames, agent_mask)):
        soft = soft_mask(m, dilate_px, feather_px)
        if not soft.any():
            out[t] = f
            continue
        keep = (soft < 1e-3).astype(np.float32)  # weight: only pixels clear of agents fill the hole
        ff = f.astype(np.float32)
        fill = _blur_fill(ff, keep, blur_sigma_px)
        blend = ff * (1 - soft[..., None]) + fill * soft[..., None]
        out[t] = np.clip(blend + 0.5, 0, 255).astype(np.uint8)
    return out


def _blur_fill(frame: np.ndarray, keep: np.ndarray, sigma: float) -> np.ndarray:
    """Normalised-convolution fill: blur(frame x keep) / blur(keep), at a reduced size.

    The result is smooth at the scale of ``sigma``, so it is computed on a frame downscaled until
    sigma is ~3 px and resized back (measured at 512x384, sigma 31 px: the blurs of a clip take
    0.16 s instead of 1.6 s). Holes wider than the blur are filled from a 4x larger blur; with no
    pixel to fill from, the frame's plain blur is used.
    """
    h, w = keep.shape
    scale = min(1.0, 3.0 / sigma) if sigma > 0 else 1.0
    size = (max(4, round(w * scale)), max(4, round(h * scale)))
    small_f = cv2.resize(frame * keep[..., None], size, interpolation=cv2.INTER_AREA)
    small_k = cv2.resize(keep, size, interpolation=cv2.INTER_AREA)
    s = sigma * size[0] / w
    fill = None
    for sig in (s, 4 * s):
        num = cv2.GaussianBlur(small_f, (0, 0), sigmaX=sig)
        den = cv2.GaussianBlur(small_k, (0, 0), sigmaX=sig)[..., None]
        est = num / np.maximum(den, 1e-6)
        fill = est if fill is None else np.where(den > 1e-3, fill, est)
        if (den > 1e-3).all():
            break
    if not keep.any():
        fill = cv2.GaussianBlur(cv2.resize(frame, size, interpolation=cv2.INTER_AREA), (0, 0), sigmaX=s)
    return cv2.resize(fill, (w, h), interpolation=cv2.INTER_LINEAR)


def suppress_background(frames: np.ndarray, agent_mask: np.ndarray, dilate_px: float, feather_px: float,
                        level: float) -> np.ndarray:
    """D_A: (T, H, W, 3) uint8 with the background greyed and darkened to ``level``, feathered edge."""
    out = np.empty_like(frames)
    for t, (f, m) in enumerate(zip(frames, agent_mask)):
        soft = soft_mask(m, dilate_px, feather_px)[..., None]
        grey = cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).astype(np.float32)[..., None] * level
        blend = f.astype(np.float32) * soft + grey * (1 - soft)
        out[t] = np.clip(blend + 0.5, 0, 255).astype(np.uint8)
    return out


def resample_indices(start: int, end: int, length: int) -> np.ndarray:
    """``length`` indices spread evenly over the window [start, end).

    Output frame i comes from window frame ``floor((i + 0.5) * n / length)`` (n = end - start): the
    window is cut into ``length`` equal parts and each gives the frame under its centre. A window
    shorter than ``length`` is stretched (every frame repeated n/length times, +-1, the first and
    last ones included); a longer one is subsampled. Every index lies inside the window.
    """
    if end <= start:
        raise ValueError(f"empty window [{start}, {end})")
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    n = end - start
    return start + np.floor((np.arange(length) + 0.5) * n / length).astype(np.int64)


def tube_box(union: np.ndarray, margin: float, height: int, width: int) -> tuple[int, int, int, int]:
    """Crop box around the (H, W) bool ``union``: + margin x its larger side, frame aspect, inside the frame."""
    ys, xs = np.nonzero(union)
    if not len(xs):
        return 0, 0, width, height
    x0, x1, y0, y1 = float(xs.min()), float(xs.max() + 1), float(ys.min()), float(ys.max() + 1)
    pad = margin * max(x1 - x0, y1 - y0)
    x0, x1, y0, y1 = x0 - pad, x1 + pad, y0 - pad, y1 + pad
    bw, bh = x1 - x0, y1 - y0
    aspect = width / height
    if bw / bh < aspect:  # grow the narrower side to the frame's aspect ratio
        extra = bh * aspect - bw
        x0, x1 = x0 - extra / 2, x1 + extra / 2
    else:
        extra = bw / aspect - bh
        y0, y1 = y0 - extra / 2, y1 + extra / 2
    bw, bh = min(x1 - x0, width), min(y1 - y0, height)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    x0 = int(round(np.clip(cx - bw / 2, 0, width - bw)))
    y0 = int(round(np.clip(cy - bh / 2, 0, height - bh)))
    return x0, y0, min(width, x0 + max(2, int(round(bw)))), min(height, y0 + max(2, int(round(bh))))


def crop_frames(frames: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    """Crop (T, H, W, 3) to ``box`` and resize to ``size`` = (width, height)."""
    x0, y0, x1, y1 = box
    return np.stack([cv2.resize(np.ascontiguousarray(f[y0:y1, x0:x1]), size, interpolation=cv2.INTER_LINEAR)
                     for f in frames])


# ------------------------------------------------------------------------------------ planning


def plan_factors(masks: ClipMasks, params: FactorParams) -> tuple[list[FactorSpec], dict[str, str]]:
    """The factor clips of one clip, and why any kind was dropped ({kind: reason})."""
    n, h, w = masks.labels.shape
    agents = masks.agent_mask()
    cov = agent_coverage(agents)
    specs: list[FactorSpec] = []
    dropped: dict[str, str] = {}
    if cov <= params.max_agent_coverage_layout:
        specs.append(FactorSpec(LAYOUT, f"{masks.clip_id}__layout", masks.clip_id, (0, n), round(cov, 5)))
    else:
        dropped[LAYOUT] = f"agent coverage {cov:.2f} > {params.max_agent_coverage_layout}"
    if cov >= params.min_agent_coverage_agent:
        specs.append(FactorSpec(AGENT, f"{masks.clip_id}__agent", masks.clip_id, (0, n), round(cov, 5)))
    else:
        dropped[AGENT] = f"agent coverage {cov:.3f} < {params.min_agent_coverage_agent}"
    inters = sorted(masks.interactions, key=lambda i: (-(i["end"] - i["start"]), i["a"], i["b"], i["start"]))
    for k, it in enumerate(inters[:params.max_tubes]):
        a, b, s, e = int(it["a"]), int(it["b"]), int(it["start"]), int(it["end"])
        win = masks.labels[s:e]
        union = ((win == a) | (win == b)).any(axis=0)
        box = tube_box(union, params.tube_margin, h, w)
        x0, y0, x1, y1 = box
        sub = agents[s:e, y0:y1, x0:x1]
        specs.append(FactorSpec(INTERACTION, f"{masks.clip_id}__inter{k}", masks.clip_id, (s, e),
                                round(agent_coverage(sub), 5), pair=(a, b), box=box))
    if not masks.interactions:
        dropped[INTERACTION] = "no interactions"
    return specs, dropped


def build_factor_frames(frames: np.ndarray, masks: ClipMasks, spec: FactorSpec, params: FactorParams,
                        full_rate: bool = False) -> np.ndarray:
    """The factor clip from the segmented frames (T, H, W, 3) uint8 -> (num_frames, H, W, 3) uint8.

    ``full_rate``: every frame of the window instead of the resampled ``num_frames`` (the motion
    target is computed on these).
    """
    frames = np.asarray(frames)
    if frames.shape[:3] != masks.labels.shape:
        raise ValueError(f"frames {frames.shape[:3]} do not match the masks {masks.labels.shape} of {masks.clip_id}")
    _, h, w = masks.labels.shape
    s, e = spec.window
    idx = np.arange(s, e) if full_rate else resample_indices(s, e, params.num_frames)
    sel, agents = frames[idx], masks.agent_mask()[idx]
    px = lambda f: f * w
    if spec.kind == LAYOUT:
        return remove_agents(sel, agents, px(params.dilate), px(params.feather), px(params.blur_sigma))
    if spec.kind == AGENT:
        return suppress_background(sel, agents, px(params.dilate) / 2, px(params.feather), params.background_level)
    if spec.kind == INTERACTION:
        if spec.box is None:
            raise ValueError(f"{spec.clip_id}: an interaction tube needs its box")
        return crop_frames(sel, spec.box, (w, h))
    raise ValueError(f"unknown factor kind {spec.kind!r}; kinds: {', '.join(KINDS)}")


def build_factor_clip(clip_or_frames: Any, masks: ClipMasks, spec: FactorSpec | str,
                      params: FactorParams | None = None, full_rate: bool = False) -> np.ndarray:
    """A factor clip on the fly (streaming): from a :class:`~vjepa_adapt.data.clips.Clip` (decoded here
    with the segment stage's sampling) or its already decoded segmented frames.

    ``spec``: a :class:`FactorSpec` (e.g. from the factor manifest via :func:`spec_from_row`), or a
    kind name — ``layout``/``agent`` for the whole clip, ``interaction`` for its first tube.
    """
    params = params or FactorParams()
    if isinstance(spec, str):
        plans, _ = plan_factors(masks, params)
        found = [p for p in plans if p.kind == spec] or _forced_plan(masks, spec)
        spec = found[0]
    frames = clip_or_frames
    if not isinstance(frames, np.ndarray):
        from vjepa_adapt.data.clips import open_clip
        from vjepa_adapt.segmentation.stage import Sampling, read_clip_frames

        sampling = Sampling(int(masks.info.get("num_frames", masks.labels.shape[0])), masks.info.get("short_side"))
        frames, idx = read_clip_frames(open_clip(frames), sampling, frames.start, frames.end)
        if not np.array_equal(idx, masks.frame_indices):
            raise ValueError(f"{masks.clip_id}: decoded frames {idx.tolist()[:4]}... differ from the segmented ones")
    return build_factor_frames(frames, masks, spec, params, full_rate=full_rate)


def _forced_plan(masks: ClipMasks, kind: str) -> list[FactorSpec]:
    if kind == INTERACTION:
        raise ValueError(f"{masks.clip_id} has no interaction to build a tube from")
    n = masks.labels.shape[0]
    return [FactorSpec(kind, f"{masks.clip_id}__{kind}", masks.clip_id, (0, n), agent_coverage(masks.agent_mask()))]


def spec_to_row(spec: FactorSpec) -> dict[str, Any]:
    row = asdict(spec)
    row["window"] = list(spec.window)
    row["pair"] = list(spec.pair) if spec.pair else None
    row["box"] = list(spec.box) if spec.box else None
    return row


def spec_from_row(row: dict[str, Any]) -> FactorSpec:
    """The :class:`FactorSpec` of one factor manifest row."""
    return FactorSpec(kind=row["kind"], clip_id=row["clip_id"], source_clip=row["source_clip"],
                      window=tuple(row["window"]), coverage=float(row["coverage"]),
                      pair=tuple(row["pair"]) if row.get("pair") else None,
                      box=tuple(row["box"]) if row.get("box") else None, extra=row.get("extra") or {})


def factor_motion(frames_full_rate: np.ndarray, num_pairs: int, backend: str, max_side: int | None,
                  device: str = "cpu") -> np.ndarray:
    """The 23-D motion vector of a factor clip's own frames (adjacent pairs at the segmented rate)."""
    from vjepa_adapt.motion.features import extract_motion_features, pairs_from_clip

    return extract_motion_features(pairs_from_clip(frames_full_rate, num_pairs), backend=backend,
                                   max_side=max_side, device=device)


# ------------------------------------------------------------------------------------ the stage


@dataclass(frozen=True)
class MotionSettings:
    num_pairs: int = 16
    backend: str = "farneback"
    max_side: int | None = None
    device: str = "cpu"


# The stage is clip-parallel (vjepa_adapt.engine): a worker plans, builds and describes the factor
# clips of a chunk of segmented clips and returns one part holding everything the driver writes (it
# reads the clips and segment's masks files, never writes the run folder); merge_factor_parts writes
# the files from the parts, in chunk order — the same bytes on every engine.


def make_factorize_work(params: FactorParams, materialise: bool, motion: MotionSettings, fps: float,
                        segmented: Callable[[Any], tuple[ClipMasks, np.ndarray]], split_of: Callable[[Any], Any],
                        skip_errors: tuple[type[BaseException], ...]):
    """``work(chunks) -> (chunk index, part)``; ``segmented(clip)`` -> (its masks, its segmented frames),
    ``split_of(clip)`` -> its split. A part:

    - ``rows`` (m,) str: the manifest rows of the chunk's factor clips (JSON), in clip order;
    - ``features`` (m, 23) float32: their motion_aux targets;
    - ``videos_data`` (bytes,) uint8 + ``videos_offsets`` (m + 1,) int64: their MP4 files (materialised;
      streamed: all empty), row i's file is ``videos_data[off[i]:off[i + 1]]``;
    - ``done_ids`` (n,) str and ``build_seconds`` (n,) float64: the clips factorised;
    - ``dropped`` (len(KINDS),) int64: how many clips dropped each kind;
    - ``skipped_ids``, ``skipped_reasons`` (str): the bad clips and why.

    The sample grids are not in it: the driver rebuilds the few clips they show.
    """
    from vjepa_adapt.data.encode import encode_video
    from vjepa_adapt.engine import clips_of, pack_bytes
    from vjepa_adapt.motion.features import FEATURE_NAMES

    def work(chunks):
        acc = _new_acc()
        for chunk, c, last in clips_of(chunks, "factorize"):
            try:
                masks, frames = segmented(c)
                t0 = time.perf_counter()
                specs, why = plan_factors(masks, params)
                rows, feats, videos = [], [], []
                for spec in specs:
                    full = build_factor_frames(frames, masks, spec, params, full_rate=True)
                    feats.append(factor_motion(full, motion.num_pairs, motion.backend, motion.max_side, motion.device))
                    row = {**spec_to_row(spec), "video_id": c.video_id, "split": split_of(c),
                           "source_frames": [int(masks.frame_indices[spec.window[0]]),
                                             int(masks.frame_indices[spec.window[1] - 1])],
                           "materialised": materialise}
                    if materialise:
                        clip = full[resample_indices(*spec.window, params.num_frames) - spec.window[0]]
                        videos.append(encode_video(clip, fps=fps))
                        row["path"] = f"{spec.kind}/{spec.clip_id}.mp4"
                    else:
                        row["path"] = c.path  # streamed: rebuilt from the source clip + these parameters
                    rows.append(row)
                seconds = time.perf_counter() - t0
            except skip_errors as err:
                reason = f"{type(err).__name__}: {err}"
                log.warning("factorize: skipping clip %s: %s", c.clip_id, reason)
                acc["skipped"].append((c.clip_id, reason))
            else:
                for kind in why:
                    acc["dropped"][KINDS.index(kind)] += 1
                acc["rows"] += rows
                acc["feats"] += feats
                acc["videos"] += videos
                acc["done"].append((c.clip_id, seconds))
            if last:
                yield chunk.index, {
                    "rows": np.asarray([json.dumps(r) for r in acc["rows"]], dtype=str),
                    "features": (np.stack(acc["feats"]).astype(np.float32) if acc["feats"]
                                 else np.zeros((0, len(FEATURE_NAMES)), np.float32)),
                    **pack_bytes(acc["videos"], "videos"),
                    "done_ids": np.asarray([i for i, _ in acc["done"]], dtype=str),
                    "build_seconds": np.asarray([t for _, t in acc["done"]], np.float64),
                    "dropped": np.asarray(acc["dropped"], np.int64),
                    "skipped_ids": np.asarray([i for i, _ in acc["skipped"]], dtype=str),
                    "skipped_reasons": np.asarray([r for _, r in acc["skipped"]], dtype=str),
                }
                acc = _new_acc()

    return work


def _new_acc() -> dict[str, Any]:
    return {"rows": [], "feats": [], "videos": [], "done": [], "dropped": [0] * len(KINDS), "skipped": []}


def merge_factor_parts(parts: Sequence[dict[str, np.ndarray]], params: FactorParams, out_dir: Path,
                       materialise: bool, segmented: Callable[[str], tuple[ClipMasks, np.ndarray]] | None = None,
                       sample_clips: int = 4) -> StageResult:
    """Write the stage's files from the parts (in chunk order): <kind>/<clip>.mp4 (materialised),
    manifest.jsonl, motion.npz, samples_<kind>.png (``segmented(source clip id)`` -> its masks and
    frames, for the few clips the grids show). Bad clips are skipped with their reason."""
    from vjepa_adapt.engine import unpack_bytes
    from vjepa_adapt.motion.features import FEATURE_NAMES

    out_dir = Path(out_dir)
    result = StageResult()
    rows: list[dict[str, Any]] = []
    feats: list[np.ndarray] = []
    dropped = np.zeros(len(KINDS), np.int64)
    seconds: list[float] = []
    for part in parts:
        part_rows = [json.loads(str(r)) for r in part["rows"]]
        videos = unpack_bytes(part, "videos")
        if materialise:
            if len(videos) != len(part_rows):
                raise ValueError(f"factorize part: {len(videos)} videos for {len(part_rows)} rows")
            for row, data in zip(part_rows, videos):
                storage.write_bytes(out_dir / row["path"], data)
        rows += part_rows
        feats.append(part["features"].astype(np.float32).reshape(-1, len(FEATURE_NAMES)))
        dropped += part["dropped"].astype(np.int64)
        seconds += [float(t) for t in part["build_seconds"]]
        for cid, reason in zip(part["skipped_ids"], part["skipped_reasons"]):
            result.skip(str(cid), str(reason))
    result.done = len(seconds)
    storage.write_jsonl(out_dir / MANIFEST_FILE, rows)
    storage.save_npz(out_dir / MOTION_FILE, clip_ids=np.array([r["clip_id"] for r in rows], dtype=str),
                     kinds=np.array([r["kind"] for r in rows], dtype=str),
                     features=(np.concatenate(feats) if feats else np.zeros((0, len(FEATURE_NAMES)), np.float32)),
                     feature_names=np.array(FEATURE_NAMES, dtype=str))
    if segmented is not None and sample_clips:
        for kind, picked in sample_factors(rows, params, segmented, sample_clips).items():
            write_sample_grid(out_dir / f"samples_{kind}.png", kind, picked, params.num_frames)
    counts = {k: sum(r["kind"] == k for r in rows) for k in KINDS}
    result.extra.update({"factor_clips": counts, "dropped": dict(zip(KINDS, dropped.tolist())),
                         "materialised": materialise,
                         "seconds_per_clip": round(sum(seconds) / len(seconds), 4) if seconds else None})
    return result


def sample_factors(rows: Sequence[dict[str, Any]], params: FactorParams,
                   segmented: Callable[[str], tuple[ClipMasks, np.ndarray]],
                   sample_clips: int) -> dict[str, list[tuple[str, np.ndarray, np.ndarray]]]:
    """The sample grids' clips, rebuilt: per kind the first factor clip of each of the first
    ``sample_clips`` source clips (manifest order) -> (factor clip id, source frames, factor frames);
    a tube's crop box is drawn on its source frames."""
    picked: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    for row in rows:
        chosen = picked[row["kind"]]
        if len(chosen) < sample_clips and all(r["source_clip"] != row["source_clip"] for r in chosen):
            chosen.append(row)
    cache: dict[str, tuple[ClipMasks, np.ndarray]] = {}
    out: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = {}
    for kind, chosen in picked.items():
        for row in chosen:
            if row["source_clip"] not in cache:
                cache[row["source_clip"]] = segmented(row["source_clip"])
            masks, frames = cache[row["source_clip"]]
            spec = spec_from_row(row)
            s, e = spec.window
            full = build_factor_frames(frames, masks, spec, params, full_rate=True)
            clip = full[resample_indices(s, e, params.num_frames) - s]
            source = frames[resample_indices(s, e, params.num_frames)].copy()
            if spec.box is not None:  # show where the tube was cut
                for f in source:
                    cv2.rectangle(f, spec.box[:2], (spec.box[2] - 1, spec.box[3] - 1), (255, 255, 0), 1)
            out.setdefault(kind, []).append((spec.clip_id, source, clip))
    return out


def write_sample_grid(path: Path, kind: str, picked: Sequence[tuple[str, np.ndarray, np.ndarray]],
                      num_frames: int, frames_per_clip: int = 6) -> None:
    """Rows of source frames (a tube's crop box drawn in yellow) and the factor clip below them."""
    from vjepa_adapt.data.contact_sheet import SheetRow, write_contact_sheet

    rows = []
    for clip_id, source, clip in picked:
        rows.append(SheetRow(_fit(source), label=f"{clip_id}: source (same frames)"))
        rows.append(SheetRow(_fit(clip), label=f"{clip_id}: {kind}"))
    scale = 2 if rows[0].frames.shape[1] <= 100 else 1
    write_contact_sheet(path, rows, frames_per_clip=min(frames_per_clip, num_frames), scale=scale)


def _fit(frames: np.ndarray, max_height: int = 128) -> np.ndarray:
    h, w = frames.shape[1:3]
    if h <= max_height:
        return frames
    size = (max(2, round(w * max_height / h)), max_height)
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])
