"""What every tag backend shares, below the backends: the failure type and the frame helpers.

Kept apart from ``backends.py`` (the factory that imports each backend) so that a backend
importing these never imports the factory that imports it.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class TagFailure(Exception):
    """This clip could not be tagged; the message is the reason ("timeout: ...", "http 500: ...")."""


def check_frames(clip_id: str, frames: Any) -> np.ndarray:
    """The frames as a ``(T, H, W, 3)`` uint8 array, or TagFailure naming what is wrong."""
    if not isinstance(frames, np.ndarray):
        raise TagFailure(f"bad frames: {clip_id} gave {type(frames).__name__}, expected a numpy array")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise TagFailure(f"bad frames: {clip_id} has shape {frames.shape}, expected (T>0, H, W, 3)")
    if frames.dtype != np.uint8:
        raise TagFailure(f"bad frames: {clip_id} has dtype {frames.dtype}, expected uint8")
    return frames


def select_frames(frames: np.ndarray, num_frames: int) -> np.ndarray:
    """``num_frames`` frames spread evenly over the clip, first and last included.  # (n, H, W, 3)"""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    t = frames.shape[0]
    if num_frames >= t:
        return frames
    if num_frames == 1:
        return frames[[t // 2]]
    idx = np.linspace(0, t - 1, num_frames).round().astype(int)
    return frames[idx]
