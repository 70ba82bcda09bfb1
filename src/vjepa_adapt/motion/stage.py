"""The motion stage end to end: frames of many clips -> features (with skips) -> files on disk.

Outputs of one run, in ``out_dir`` (all written atomically through :mod:`vjepa_adapt.storage`):

- ``labels.csv``   clip_id,split,label -- kept clips only (the probe's labels)
- ``features.npz`` clip_ids (N,) str, splits (N,) str, features (N, 23) float32, feature_names --
                   every clip that has features, kept or dropped
- ``classes.json`` class list (index = integer label), cut points, counts per split (kept and all),
                   dropped counts, magnitude/direction choice, K, min_count, backend, the flow
                   resolution (max_side: magnitudes are px/frame at that size), skipped clips
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from vjepa_adapt import storage
from vjepa_adapt.errors import BadInputError
from vjepa_adapt.motion.classes import LabelSet, classify_features
from vjepa_adapt.motion.features import (
    FEATURE_NAMES,
    NUM_FEATURES,
    extract_motion_features,
    pair_frame_indices,
    pairs_from_frames,
    select_pair_indices,
)
from vjepa_adapt.progress import get_logger, progress

log = get_logger("motion")

Pairs = Union[np.ndarray, Sequence[tuple[np.ndarray, np.ndarray]]]
# A clip's frames: the (P, 2, H, W, 3) pairs themselves, or a zero-argument callable decoding them
# lazily (so a bad file fails inside the per-clip error handling, and memory holds one clip).
FrameSource = Union[Pairs, Callable[[], Pairs]]

# What counts as "bad input" for one clip: the data layer's VideoError (empty, truncated, not a
# video, too few frames, ...), I/O failures, and frames of the wrong type/shape (ValueError from
# our own checks). Anything else is a bug and propagates.
BASE_SKIP_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, EOFError)


def default_skip_errors() -> tuple[type[BaseException], ...]:
    from vjepa_adapt.data.video import (
        VideoError,  # lazy: keeps this module importable on its own
    )

    return BASE_SKIP_ERRORS + (VideoError,)


LABELS_CSV, FEATURES_NPZ, CLASSES_JSON = "labels.csv", "features.npz", "classes.json"


def read_clip_pairs(
    src: Any,
    num_frames_in_clip: int | None = None,
    num_pairs: int = 16,
    reader: Callable[..., Any] | None = None,
    **read_kwargs: Any,
) -> np.ndarray:
    """Decode just the frames of the clip's flow pairs -> (P, 2, H, W, 3) uint8 RGB.

    ``reader(src, indices, **read_kwargs)`` returns the frames at those indices in order; default
    ``vjepa_adapt.data.video.read_frames_at`` (``read_kwargs``: start, end, short_side, ...).
    ``num_frames_in_clip=None`` probes the file (whole file), or for a ``start``/``end`` window
    takes floor(duration * fps) frames so no index runs past the window.
    """
    if reader is None:
        from vjepa_adapt.data.video import read_frames_at as reader  # noqa: N813 - lazy import
    if num_frames_in_clip is None:
        num_frames_in_clip = count_clip_frames(src, read_kwargs.get("start"), read_kwargs.get("end"))
    starts = select_pair_indices(num_frames_in_clip, num_pairs)
    indices = pair_frame_indices(starts)
    frames = reader(src, indices, **read_kwargs)
    if len(frames) != len(indices):
        raise ValueError(f"asked the video reader for {len(indices)} frames, got {len(frames)} (truncated clip?)")
    return pairs_from_frames(frames, indices, starts)


def count_clip_frames(src: Any, start: float | None = None, end: float | None = None) -> int:
    """Frames in the clip (whole file from the container; a window from its length x fps)."""
    from vjepa_adapt.data.video import probe_video

    info = probe_video(src)
    if start is None and end is None:
        return info.num_frames
    t0 = 0.0 if start is None else start
    t1 = info.duration if end is None else min(end, info.duration)
    return max(0, math.floor((t1 - t0) * info.fps + 1e-6))


@dataclass
class MotionExtraction:
    features: dict[str, np.ndarray]  # clip_id -> (23,) float32
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (clip_id, reason)


def extract_features_for_clips(
    items: Iterable[tuple[str, FrameSource]],
    backend: str = "farneback",
    max_side: int | None = None,
    device: str = "cuda",
    max_bad_share: float | None = None,
    skip_errors: tuple[type[BaseException], ...] | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    total: int | None = None,
) -> MotionExtraction:
    """Motion features for many clips; a bad clip is skipped with its reason, never fatal alone.

    ``max_bad_share``: after the loop, raise :class:`BadInputError` if more than this share of the
    clips was skipped (``None`` = never). ``checkpoint_path``: an .npz of partial results, written
    atomically every ``checkpoint_every`` clips and at the end; if it exists at start, clips already
    in it (computed or skipped) are not redone -- so a killed run loses at most one interval.
    ``skip_errors``: exception types that mark a clip as bad (default :func:`default_skip_errors`).
    """
    if skip_errors is None:
        skip_errors = default_skip_errors()
    done: dict[str, np.ndarray] = {}
    skipped: list[tuple[str, str]] = []
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        done, skipped = load_checkpoint(checkpoint_path)
        log.info("motion: resuming from %s (%d clips done, %d skipped)", checkpoint_path, len(done), len(skipped))
    already = set(done) | {c for c, _ in skipped}
    since_ckpt = 0
    for clip_id, source in progress(items, desc="motion", total=total, unit="clip"):
        if clip_id in already:
            continue
        feats, reason = extract_one(clip_id, source, backend=backend, max_side=max_side, device=device,
                                    skip_errors=skip_errors)
        if reason is None:
            done[clip_id] = feats
        else:
            skipped.append((clip_id, reason))
        already.add(clip_id)
        since_ckpt += 1
        if checkpoint_path is not None and since_ckpt >= checkpoint_every:
            save_checkpoint(checkpoint_path, done, skipped)
            since_ckpt = 0
    if checkpoint_path is not None:
        save_checkpoint(checkpoint_path, done, skipped)
    n_total = len(done) + len(skipped)
    if skipped:
        log.warning("motion: skipped %d of %d clips", len(skipped), n_total)
    if max_bad_share is not None and n_total and len(skipped) / n_total > max_bad_share:
        examples = "; ".join(f"{c}: {r}" for c, r in skipped[:3])
        raise BadInputError(
            f"motion: {len(skipped)} of {n_total} clips could not be read ({len(skipped) / n_total:.0%} > "
            f"allowed {max_bad_share:.0%}). First reasons: {examples}"
        )
    return MotionExtraction(features=done, skipped=skipped)


def extract_one(
    clip_id: str,
    source: FrameSource,
    backend: str = "farneback",
    max_side: int | None = None,
    device: str = "cuda",
    skip_errors: tuple[type[BaseException], ...] | None = None,
) -> tuple[np.ndarray | None, str | None]:
    """One clip's (23,) features, or ``(None, reason)`` when it is bad input (``skip_errors``)."""
    try:
        pairs = source() if callable(source) else source
        return extract_motion_features(pairs, backend=backend, max_side=max_side, device=device), None
    except (skip_errors or default_skip_errors()) as err:
        reason = f"{type(err).__name__}: {err}"
        log.warning("motion: skipping clip %s: %s", clip_id, reason)
        return None, reason


# ------------------------------------------------------------------- clip-parallel (engine) form
# The motion stage as the engine runs it (vjepa_adapt.engine): a worker turns chunks of clips into
# parts (the same arrays as the checkpoint below), and merge_parts joins them in chunk order.


def make_motion_worker(backend: str, max_side: int | None, device: str, num_pairs: int):
    """``work(chunks) -> (chunk index, part)``; a part is clip_ids, features (N, 23), skipped ids/reasons."""
    from vjepa_adapt.data.clips import open_clip
    from vjepa_adapt.engine import clips_of

    def work(chunks):
        done: dict[str, np.ndarray] = {}
        skipped: list[tuple[str, str]] = []
        for chunk, c, last in clips_of(chunks, "motion"):
            src = lambda c=c: read_clip_pairs(open_clip(c), num_pairs=num_pairs, start=c.start, end=c.end)  # noqa: E731
            feats, reason = extract_one(c.clip_id, src, backend=backend, max_side=max_side, device=device)
            if reason is None:
                done[c.clip_id] = feats
            else:
                skipped.append((c.clip_id, reason))
            if last:
                yield chunk.index, checkpoint_arrays(done, skipped)
                done, skipped = {}, []

    return work


def merge_parts(parts) -> MotionExtraction:
    """Parts (in chunk order) -> every clip's features and the skipped clips, in clip order."""
    feats: dict[str, np.ndarray] = {}
    skipped: list[tuple[str, str]] = []
    for part in parts:
        f, s = _from_arrays(part)
        feats.update(f)
        skipped.extend(s)
    return MotionExtraction(features=feats, skipped=skipped)


def checkpoint_arrays(features: Mapping[str, np.ndarray], skipped: Sequence[tuple[str, str]]) -> dict[str, np.ndarray]:
    ids = list(features)
    return {
        "clip_ids": np.array(ids, dtype=str),
        "features": _stack(features, ids),
        "skipped_ids": np.array([c for c, _ in skipped], dtype=str),
        "skipped_reasons": np.array([r for _, r in skipped], dtype=str),
    }


def _from_arrays(z: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
    feats = {str(c): z["features"][i].astype(np.float32) for i, c in enumerate(z["clip_ids"])}
    skipped = [(str(c), str(r)) for c, r in zip(z["skipped_ids"], z["skipped_reasons"])]
    return feats, skipped


def save_checkpoint(
    path: str | os.PathLike, features: Mapping[str, np.ndarray], skipped: Sequence[tuple[str, str]]
) -> None:
    storage.save_npz(path, **checkpoint_arrays(features, skipped))


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
    with np.load(path, allow_pickle=False) as z:
        return _from_arrays(z)


def _stack(features: Mapping[str, np.ndarray], ids: Sequence[str]) -> np.ndarray:
    if not ids:
        return np.zeros((0, NUM_FEATURES), dtype=np.float32)
    return np.stack([np.asarray(features[c], dtype=np.float32) for c in ids])  # (N, 23)


def write_motion_outputs(
    out_dir: str | os.PathLike,
    features: Mapping[str, np.ndarray],
    label_set: LabelSet,
    splits: Mapping[str, str],
    skipped: Sequence[tuple[str, str]] = (),
    backend: str | None = None,
    max_side: int | None = None,
) -> None:
    """Write labels.csv, features.npz and classes.json into ``out_dir`` (each atomically).

    ``max_side``: the flow resolution the features were computed at (None = full size), recorded
    because magnitudes and hence cut points are in px/frame at that size.
    """
    out = Path(out_dir)
    ids = list(features)
    storage.save_npz(
        out / FEATURES_NPZ,
        clip_ids=np.array(ids, dtype=str),
        splits=np.array([splits[c] for c in ids], dtype=str),
        features=_stack(features, ids),
        feature_names=np.array(FEATURE_NAMES, dtype=str),
    )
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["clip_id", "split", "label"])
    for c in ids:
        if c in label_set.labels:
            w.writerow([c, splits[c], label_set.labels[c]])
    storage.write_text(out / LABELS_CSV, buf.getvalue())
    storage.write_json(out / CLASSES_JSON, {
        "classes": label_set.classes,
        "cuts": list(label_set.cuts),
        "magnitude": label_set.magnitude,
        "direction": label_set.direction,
        "num_classes": label_set.num_classes,
        "min_count_per_split": label_set.min_count_per_split,
        "counts": label_set.counts,
        "counts_all": label_set.counts_all,
        "num_clips": len(ids),
        "num_kept": len(label_set.labels),
        "dropped": label_set.dropped,
        "dropped_by_class": label_set.dropped_by_class,
        "backend": backend,
        "max_side": max_side,
        "skipped": [{"clip_id": c, "reason": r} for c, r in skipped],
    })


@dataclass
class MotionOutputs:
    features: dict[str, np.ndarray]  # every clip with features
    splits: dict[str, str]  # every clip with features
    label_set: LabelSet
    meta: dict[str, Any]  # classes.json as written


def load_motion_outputs(out_dir: str | os.PathLike) -> MotionOutputs:
    """Read back what :func:`write_motion_outputs` wrote (labels.csv is the label source of truth)."""
    out = Path(out_dir)
    for name in (LABELS_CSV, FEATURES_NPZ, CLASSES_JSON):
        if not (out / name).exists():
            raise FileNotFoundError(f"motion outputs incomplete: {out / name} is missing (run the motion stage)")
    with np.load(out / FEATURES_NPZ, allow_pickle=False) as z:
        ids = [str(c) for c in z["clip_ids"]]
        feats = {c: z["features"][i].astype(np.float32) for i, c in enumerate(ids)}
        splits = {c: str(s) for c, s in zip(ids, z["splits"])}
    meta = storage.read_json(out / CLASSES_JSON)
    with open(out / LABELS_CSV, encoding="utf-8", newline="") as fh:
        labels = {row["clip_id"]: row["label"] for row in csv.DictReader(fh)}
    cuts = tuple(float(x) for x in meta["cuts"])
    label_set = LabelSet(
        labels=labels,
        classes=list(meta["classes"]),
        cuts=cuts,  # type: ignore[arg-type]
        counts=meta["counts"],
        counts_all=meta["counts_all"],
        dropped=int(meta["dropped"]),
        dropped_by_class=meta["dropped_by_class"],
        magnitude=meta["magnitude"],
        direction=meta["direction"],
        num_classes=int(meta["num_classes"]),
        min_count_per_split=int(meta["min_count_per_split"]),
        all_labels={c: classify_features(f, cuts, meta["magnitude"], meta["direction"]) for c, f in feats.items()},
    )
    return MotionOutputs(features=feats, splits=splits, label_set=label_set, meta=meta)
