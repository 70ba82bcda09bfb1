"""Decode each clip once: its sampled frames stored as one uint8 ``.npy`` per clip, shared by every arm.

Every trained arm reads each training clip on every step it is drawn, and every embedded arm reads
every clip once more; the frames are the same each time (augmentation happens after decoding). On
the demo world decoding a 64-frame clip costs ~12-20 ms, as much as the tiny encoder's step per
sample, so the demo keeps the decoded frames (``data.frame_cache``). A cache entry is filled on
first use (atomic write, so concurrent decode workers may race harmlessly) and read memory-mapped.

Entries are keyed by the sampling settings (frames, fps stride, size cap) in the folder name and by
the clip's file (path, window, size, mtime) in the entry name, so neither a changed setting nor a
re-written video ever reads stale frames. Frames larger than ``max_short_side`` are shrunk (area
interpolation) before storing: the cache stays bounded on real footage (a 1080p clip is ~100 MB
decoded); at most a 2x margin over the model's input is kept for the training crops.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np

from vjepa_adapt import storage
from vjepa_adapt.data.clips import Clip, open_clip
from vjepa_adapt.data.transforms import resize_short_side
from vjepa_adapt.data.video import read_frames


class FrameCache:
    """A ``FrameReader`` (``cache(clip, num_frames) -> (T, H, W, 3) uint8``) backed by ``folder``."""

    def __init__(self, folder: str | os.PathLike, num_frames: int, fps_stride: float | None = None,
                 max_short_side: int | None = None):
        self.num_frames, self.fps_stride, self.max_short_side = num_frames, fps_stride, max_short_side
        key = f"f{num_frames}-s{fps_stride}-m{max_short_side}"
        self.folder = Path(folder) / key

    def path(self, clip: Clip) -> Path:
        # An entry is keyed by what the frames come from, not by the clip id alone: a re-rendered
        # world or a re-run factorize writes new files under the same ids, and their frames must not
        # be served from the old entry. Size and mtime of the file (of the shard for a member) say
        # the bytes changed; ids may hold characters a file name cannot ('/' in shard keys): hashed.
        file = clip.path.split("#", 1)[0]
        try:
            st = os.stat(file)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:  # a remote shard: its URL names its bytes
            stamp = ""
        key = "|".join(map(str, (clip.clip_id, clip.path, clip.start, clip.end, stamp)))
        return self.folder / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.npy"

    def __call__(self, clip: Clip, num_frames: int) -> np.ndarray:
        if num_frames != self.num_frames:
            raise ValueError(f"frame cache holds {self.num_frames} frames per clip, asked for {num_frames}")
        path = self.path(clip)
        if path.exists():
            try:
                return np.load(path, mmap_mode="r")
            except (ValueError, OSError):
                path.unlink(missing_ok=True)  # torn by a crash outside the atomic write: decode again
        frames = read_frames(open_clip(clip), num_frames=num_frames, fps_stride=self.fps_stride,
                             start=clip.start, end=clip.end)  # VideoError propagates: the clip is skipped
        if self.max_short_side and min(frames.shape[1:3]) > self.max_short_side:
            frames = resize_short_side(frames, self.max_short_side)
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(frames))
        storage.write_bytes(path, buf.getvalue())  # one clip: a few MB at most
        return frames
