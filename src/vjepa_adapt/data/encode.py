"""Write frames as an H.264 MP4 (libx264, yuv420p) through PyAV, atomically.

The whole file is encoded into memory and then handed to :func:`vjepa_adapt.storage.write_bytes`, so
a reader (or a re-run after a crash) never sees a half-written video.
"""

from __future__ import annotations

import io
import os
from fractions import Fraction

import av
import numpy as np

from vjepa_adapt.storage import write_bytes


def encode_video(frames: np.ndarray, fps: float, crf: int = 18, preset: str = "veryfast") -> bytes:
    """Encode ``frames`` (T, H, W, 3) uint8 RGB to MP4 bytes.

    yuv420p needs even width and height; an odd size is padded by repeating the last row/column,
    so the decoded video is then one pixel taller/wider than ``frames``.
    """
    frames = _check_frames(frames)
    if not (fps > 0 and np.isfinite(fps)):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if not 0 <= int(crf) <= 51:
        raise ValueError(f"crf must be in [0, 51] (x264 quality scale), got {crf!r}")
    frames = _pad_to_even(frames)
    _, height, width, _ = frames.shape

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        # One thread keeps the bytes identical run to run and costs little at these frame sizes.
        stream.codec_context.options = {"crf": str(int(crf)), "preset": preset, "threads": "1"}
        for frame_rgb in frames:
            frame = av.VideoFrame.from_ndarray(frame_rgb, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():  # flush delayed frames
            container.mux(packet)
    return buf.getvalue()


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float, crf: int = 18) -> None:
    """Encode ``frames`` (T, H, W, 3) uint8 RGB as H.264 MP4 at ``path`` (atomic temp + rename)."""
    write_bytes(path, encode_video(frames, fps=fps, crf=crf))


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (T, H, W, 3), got {frames.shape}")
    if frames.shape[0] == 0:
        raise ValueError("frames is empty: a video needs at least one frame")
    if frames.shape[1] < 2 or frames.shape[2] < 2:
        raise ValueError(f"frames are too small to encode: {frames.shape[1]}x{frames.shape[2]}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 RGB, got dtype {frames.dtype}")
    return np.ascontiguousarray(frames)


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
    _, h, w, _ = frames.shape
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frames
