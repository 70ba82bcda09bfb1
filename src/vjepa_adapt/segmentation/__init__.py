"""Segmentation (SPEC Ch 11, m10): instance masks -> greedy IoU tracklets -> agent vs layout -> interactions.

- :mod:`.camera`     the camera's motion between sampled frames (sparse LK + RANSAC affine), residual flow
- :mod:`.classical`  CPU backend without weights: camera-compensated moving regions, connected components
- :mod:`.sam3`       SAM 3 backend (transformers ``Sam3VideoModel``, text prompts of the agent vocabulary)
- :mod:`.sam3_io`    SAM 3 pre-/post-processing and mask NMS (transformers' processors need torchvision)
- :mod:`.instances`  what a backend returns per frame
- :mod:`.tracklets`  greedy IoU linking with gaps (pure)
- :mod:`.agents`     agent-vs-layout motion filter, interaction mining (pure)
- :mod:`.masks`      RLE / bit-packed storage, the per-clip masks file
- :mod:`.clip`       one clip end to end
- :mod:`.truth`      scores against the synthetic world's ground truth
- :mod:`.stage`      many clips -> RUN/segment/{masks/, summary.jsonl, overlay.png}
"""

from vjepa_adapt.segmentation.clip import TrackParams, segment_clip
from vjepa_adapt.segmentation.instances import Instances
from vjepa_adapt.segmentation.masks import ClipMasks, load_clip_masks, save_clip_masks
from vjepa_adapt.segmentation.tracklets import (
           Tracklet,
           box_iou,
           link_tracklets,
           mask_iou,
)

__all__ = ["ClipMasks", "Instances", "TrackParams", "Tracklet", "box_iou", "link_tracklets", "load_clip_masks",
           "mask_iou", "save_clip_masks", "segment_clip"]
