"""Shared test fixtures: tiny videos encoded with PyAV in a temp folder."""

from __future__ import annotations

import os

# Before torch is imported: spinning OpenMP threads crawl when test processes share 2 cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path

import av
import numpy as np
import pytest

_CODECS = {".mp4": "libx264", ".mov": "libx264", ".mkv": "libx264", ".webm": "libvpx-vp9", ".avi": "mpeg4"}


def indexed_frames(n: int, height: int = 48, width: int = 64) -> np.ndarray:
    """``n`` flat-coloured frames whose colour encodes the frame index (0..255) robustly to
    lossy coding: R = 16 * (i % 16) + 8, G = 16 * (i // 16) + 8, B = 128.  # (n, H, W, 3) uint8"""
    i = np.arange(n)
    rgb = np.stack([16 * (i % 16) + 8, 16 * (i // 16) + 8, np.full(n, 128)], axis=1).astype(np.uint8)
    return np.broadcast_to(rgb[:, None, None, :], (n, height, width, 3)).copy()


def frame_indices_of(frames: np.ndarray) -> list[int]:
    """Inverse of :func:`indexed_frames` on decoded frames (T, H, W, 3)."""
    mean = frames.reshape(frames.shape[0], -1, 3).mean(axis=1)
    lo = np.clip(np.round((mean[:, 0] - 8) / 16), 0, 15)
    hi = np.clip(np.round((mean[:, 1] - 8) / 16), 0, 15)
    return [int(v) for v in lo + 16 * hi]


def run_stage(cfg, command: str) -> None:
    """A CLI command on a loaded config, with torch's thread count restored (run.threads sets it)."""
    import torch

    from vjepa_adapt.stages.graph import run_command

    threads = torch.get_num_threads()
    try:
        run_command(cfg, command)
    finally:
        torch.set_num_threads(threads)


def npz_members(path: str | Path) -> dict[str, bytes]:
    """Each array of an .npz, as its .npy bytes (the zip's own timestamps are not content)."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def write_video(path: str | Path, frames: np.ndarray | int, fps: int = 10, codec: str | None = None,
                options: dict | None = None) -> Path:
    """Encode ``frames`` (T, H, W, 3) uint8 — or ``indexed_frames(frames)`` when an int — to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(frames, int):
        frames = indexed_frames(frames)
    codec = codec or _CODECS.get(path.suffix.lower(), "libx264")
    with av.open(str(path), "w", options=options or {}) as out:
        stream = out.add_stream(codec, rate=fps, options={"preset": "ultrafast"} if codec == "libx264" else {})
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture
def make_video():
    """``make_video(path, frames_or_count, fps=10, codec=None, options=None) -> Path``."""
    return write_video


def write_bad_videos(folder: str | Path) -> dict[str, str]:
    """One unusable file per failure kind in ``folder``; returns file stem -> the expected reason."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    scratch = folder / ".scratch"
    good = write_video(scratch / "a.mp4", 30).read_bytes()  # moov (index) written at the end
    faststart = write_video(scratch / "b.mp4", 30, options={"movflags": "faststart"}).read_bytes()
    mkv = write_video(scratch / "c.mkv", 30).read_bytes()
    for p in scratch.iterdir():
        p.unlink()
    scratch.rmdir()
    (folder / "zero.mp4").write_bytes(b"")
    (folder / "cut_before_index.mp4").write_bytes(good[: len(good) // 2])  # cannot even open
    (folder / "cut_mid_data.mp4").write_bytes(faststart[: int(len(faststart) * 0.8)])  # frames stop early
    (folder / "cut.mkv").write_bytes(mkv[: int(len(mkv) * 0.9)])
    (folder / "notes.mp4").write_text("this is a text file, not a video\n" * 20)
    (folder / "noise.mkv").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    write_video(folder / "short.mp4", 5)
    write_video(folder / "huge.mp4", np.zeros((2, 2304, 4096, 3), np.uint8))  # 4096x2304 > 4096x2160
    with av.open(str(folder / "audio_only.mp4"), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode()]:
            out.mux(packet)
    return {
        "zero": "empty",
        "cut_before_index": "truncated",
        "cut_mid_data": "truncated",
        "cut": "truncated",
        "notes": "not_video",
        "noise": "not_video",
        "short": "too_few_frames",
        "huge": "too_large",
        "audio_only": "not_video",
    }
