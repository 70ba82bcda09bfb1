"""SAM 3 input and output handling, written here because transformers' SAM 3 processors import
torchvision (not installable next to the CPU torch this toolkit uses).

- :func:`preprocess_frames`: RGB uint8 frames -> the model's pixel values: resized to the square
  ``image_size`` (bilinear; SAM 3 does not keep the aspect ratio), scaled to [0, 1], normalised
  with mean 0.5 / std 0.5 per channel (the checkpoint's ``image_mean``/``image_std``) -> [-1, 1].
- :func:`upsample_masks`: low-resolution mask logits -> boolean masks at the video size
  (bilinear, threshold 0 on the logits, as the reference post-processing does).
- :func:`masks_to_boxes`: tight boxes ``(x0, y0, x1, y1)`` with x1/y1 **exclusive** (the toolkit's
  convention; torchvision's ``masks_to_boxes`` gives the inclusive last pixel).
- :func:`mask_nms`: greedy non-maximum suppression by mask IoU (the model's own NMS needs the
  optional ``kernels`` package and silently keeps everything without it).
- :func:`postprocess_video_frame`: one ``Sam3VideoModel`` output -> object ids, scores, prompts,
  boxes and masks of the objects to show on that frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)


def preprocess_frames(frames: np.ndarray, image_size: int, mean: Sequence[float] = IMAGE_MEAN,
                      std: Sequence[float] = IMAGE_STD) -> Any:
    """(T, H, W, 3) uint8 RGB -> torch float32 (T, 3, S, S) normalised pixel values."""
    import torch

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8 RGB, got {frames.dtype} {frames.shape}")
    size = (int(image_size), int(image_size))
    resized = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_LINEAR) for f in frames]).astype(np.float32)
    x = (resized / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def upsample_masks(logits: Any, height: int, width: int) -> np.ndarray:
    """(N, h, w) mask logits (torch or numpy) -> (N, height, width) bool, bilinear then > 0."""
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(logits, dtype=torch.float32)
    if x.ndim != 3:
        raise ValueError(f"mask logits must be (N, h, w), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        return np.zeros((0, height, width), bool)
    up = F.interpolate(x[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    return (up > 0).cpu().numpy()


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (N, 4) float ``(x0, y0, x1, y1)``, x1/y1 exclusive; an empty mask gives zeros."""
    masks = np.asarray(masks, bool)
    out = np.zeros((len(masks), 4), np.float64)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        if len(xs):
            out[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return out


def mask_nms(masks: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Indices kept by greedy mask-IoU NMS, best score first (ties: lower index first)."""
    from vjepa_adapt.segmentation.tracklets import mask_iou

    masks = np.asarray(masks, bool)
    scores = np.asarray(scores, np.float64)
    order = np.argsort(-scores, kind="stable")
    iou = mask_iou(masks, masks)
    keep: list[int] = []
    for i in order:
        if all(iou[i, j] <= iou_threshold for j in keep):
            keep.append(int(i))
    return keep


@dataclass
class FrameObjects:
    """The objects shown on one frame."""

    frame_idx: int
    object_ids: np.ndarray  # (N,) int
    scores: np.ndarray  # (N,) float
    prompts: list[str]  # (N,) the text prompt that found each object
    boxes: np.ndarray  # (N, 4) x0, y0, x1, y1 (exclusive)
    masks: np.ndarray  # (N, H, W) bool


def postprocess_video_frame(
    output: Any,
    height: int,
    width: int,
    obj_id_to_prompt: Mapping[int, str],
    hidden_ids: Sequence[int] = (),
    score_threshold: float = 0.0,
    nms_iou: float = 0.5,
) -> FrameObjects:
    """One ``Sam3VideoSegmentationOutput`` (or a dict with its fields) -> :class:`FrameObjects`.

    Objects are dropped when hidden (suppressed on this frame, or removed by the model's hot-start
    heuristics: ``hidden_ids`` plus the output's ``suppressed_obj_ids``), when their mask is empty
    at the video size, when their score is below ``score_threshold``, and by :func:`mask_nms`.
    """
    get = output.get if isinstance(output, Mapping) else (lambda k, d=None: getattr(output, k, d))
    masks_by_id = get("obj_id_to_mask") or {}
    score_by_id = get("obj_id_to_score") or {}
    hidden = {int(i) for i in hidden_ids} | {int(i) for i in (get("suppressed_obj_ids") or ())}
    ids = [int(i) for i in sorted(masks_by_id) if int(i) not in hidden]
    frame_idx = int(get("frame_idx") or 0)
    if not ids:
        return FrameObjects(frame_idx, np.zeros(0, np.int64), np.zeros(0), [], np.zeros((0, 4)),
                            np.zeros((0, height, width), bool))
    import torch

    low = torch.cat([torch.as_tensor(masks_by_id[i]).float().reshape(1, *masks_by_id[i].shape[-2:])
                     for i in ids])
    masks = upsample_masks(low, height, width)
    scores = np.array([float(score_by_id.get(i, 0.0)) for i in ids])
    ok = [k for k in range(len(ids)) if masks[k].any() and scores[k] >= score_threshold]
    keep = [ok[k] for k in mask_nms(masks[ok], scores[ok], nms_iou)] if ok else []
    keep.sort()
    masks = masks[keep]
    return FrameObjects(frame_idx, np.array([ids[k] for k in keep], np.int64), scores[keep],
                        [obj_id_to_prompt.get(ids[k], "") for k in keep], masks_to_boxes(masks), masks)
