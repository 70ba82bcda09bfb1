"""Motion (SPEC Ch 9, m04d): optical flow -> 23-D features -> motion classes (the probe's labels).

- :mod:`.flow`      flow backends (OpenCV Farnebäck / DIS, optional torchvision RAFT)
- :mod:`.features`  pair selection, the 23-D vector, horizontal-flip mirroring
- :mod:`.classes`   magnitude cuts, direction quadrants, class names, label building, motion_aux targets
- :mod:`.stage`     many clips -> features with skips; labels.csv / features.npz / classes.json
"""

from vjepa_adapt.motion.classes import (
    DIRECTIONS,
    MAGNITUDE_NAMES,
    LabelSet,
    build_labels,
    class_name,
    classify_features,
    dominant_direction,
    fit_magnitude_cuts,
    magnitude_bin,
    mirror_class,
    mirror_motion_aux_targets,
    motion_aux_targets,
)
from vjepa_adapt.motion.features import (
    FEATURE_NAMES,
    NUM_FEATURES,
    direction_histogram,
    extract_motion_features,
    features_from_flows,
    mirror_features,
    pair_frame_indices,
    pairs_from_clip,
    pairs_from_frames,
    select_pair_indices,
)
from vjepa_adapt.motion.flow import BACKENDS, compute_flow, compute_flow_batch
from vjepa_adapt.motion.stage import (
    MotionExtraction,
    MotionOutputs,
    extract_features_for_clips,
    load_motion_outputs,
    read_clip_pairs,
    write_motion_outputs,
)

__all__ = [
    "BACKENDS", "DIRECTIONS", "FEATURE_NAMES", "MAGNITUDE_NAMES", "NUM_FEATURES", "LabelSet",
    "MotionExtraction", "MotionOutputs", "build_labels", "class_name", "classify_features", "compute_flow",
    "compute_flow_batch", "direction_histogram", "dominant_direction", "extract_features_for_clips",
    "extract_motion_features", "features_from_flows", "fit_magnitude_cuts", "load_motion_outputs",
    "magnitude_bin", "mirror_class", "mirror_features", "mirror_motion_aux_targets", "motion_aux_targets",
    "pair_frame_indices", "pairs_from_clip", "pairs_from_frames", "read_clip_pairs", "select_pair_indices",
    "write_motion_outputs",
]
