"""Video decoding with PyAV: probe, sample frames, and turn every failure into a ``VideoError``.

Decoding is sequential: packets are demuxed in order and decoded one after the other (threaded
inside the codec), and only the frames we want are converted to RGB. There is at most ONE seek per
call — to the keyframe before a window's start — never one per sampled frame, because seeking in
long-GOP H.264 costs a decode from the previous keyframe each time.

Frame selection
- Whole file (``start``/``end`` None): frame k is the k-th decoded frame. The frame count comes from
  the container header (mp4/avi) or, when the header has none (mkv/webm), from a demux-only pass
  that counts packets (reads the file, decodes nothing).
- Window ``[start, end)`` in seconds from the stream's first timestamp: the window's frames are the
  decoded frames whose timestamp lies in it (half a frame of slack); frame k is the k-th of them.
- ``num_frames`` evenly spaced frames: ``round(linspace(0, n - 1, num_frames))`` over the n frames.
- ``fps_stride``: frames every ``fps / fps_stride`` source frames, a run of ``num_frames`` centred in
  the clip; a clip too short for the run repeats its last frame (as V-JEPA's loader pads).

A file that decodes to clearly fewer frames than its header promises (more than 5 % and 2 frames
short) is ``truncated``; a small shortfall (inexact headers) reuses the last decoded frame.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Union

import av
import av.error
import numpy as np
from av.video.reformatter import VideoReformatter

from vjepa_adapt.errors import UserError

VideoSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]

REASONS = (
    "empty",  # zero bytes
    "truncated",  # a video container whose data stops early
    "not_video",  # not a video container, or no video stream in it
    "codec",  # a video stream no decoder here can read
    "too_few_frames",  # fewer frames than needed
    "too_large",  # width * height above max_pixels
    "unreadable",  # I/O or decoder failure of another kind
    "missing",  # the path (or tar member) does not exist
    "unsafe_path",  # a tar member with an absolute or '..' path (raised by clips.open_clip)
)

DEFAULT_MAX_PIXELS = 4096 * 2160
# Leading bytes of containers we read. A file that starts like a video but fails to open is
# reported as truncated (e.g. an mp4 cut before its 'moov' index), anything else as not_video.
_MP4_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot")


class VideoError(UserError):
    """A clip that cannot be used. ``reason`` is one short code from ``REASONS``."""

    def __init__(self, reason: str, message: str):
        if reason not in REASONS:
            raise ValueError(f"unknown VideoError reason {reason!r}")
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    width: int
    height: int
    duration: float  # seconds


# ----------------------------------------------------------------------------------- opening


def _describe(src: VideoSource) -> str:
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<{len(src)} bytes>"
    return f"<{type(src).__name__}>"


def _head_bytes(src: VideoSource) -> bytes:
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src[:16])
    if isinstance(src, (str, os.PathLike)):
        with open(src, "rb") as fh:
            return fh.read(16)
    pos = src.tell()
    src.seek(0)
    head = src.read(16)
    src.seek(pos)
    return head


def _looks_like_video_container(head: bytes) -> bool:
    return (
        head[4:8] in _MP4_BOXES
        or head.startswith(b"\x1a\x45\xdf\xa3")  # Matroska / WebM (EBML)
        or (head.startswith(b"RIFF") and head[8:12] == b"AVI ")
        or head.startswith(b"FLV")
        or head.startswith(b"\x00\x00\x01\xba")  # MPEG-PS
        or (len(head) > 0 and head[0] == 0x47)  # MPEG-TS sync byte
    )


def _check_source(src: VideoSource, name: str) -> VideoSource:
    """Cheap checks before FFmpeg sees the input; returns something ``av.open`` accepts."""
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if not os.path.exists(path):
            raise VideoError("missing", f"{name} does not exist")
        if os.path.isdir(path):
            raise VideoError("not_video", f"{name} is a folder")
        try:
            size = os.path.getsize(path)
        except OSError as e:
            raise VideoError("unreadable", f"{name}: {e}") from e
        if size == 0:
            raise VideoError("empty", f"{name} has zero bytes")
        return path
    if isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise VideoError("empty", f"{name} has zero bytes")
        return io.BytesIO(bytes(src))
    if hasattr(src, "read") and hasattr(src, "seek"):
        pos = src.tell()
        src.seek(0, io.SEEK_END)
        size = src.tell() - pos
        src.seek(pos)
        if size == 0:
            raise VideoError("empty", f"{name} has zero bytes")
        return src
    raise TypeError(f"video source must be a path, bytes or a seekable binary file, not {type(src).__name__}")


@contextmanager
def _open_video(src: VideoSource, max_pixels: int | None = None, threads: int = 0):
    """Yield ``(container, video_stream)``; every failure becomes a ``VideoError``."""
    name = _describe(src)
    opened = _check_source(src, name)
    try:
        container = av.open(opened, mode="r")
    except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        # av.error.FileNotFoundError is also OSError; existence was checked above, so this is data.
        try:
            head = _head_bytes(src)
        except OSError:
            head = b""
        if isinstance(e, PermissionError):
            raise VideoError("unreadable", f"{name}: permission denied") from e
        reason = "truncated" if _looks_like_video_container(head) else "not_video"
        raise VideoError(reason, f"{name}: cannot open ({e})") from e
    try:
        if not container.streams.video:
            raise VideoError("not_video", f"{name} has no video stream")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if ctx is None or ctx.codec is None or not ctx.codec.is_decoder:
            raise VideoError("codec", f"{name}: no decoder for its video stream")
        width, height = ctx.width, ctx.height
        if width <= 0 or height <= 0:
            raise VideoError("codec", f"{name}: video stream has no frame size ({width}x{height})")
        if max_pixels is not None and width * height > max_pixels:
            raise VideoError("too_large", f"{name} is {width}x{height}, above max_pixels={max_pixels}")
        # Frame threading when the codec supports it, slice threading otherwise.
        ctx.thread_type = "AUTO"
        ctx.thread_count = threads
        yield container, stream
    except (av.error.DecoderNotFoundError, NotImplementedError) as e:
        raise VideoError("codec", f"{name}: {e}") from e
    except (av.error.FFmpegError, OSError) as e:
        # Any other FFmpeg/IO failure while reading (frame conversion, a seek) is this clip's problem.
        raise VideoError("unreadable", f"{name}: {e}") from e
    finally:
        container.close()


def _stream_t0(stream) -> float:
    return float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0


def _stream_fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def _stream_duration(stream) -> float | None:
    """The video stream's own duration: its header field, or Matroska's per-track DURATION tag."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    tag = (stream.metadata or {}).get("DURATION")  # "HH:MM:SS.fffffffff", written by FFmpeg's mkv muxer
    if tag:
        m = re.fullmatch(r"(\d+):(\d+):(\d+(?:\.\d*)?)", tag.strip())
        if m:
            return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    return None


def _header_duration(container, stream) -> float:
    own = _stream_duration(stream)
    if own is not None:
        return own
    if container.duration is not None:
        return container.duration / av.time_base  # may include a longer audio track
    return 0.0


def _count_packets(container, stream, t_from: float | None = None, t_to: float | None = None,
                   ) -> tuple[int, float]:
    """(frames present, end time of the last one) by demuxing only: reads the file, decodes nothing.

    With a window, stops at the first packet decoded at or after ``t_to`` (dts <= pts, so no later
    packet can fall inside the window) — a window of a long video does not read the whole file.
    """
    tb = stream.time_base
    n, last_end = 0, 0.0
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # flush packet
            t = float(packet.pts * tb) if packet.pts is not None else None
            if t_to is not None:
                if packet.dts is not None and float(packet.dts * tb) >= t_to:
                    break
                if packet.dts is None and t is not None and t >= t_to + 1.0:  # 1 s of reorder margin
                    break
            if t_from is not None or t_to is not None:
                if t is None or (t_from is not None and t < t_from) or (t_to is not None and t >= t_to):
                    continue
            n += 1
            if t is not None:
                last_end = max(last_end, t + float((packet.duration or 0) * tb))
    except (av.error.FFmpegError, OSError):
        pass  # a damaged tail: count what is there; the decode pass decides if it is truncated
    return n, last_end


# ----------------------------------------------------------------------------------- probing


def probe_video(src: VideoSource, count_frames: bool = True) -> VideoInfo:
    """Frame count, fps, size and duration from the container (no decoding).

    When the header has no frame count (mkv/webm), packets are counted (``count_frames=True``) or
    the count is estimated as duration x fps.
    """
    with _open_video(src) as (container, stream):
        fps = _stream_fps(stream)
        duration = _header_duration(container, stream)
        n = int(stream.frames or 0)
        if n <= 0:
            n = _count_packets(container, stream)[0] if count_frames else int(round(duration * fps))
        if duration <= 0 and fps > 0:
            duration = n / fps
        if fps <= 0 and duration > 0:
            fps = n / duration
        return VideoInfo(num_frames=n, fps=fps, width=stream.codec_context.width,
                         height=stream.codec_context.height, duration=duration)


# ----------------------------------------------------------------------------------- sampling


def sample_frame_indices(total: int, num_frames: int) -> np.ndarray:
    """``num_frames`` indices spread evenly over ``[0, total)``, first and last frame included."""
    if total <= 0:
        raise ValueError("total must be positive")
    return np.round(np.linspace(0, total - 1, num_frames)).astype(np.int64)


def sample_stride_indices(total: int, num_frames: int, step: float) -> np.ndarray:
    """A run of ``num_frames`` indices ``step`` source frames apart, centred in ``[0, total)``.

    When the run is longer than the clip, indices past the end repeat the last frame.
    """
    if total <= 0 or step <= 0:
        raise ValueError("total and step must be positive")
    span = (num_frames - 1) * step
    offset = max(0.0, (total - 1 - span) / 2.0)
    idx = np.round(offset + np.arange(num_frames) * step).astype(np.int64)
    return np.minimum(idx, total - 1)


def sample_pair_indices(total: int, num_pairs: int) -> np.ndarray:
    """``2 * num_pairs`` indices: adjacent pairs (i, i+1) whose starts are spread evenly.

    Pairs may share frames in short clips; the result is the flat list ``[i0, i0+1, i1, i1+1, ...]``.
    """
    if total < 2:
        raise ValueError("need at least 2 frames for a pair")
    starts = np.round(np.linspace(0, total - 2, num_pairs)).astype(np.int64)
    return np.stack([starts, starts + 1], axis=1).reshape(-1)


# ----------------------------------------------------------------------------------- decoding


def _seek_before(container, stream, t: float) -> None:
    # One seek to the keyframe at or before t; the decode loop drops frames before the window.
    container.seek(int(max(0.0, t) / stream.time_base), stream=stream, backward=True, any_frame=False)


def _decode_window(container, stream, name: str, start: float | None, end: float | None,
                   ) -> Iterator[tuple[int, av.VideoFrame]]:
    """Yield ``(k, frame)`` for the k-th frame of the clip/window, decoding packet by packet.

    A packet the decoder rejects ends the iteration (a truncated or damaged tail): the frames
    decoded before it are kept and the caller judges the shortfall.
    """
    windowed = start is not None or end is not None
    t_from, t_to = _window_bounds(stream, start, end)
    if t_from is not None and t_from > _stream_t0(stream):
        _seek_before(container, stream, t_from)
    k = 0
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
            frames = stream.decode(packet)  # the final flush packet (size 0) drains the decoder
        except StopIteration:
            return
        except (av.error.FFmpegError, OSError):
            return
        for frame in frames:
            if windowed:
                if frame.time is None:
                    raise VideoError("unreadable", f"{name}: frames have no timestamps, cannot cut a window")
                if t_from is not None and frame.time < t_from:
                    continue
                if t_to is not None and frame.time >= t_to:
                    return
            yield k, frame
            k += 1


def _window_bounds(stream, start: float | None, end: float | None) -> tuple[float | None, float | None]:
    """Window in stream seconds, widened by half a frame so a frame stamped just early still counts."""
    t0 = _stream_t0(stream)
    fps = _stream_fps(stream)
    slack = 0.5 / fps if fps > 0 else 0.0
    t_from = (t0 + start - slack) if start is not None else None
    t_to = (t0 + end - slack) if end is not None else None
    return t_from, t_to


def _count_frames(container, stream, name: str, start: float | None, end: float | None) -> int:
    """Frames in the clip or window: from the header when it has a count, else by demuxing.

    A file whose packets end clearly before the duration its header states was cut short.
    """
    if start is None and end is None and stream.frames:
        return int(stream.frames)
    t_from, t_to = _window_bounds(stream, start, end)
    if t_from is not None and t_from > _stream_t0(stream):
        _seek_before(container, stream, t_from)
    n, last_end = _count_packets(container, stream, t_from, t_to)
    container.seek(0, stream=stream, backward=True, any_frame=False)
    own_duration = _stream_duration(stream)
    if start is None and end is None and own_duration is not None:
        # Only the video stream's own duration is trusted here: a container duration may include
        # a longer audio track.
        duration = own_duration + _stream_t0(stream)
        fps = _stream_fps(stream)
        frame_time = 1.0 / fps if fps > 0 else 0.0
        if n and last_end > 0 and duration - last_end > max(2 * frame_time, 0.05 * duration):
            raise VideoError("truncated", f"{name}: frames stop at {last_end:.2f}s of {duration:.2f}s")
    return n


def _gather(src: VideoSource, choose, start: float | None, end: float | None, min_frames: int,
            max_pixels: int | None, threads: int, short_side: int | None) -> np.ndarray:
    """Decode once; ``choose(n, fps)`` maps the clip's frame count to the wanted frame indices."""
    name = _describe(src)
    if start is not None and end is not None and end <= start:
        raise ValueError(f"window end ({end}) must be after start ({start})")
    with _open_video(src, max_pixels=max_pixels, threads=threads) as (container, stream):
        n = _count_frames(container, stream, name, start, end)
        if n < min_frames:
            what = "its window has" if (start is not None or end is not None) else "has"
            raise VideoError("too_few_frames", f"{name}: {what} {n} frames, need at least {min_frames}")
        wanted = np.asarray(choose(n, _stream_fps(stream)), dtype=np.int64)
        need = {int(i) for i in wanted}
        last_needed = max(need)
        got: dict[int, np.ndarray] = {}
        # One reformatter per read reuses its swscale context: a fresh one per frame (what
        # frame.to_ndarray(format=...) does) costs more than the conversion itself on small frames.
        rgb = VideoReformatter()
        decoded, last_frame = 0, None
        for k, frame in _decode_window(container, stream, name, start, end):
            decoded, last_frame = k + 1, frame
            if k in need:
                got[k] = _to_rgb(frame, short_side, rgb)
            if k >= last_needed:
                break
        missing = [i for i in need if i not in got]
        if missing:
            if last_frame is None or n - decoded > max(2, 0.05 * n):
                raise VideoError("truncated", f"{name}: decoded {decoded} of {n} frames")
            fill = _to_rgb(last_frame, short_side, rgb)  # header a frame or two off: reuse the last real frame
            for i in missing:
                got[i] = fill
    return np.stack([got[int(i)] for i in wanted])  # (T, H, W, 3)


def _to_rgb(frame: av.VideoFrame, short_side: int | None, reformatter: VideoReformatter) -> np.ndarray:
    if short_side is not None and min(frame.width, frame.height) > short_side:
        # Downscale in swscale during colour conversion: far cheaper than converting 4K to RGB.
        scale = short_side / min(frame.width, frame.height)
        w, h = max(1, round(frame.width * scale)), max(1, round(frame.height * scale))
        return reformatter.reformat(frame, format="rgb24", width=w, height=h, interpolation="AREA").to_ndarray()
    return reformatter.reformat(frame, format="rgb24").to_ndarray()


def read_frames(src: VideoSource, num_frames: int = 16, fps_stride: float | None = None,
                start: float | None = None, end: float | None = None, min_frames: int | None = None,
                max_pixels: int | None = DEFAULT_MAX_PIXELS, threads: int = 0,
                short_side: int | None = None) -> np.ndarray:
    """``num_frames`` RGB frames of a clip (or of the window ``[start, end)`` seconds).  # (T, H, W, 3) uint8

    ``fps_stride``: sample at that many frames per second instead of spreading over the clip.
    ``min_frames``: fewer frames in the clip is ``too_few_frames`` (default: ``num_frames``).
    ``threads``: decoder threads (0 = FFmpeg's choice). ``short_side``: downscale while converting
    so the shorter side is at most this (None = native size).
    """
    if num_frames < 1:
        raise ValueError("num_frames must be >= 1")
    if fps_stride is not None and fps_stride <= 0:
        raise ValueError("fps_stride must be positive")
    if min_frames is None:
        min_frames = num_frames
    name = _describe(src)

    def choose(n: int, fps: float) -> np.ndarray:
        if fps_stride is None:
            return sample_frame_indices(n, num_frames)
        if fps <= 0:
            raise VideoError("unreadable", f"{name}: unknown frame rate, cannot sample at fps_stride")
        return sample_stride_indices(n, num_frames, fps / fps_stride)

    return _gather(src, choose, start, end, max(1, min_frames), max_pixels, threads, short_side)


def read_frames_at(src: VideoSource, indices: Sequence[int], start: float | None = None,
                   end: float | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                   threads: int = 0, short_side: int | None = None) -> np.ndarray:
    """The frames at ``indices`` (of the clip or window), in that order.  # (len(indices), H, W, 3) uint8

    One sequential decode keeps just those frames: e.g. ``sample_pair_indices(n, 16)`` gives the
    adjacent pairs the motion stage needs. An index past the end is ``too_few_frames``.
    """
    idx = np.asarray(list(indices), dtype=np.int64)
    if idx.size == 0:
        raise ValueError("indices is empty")
    if idx.min() < 0:
        raise ValueError("indices must be >= 0")
    return _gather(src, lambda n, fps: idx, start, end, int(idx.max()) + 1, max_pixels, threads, short_side)


def read_all_frames(src: VideoSource, max_frames: int = 512, start: float | None = None,
                    end: float | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                    threads: int = 0, short_side: int | None = None) -> np.ndarray:
    """Every frame of a short clip, up to ``max_frames`` (evenly subsampled beyond that).  # (T, H, W, 3)"""
    return _gather(src, lambda n, fps: np.arange(n) if n <= max_frames else sample_frame_indices(n, max_frames),
                   start, end, 1, max_pixels, threads, short_side)
