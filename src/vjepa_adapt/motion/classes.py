"""Motion classes (the probe's labels) and the motion_aux regression target.

A class is ``<magnitude>_<direction>``: magnitude bin still/slow/medium/fast from the 25/50/75%
quantiles of the chosen magnitude (foreground mean, feature 13, by default; or total mean,
feature 0), fitted on the TRAIN split only; direction right/up/left/down from the chosen
direction histogram (foreground, features 15-22, by default; or total, 3-10) grouped by quadrant.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from vjepa_adapt.errors import BadInputError
from vjepa_adapt.motion.features import (
    DIR_HIST,
    FG_DIR_HIST,
    FG_MAG_MEAN,
    MAG_MEAN,
    NUM_FEATURES,
    mirror_features,
)
from vjepa_adapt.progress import get_logger

log = get_logger("motion")

MAGNITUDE_NAMES = ("still", "slow", "medium", "fast")
DIRECTIONS = ("right", "up", "left", "down")
# Quadrants as bins of the 8-bin histogram (bin i = [-pi + i*pi/4, -pi + (i+1)*pi/4), y down).
QUADRANT_BINS = {"right": (3, 4), "up": (1, 2), "left": (0, 7), "down": (5, 6)}
MAGNITUDE_FEATURE = {"foreground": FG_MAG_MEAN, "total": MAG_MEAN}
DIRECTION_FEATURE = {"foreground": FG_DIR_HIST, "total": DIR_HIST}
MIRROR_DIRECTION = {"right": "left", "left": "right", "up": "up", "down": "down"}


def fit_magnitude_cuts(train_values: Iterable[float]) -> tuple[float, float, float]:
    """The (q25, q50, q75) cut points of the magnitude, from TRAIN-split values only."""
    v = np.asarray(list(train_values), dtype=np.float64)
    if v.size == 0:
        raise ValueError("cannot fit magnitude cut points: no train-split clips")
    if not np.isfinite(v).all():
        raise ValueError("magnitude values contain NaN or inf")
    q = np.quantile(v, [0.25, 0.5, 0.75])
    return (float(q[0]), float(q[1]), float(q[2]))


def magnitude_bin(value: float, cuts: Sequence[float]) -> int:
    """0..3 = still/slow/medium/fast; intervals are (lo, hi]: still = value <= q25, fast > q75.

    Closed on the right so that a pile of identical values at a cut (e.g. many exactly-still clips
    with magnitude 0 = q25 = q50) falls into the lower bin rather than jumping to a higher one.
    """
    return int(np.searchsorted(np.asarray(cuts, dtype=np.float64), float(value), side="left"))


def dominant_direction(hist8: Sequence[float]) -> str:
    """'right' | 'up' | 'left' | 'down': the quadrant with the most histogram mass.

    Exact ties go to the first of right, up, left, down (a uniform histogram reads 'right').
    """
    h = np.asarray(hist8, dtype=np.float64)
    if h.shape != (8,):
        raise ValueError(f"direction histogram must have 8 bins, got shape {h.shape}")
    mass = [h[list(QUADRANT_BINS[d])].sum() for d in DIRECTIONS]
    return DIRECTIONS[int(np.argmax(mass))]


def class_name(mag_bin: int, direction: str) -> str:
    if not 0 <= mag_bin < len(MAGNITUDE_NAMES):
        raise ValueError(f"magnitude bin must be 0..3, got {mag_bin}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    return f"{MAGNITUDE_NAMES[mag_bin]}_{direction}"


def mirror_class(name: str) -> str:
    """The class of the horizontally flipped clip: right <-> left, up/down unchanged."""
    mag, sep, direction = name.rpartition("_")
    if not sep or direction not in MIRROR_DIRECTION:
        raise ValueError(f"not a motion class name: {name!r}")
    return f"{mag}_{MIRROR_DIRECTION[direction]}"


def classify_features(
    f: np.ndarray, cuts: Sequence[float], magnitude: str = "foreground", direction: str = "foreground"
) -> str:
    """One (23,) feature vector -> its class name under the given cut points."""
    _check_choice("magnitude", magnitude, MAGNITUDE_FEATURE)
    _check_choice("direction", direction, DIRECTION_FEATURE)
    f = np.asarray(f)
    mag_bin = magnitude_bin(f[MAGNITUDE_FEATURE[magnitude]], cuts)
    return class_name(mag_bin, dominant_direction(f[DIRECTION_FEATURE[direction]]))


def _check_choice(field_name: str, value: str, options: Mapping[str, object]) -> None:
    if value not in options:
        raise ValueError(f"{field_name} must be one of {sorted(options)}, got {value!r}")


@dataclass
class LabelSet:
    """The motion labels of one dataset.

    ``labels``: clip_id -> class name, kept clips only. ``classes``: kept classes, most frequent
    first (ties by name); a class's index in this list is its integer label. ``counts``:
    split -> class -> number of kept clips. ``counts_all``: the same before dropping (every class).
    ``dropped``: clips removed because their class was not kept; ``dropped_by_class``: per class.
    """

    labels: dict[str, str]
    classes: list[str]
    cuts: tuple[float, float, float]
    counts: dict[str, dict[str, int]]
    counts_all: dict[str, dict[str, int]]
    dropped: int
    dropped_by_class: dict[str, int]
    magnitude: str = "foreground"
    direction: str = "foreground"
    num_classes: int = 8
    min_count_per_split: int = 2
    all_labels: dict[str, str] = field(default_factory=dict)  # every clip's class, kept or not

    def class_index(self, name: str) -> int:
        return self.classes.index(name)

    def label_ids(self, clip_ids: Iterable[str]) -> np.ndarray:
        """Integer labels (index into ``classes``) for kept clips, in the given order."""
        idx = {c: i for i, c in enumerate(self.classes)}
        return np.array([idx[self.labels[c]] for c in clip_ids], dtype=np.int64)


def build_labels(
    features: Mapping[str, np.ndarray],
    splits: Mapping[str, str],
    num_classes: int = 8,
    min_count_per_split: int = 2,
    magnitude: str = "foreground",
    direction: str = "foreground",
    train_split: str = "train",
) -> LabelSet:
    """Label every clip, then keep the ``num_classes`` most frequent eligible classes.

    Cut points come from the clips whose split is ``train_split`` only. A class is eligible when it
    has at least ``min_count_per_split`` clips in EVERY split present in ``splits`` (a class absent
    from val or test could be neither selected on nor scored); eligible classes are ranked by their
    count over all splits (ties by name) and the top ``num_classes`` are kept. Clips of other
    classes are dropped and counted. Fewer eligible classes than ``num_classes`` keeps them all
    (logged); none eligible raises :class:`BadInputError`.
    """
    _check_choice("magnitude", magnitude, MAGNITUDE_FEATURE)
    _check_choice("direction", direction, DIRECTION_FEATURE)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    missing = [c for c in features if c not in splits]
    if missing:
        raise ValueError(f"{len(missing)} clips have motion features but no split, e.g. {missing[:3]}")
    for cid, f in features.items():
        if np.shape(f) != (NUM_FEATURES,):
            raise ValueError(f"clip {cid!r}: motion features must have shape (23,), got {np.shape(f)}")

    train_vals = [features[c][MAGNITUDE_FEATURE[magnitude]] for c in features if splits[c] == train_split]
    if not train_vals:
        raise BadInputError(f"no clips in the {train_split!r} split: the magnitude cut points are fitted on it")
    cuts = fit_magnitude_cuts(train_vals)
    all_labels = {c: classify_features(f, cuts, magnitude, direction) for c, f in features.items()}

    split_names = sorted({splits[c] for c in features})
    counts_all = {s: dict(sorted(Counter(all_labels[c] for c in features if splits[c] == s).items()))
                  for s in split_names}
    total = Counter(all_labels.values())
    eligible = [k for k in total if all(counts_all[s].get(k, 0) >= min_count_per_split for s in split_names)]
    if not eligible:
        raise BadInputError(
            f"no motion class has at least {min_count_per_split} clips in every split ({', '.join(split_names)}); "
            f"class counts per split: {counts_all}. Use more clips or lower min_count_per_split."
        )
    ranked = sorted(eligible, key=lambda k: (-total[k], k))
    classes = ranked[:num_classes]
    if len(classes) < num_classes:
        log.warning("motion labels: only %d classes have >= %d clips in every split (wanted %d): %s",
                    len(classes), min_count_per_split, num_classes, classes)
    kept = set(classes)
    labels = {c: k for c, k in all_labels.items() if k in kept}
    dropped_by_class = dict(sorted(Counter(k for k in all_labels.values() if k not in kept).items()))
    dropped = sum(dropped_by_class.values())
    counts = {s: {k: counts_all[s].get(k, 0) for k in classes} for s in split_names}
    if dropped:
        log.info("motion labels: kept %d classes, dropped %d of %d clips (%s)",
                 len(classes), dropped, len(all_labels), dropped_by_class)
    return LabelSet(
        labels=labels, classes=classes, cuts=cuts, counts=counts, counts_all=counts_all, dropped=dropped,
        dropped_by_class=dropped_by_class, magnitude=magnitude, direction=direction, num_classes=num_classes,
        min_count_per_split=min_count_per_split, all_labels=all_labels,
    )


def motion_aux_targets(
    features: Mapping[str, np.ndarray],
    train_ids: Iterable[str],
    dims: int = 13,
    clip_ids: Sequence[str] | None = None,
    std_floor: float = 1e-6,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The motion_aux regression target: first ``dims`` (13 or 23) features z-scored with TRAIN stats.

    Returns (targets (N, dims) float32 with rows in ``clip_ids`` order -- default the order of
    ``features`` --, mean (dims,), std (dims,)). ``std`` is floored at ``std_floor`` so a constant
    feature (e.g. camera y in a dataset without tilt) maps to 0 instead of dividing by zero.
    """
    if dims not in (13, NUM_FEATURES):
        raise ValueError(f"motion_aux dims must be 13 or 23, got {dims}")
    train = [c for c in train_ids]
    if not train:
        raise ValueError("motion_aux targets need at least one train clip for the z-score statistics")
    unknown = [c for c in train if c not in features]
    if unknown:
        raise ValueError(f"{len(unknown)} train clips have no motion features, e.g. {unknown[:3]}")
    tr = np.stack([np.asarray(features[c], dtype=np.float64)[:dims] for c in train])  # (Ntrain, dims)
    mean = tr.mean(axis=0)
    std = np.maximum(tr.std(axis=0), std_floor)
    order = list(features) if clip_ids is None else list(clip_ids)
    x = np.stack([np.asarray(features[c], dtype=np.float64)[:dims] for c in order])  # (N, dims)
    return ((x - mean) / std).astype(np.float32), mean.astype(np.float32), std.astype(np.float32)


def mirror_motion_aux_targets(z: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Mirror z-scored motion_aux targets (..., 13|23) for a horizontally flipped clip.

    The flip permutes histogram bins whose train means differ, so it must act on raw features:
    un-z-score, mirror, z-score again.
    """
    z = np.asarray(z)
    raw = z * std + mean
    return ((mirror_features(raw) - mean) / std).astype(z.dtype)
