"""The synthetic street world: plan, determinism, ground truth consistency, videos, styles, sheet."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from vjepa_adapt import world as S
from vjepa_adapt.data.contact_sheet import (
    SheetRow,
    overlay_instances,
    render_contact_sheet,
    write_contact_sheet,
)
from vjepa_adapt.data.encode import encode_video, write_video
from vjepa_adapt.storage import read_jsonl

W, H, T = 64, 48, 16
KW = dict(width=W, height=H, num_frames=T, fps=8.0, clips_per_video=4)


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    rows = {
        "target": S.generate_world(root / "target", num_clips=8, style="target", seed=3, **KW),
        "source": S.generate_world(root / "source", num_clips=8, style="source", seed=3, **KW),
    }
    return root, rows


def _truths(root: Path, style: str, rows) -> list[S.Truth]:
    return [S.load_truth(root / style / r["truth"]) for r in rows[style]]


# ------------------------------------------------------------------------------------ plan


def test_plan_balances_tiers_inside_each_video_and_directions_overall():
    plans = S.plan_world(96, "target", seed=5, clips_per_video=4, vertical_share=0.125)
    assert len(plans) == 96 and len({p.clip_id for p in plans}) == 96
    by_video: dict[str, list[str]] = {}
    for p in plans:
        by_video.setdefault(p.video_id, []).append(p.tier)
        assert p.motion_class == f"{p.tier}_{p.direction}"
        assert p.clip_id.startswith(p.video_id)
    assert len(by_video) == 24
    assert all(sorted(t) == sorted(S.MOTION_TIERS) for t in by_video.values())  # any split by video stays balanced
    dirs = [p.direction for p in plans]
    assert 4 <= dirs.count("up") + dirs.count("down") <= 24  # ~12 expected
    for v in by_video:  # right/left alternate inside a video; only up/down clips can unbalance them
        sides = [p.direction for p in plans if p.video_id == v]
        right, left = sides.count("right"), sides.count("left")
        assert abs(right - left) <= 4 - right - left


def test_plan_is_prefix_stable():
    small = S.plan_world(6, "source", seed=2)
    assert S.plan_world(40, "source", seed=2)[:6] == small
    assert S.plan_world(6, "source", seed=3) != small


def test_plan_rejects_bad_arguments():
    with pytest.raises(ValueError, match="style"):
        S.plan_world(4, "night", 0)
    with pytest.raises(ValueError, match="num_clips"):
        S.plan_world(0, "target", 0)


# ------------------------------------------------------------------------------------ outputs


def test_manifest_rows_files_and_relative_paths(worlds):
    root, rows = worlds
    for style in ("source", "target"):
        manifest = read_jsonl(root / style / "manifest.jsonl")
        assert manifest == rows[style]
        assert len(manifest) == 8
        for r in manifest:
            assert set(r) == {"clip_id", "path", "video_id", "style", "motion_class", "truth"}
            assert r["style"] == style
            assert not Path(r["path"]).is_absolute() and (root / style / r["path"]).is_file()
            assert (root / style / r["truth"]).is_file()
            tier, direction = r["motion_class"].split("_")
            assert tier in S.MOTION_TIERS and direction in S.MOTION_DIRECTIONS
        assert len({r["video_id"] for r in manifest}) == 2  # 8 clips, 4 per video
        sheet = cv2.imread(str(root / style / "contact_sheet.png"))
        assert sheet is not None and sheet.shape[0] > H and sheet.shape[1] > 4 * W


def test_videos_decode_with_the_right_frame_count_and_size(worlds):
    root, rows = worlds
    frames = _decode(root / "target" / rows["target"][0]["path"])
    assert frames.shape == (T, H, W, 3)
    assert frames.std() > 10  # a picture, not a flat frame


def test_same_seed_gives_identical_truth_bytes_and_another_seed_does_not(worlds, tmp_path):
    root, _ = worlds  # the fixture world has 8 clips; a 4-clip world is its first 4 clips
    again = S.generate_world(tmp_path / "again", num_clips=4, style="target", seed=3, contact_sheet=False, **KW)
    other = S.generate_world(tmp_path / "other", num_clips=4, style="target", seed=4, contact_sheet=False, **KW)
    for r, o in zip(again, other):
        a = (tmp_path / "again" / r["truth"]).read_bytes()
        assert a == (root / "target" / r["truth"]).read_bytes()
        assert a != (tmp_path / "other" / o["truth"]).read_bytes()


def test_skip_existing_keeps_finished_clips(tmp_path):
    first = S.generate_world(tmp_path, num_clips=2, style="source", seed=1, contact_sheet=False, **KW)
    truth = tmp_path / first[0]["truth"]
    truth.write_bytes(b"sentinel")  # a kept file is not rewritten...
    again = S.generate_world(tmp_path, num_clips=2, style="source", seed=1, contact_sheet=False,
                             skip_existing=True, **KW)
    assert again == first and truth.read_bytes() == b"sentinel"
    (tmp_path / first[1]["path"]).unlink()  # ...a clip with a missing file is made again
    S.generate_world(tmp_path, num_clips=2, style="source", seed=1, contact_sheet=False, skip_existing=True, **KW)
    assert (tmp_path / first[1]["path"]).is_file()


def test_two_workers_write_the_same_truth_as_one(tmp_path):
    one = S.generate_world(tmp_path / "one", num_clips=2, style="target", seed=2, contact_sheet=False, **KW)
    S.generate_world(tmp_path / "two", num_clips=2, style="target", seed=2, contact_sheet=False, num_workers=2, **KW)
    for r in one:
        assert (tmp_path / "one" / r["truth"]).read_bytes() == (tmp_path / "two" / r["truth"]).read_bytes()


def test_generate_world_rejects_odd_sizes(tmp_path):
    with pytest.raises(ValueError, match="even"):
        S.generate_world(tmp_path, num_clips=1, style="target", width=63, height=48)


# ------------------------------------------------------------------------------------ ground truth


def test_truth_boxes_areas_and_centroids_match_the_masks(worlds):
    root, rows = worlds
    for truth in _truths(root, "target", rows)[:3] + _truths(root, "source", rows)[:2]:
        n = len(truth.objects)
        assert truth.instance_map.shape == (T, H, W) and truth.instance_map.dtype == np.uint16
        assert truth.instance_map.max() == n and [o["id"] for o in truth.objects] == list(range(1, n + 1))
        assert truth.bbox.shape == (n, T, 4) and truth.centroid.shape == (n, T, 2)
        assert truth.visible.any(axis=1).all()  # every listed object is seen at least once
        for i in range(n):
            for t in range(T):
                ys, xs = np.nonzero(truth.instance_map[t] == i + 1)
                if len(xs) == 0:
                    assert truth.area[i, t] == 0 and (truth.bbox[i, t] == -1).all()
                    assert np.isnan(truth.centroid[i, t]).all()
                    continue
                assert truth.area[i, t] == len(xs)
                assert truth.bbox[i, t].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
                np.testing.assert_allclose(truth.centroid[i, t], [xs.mean(), ys.mean()], atol=1e-3)


def _canvas_positions(truth: S.Truth) -> np.ndarray:
    """(N, T, 2) ground points mapped back through each frame's camera into the world canvas."""
    A = truth.camera_affine.astype(np.float64)  # (T, 2, 3)
    inv = np.linalg.inv(A[:, :, :2])  # (T, 2, 2)
    return np.einsum("tij,ntj->nti", inv, truth.position - A[None, :, :, 2])


def test_agents_move_in_the_class_direction_and_layout_stays_put(worlds):
    root, rows = worlds
    for truth in _truths(root, "target", rows) + _truths(root, "source", rows):
        tier, direction = truth.motion_class.split("_")
        d = np.array(S.DIRECTION_VECTOR[direction])
        pos = _canvas_positions(truth)
        moved = pos[:, -1] - pos[:, 0]  # (N, 2)
        roles = [o["role"] for o in truth.objects]
        assert set(roles) <= set(S.ROLES)
        assert all(o["is_agent"] == (o["role"] == "agent") for o in truth.objects)
        assert truth.is_agent.any()
        for o, m in zip(truth.objects, moved):
            if o["is_agent"]:
                assert m @ d > 0, (truth.clip_id, o)  # turns stay under 25 degrees, stops are short
            else:
                assert np.abs(m).max() < 1e-3, (truth.clip_id, o)
        speed = np.median((moved[truth.is_agent] @ d) / (T - 1)) / W
        planned = S.tier_speed(truth.style, tier)
        assert 0.5 * planned < speed < 1.8 * planned


def test_layout_objects_are_layout_and_parked_vehicles_exist(worlds):
    root, rows = worlds
    objects = [o for t in _truths(root, "target", rows) for o in t.objects]
    for o in objects:
        assert o["category"] in S.CATEGORIES
        if o["category"] in S.LAYOUT_CATEGORIES:
            assert o["role"] == "layout" and not o["is_agent"]
    parked = [o for o in objects if o["role"] == "layout" and o["category"] in S.AGENT_CATEGORIES]
    assert parked, "the target street should have parked vehicles (layout)"


def test_interactions_are_present_in_target_and_well_formed(worlds):
    root, rows = worlds
    truths = _truths(root, "target", rows)
    assert all(t.interactions for t in truths)
    for t in truths:
        agents = {o["id"] for o in t.objects if o["is_agent"]}
        for it in t.interactions:
            assert it["a"] < it["b"] and {it["a"], it["b"]} <= agents
            assert 0 <= it["start"] < it["end"] <= T and it["end"] - it["start"] >= t.meta["interaction_min_frames"]
            assert it["min_distance"] < t.meta["interaction_distance"]


def test_camera_motion_matches_the_affines(worlds):
    root, rows = worlds
    for truth in _truths(root, "target", rows):
        A = truth.camera_affine.astype(np.float64)
        assert truth.camera_motion[0].tolist() == [0.0, 0.0, 1.0]
        mode = truth.meta["camera"]["mode"]
        assert mode in S.CAMERA_MODES
        if mode == "static":
            assert np.abs(truth.camera_motion[:, :2]).max() == 0 and np.allclose(truth.camera_motion[:, 2], 1)
        if mode in ("pan_left", "pan_right"):
            total = truth.camera_motion[:, 0].sum()
            assert (total < 0) == (mode == "pan_right")  # the camera turns right, the scene slides left
        np.testing.assert_allclose(truth.camera_motion[1:, 2], A[1:, 0, 0] / A[:-1, 0, 0], rtol=1e-5)


def test_styles_differ_in_density_and_colour(worlds):
    root, rows = worlds
    agents = {s: np.mean([t.is_agent.sum() for t in _truths(root, s, rows)]) for s in ("source", "target")}
    objects = {s: np.mean([len(t.objects) for t in _truths(root, s, rows)]) for s in ("source", "target")}
    assert agents["target"] > 1.3 * agents["source"]
    assert objects["target"] > 1.5 * objects["source"]
    sat = {}
    for s in ("source", "target"):
        frames = np.concatenate([_decode(root / s / r["path"])[:2] for r in rows[s]])
        sat[s] = cv2.cvtColor(frames.reshape(-1, W, 3), cv2.COLOR_RGB2HSV)[..., 1].mean()
    assert sat["target"] > 1.5 * sat["source"]


def test_find_interactions_hand_made_tracks():
    # Agent 1 passes agent 2 (x from 0 to 18 vs fixed at 9); agent 3 is far away; 4 is layout.
    T_ = 10
    c = np.full((4, T_, 2), np.nan, np.float32)
    c[0, :, 0], c[0, :, 1] = np.arange(T_) * 2.0, 0.0
    c[1, :, 0], c[1, :, 1] = 9.0, 1.0
    c[2, :, 0], c[2, :, 1] = 90.0, 0.0
    c[3, :, 0], c[3, :, 1] = 9.0, 0.0
    out = S.find_interactions(c, np.array([True, True, True, False]), width=20,
                              interaction_distance=0.25, interaction_min_frames=3)
    # limit 0.25 * 20 = 5 px; y-gap 1: sqrt(dx^2 + 1) < 5 <=> |dx| < 4.899 -> x in {6, 8, 10, 12},
    # frames 3..6; closest at dx = +-1: sqrt(2) / 20 = 0.0707 of the width
    assert out == [{"a": 1, "b": 2, "start": 3, "end": 7, "min_distance": 0.0707, "passing": True}]


def test_load_truth_rejects_other_files(tmp_path):
    bad = tmp_path / "x.truth.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read"):
        S.load_truth(bad)
    np.savez(tmp_path / "y.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a synthetic truth"):
        S.load_truth(tmp_path / "y.npz")


def test_render_works_at_a_larger_size():
    plan = S.plan_world(1, "target", 0)[0]
    frames, truth = S.render_clip(plan, seed=0, width=256, height=192, num_frames=4)
    assert frames.shape == (4, 192, 256, 3) and truth.instance_map.shape == (4, 192, 256)
    assert truth.is_agent.sum() >= 3


# ------------------------------------------------------------------------------------ encode


def test_write_video_round_trip_and_odd_size_padding(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (5, 30, 40, 3), dtype=np.uint8)
    write_video(tmp_path / "a.mp4", frames, fps=12.5)
    dec = _decode(tmp_path / "a.mp4")
    assert dec.shape == (5, 30, 40, 3)
    with av.open(str(tmp_path / "a.mp4")) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert float(c.streams.video[0].average_rate) == pytest.approx(12.5)
    flat = np.full((3, 21, 33, 3), 128, np.uint8)
    write_video(tmp_path / "odd.mp4", flat, fps=10)
    assert _decode(tmp_path / "odd.mp4").shape == (3, 22, 34, 3)
    assert encode_video(flat, 10) == encode_video(flat, 10)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((0, 8, 8, 3), np.uint8), "empty"),
    (np.zeros((2, 8, 8), np.uint8), "shape"),
    (np.zeros((2, 8, 8, 3), np.float32), "uint8"),
])
def test_write_video_rejects_bad_frames(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        write_video(tmp_path / "x.mp4", bad, fps=10)
    assert not (tmp_path / "x.mp4").exists()


# ------------------------------------------------------------------------------------ contact sheet


def test_overlay_colours_only_instance_pixels():
    frame = np.full((10, 10, 3), 100, np.uint8)
    ids = np.zeros((10, 10), np.int32)
    ids[2:8, 2:8] = 5
    out = overlay_instances(frame, ids, agent_ids=[5], alpha=0.5)
    assert (out[ids == 0] == 100).all()
    assert not (out[4, 4] == 100).all()


def test_contact_sheet_layout_and_png(tmp_path):
    frames = np.zeros((8, 12, 16, 3), np.uint8)
    masks = np.zeros((8, 12, 16), np.uint16)
    rows = [SheetRow(frames, masks, "a"), SheetRow(frames, None, "b")]
    sheet = render_contact_sheet(rows, frames_per_clip=3, scale=2)
    # widest row: 3 raw + 3 overlaid tiles of 32 px, 4 px padding
    assert sheet.shape == (4 + 2 * (18 + 24 + 4), 4 + 6 * (32 + 4), 3)
    write_contact_sheet(tmp_path / "s.png", rows, frames_per_clip=3)
    assert cv2.imread(str(tmp_path / "s.png")) is not None
    with pytest.raises(ValueError):
        render_contact_sheet([])


# ------------------------------------------------------------------------------------ flow oracle


@pytest.mark.slow
def test_flow_derived_classes_agree_with_intended_classes(tmp_path):
    """The probe's labels (Farnebaeck foreground flow -> tier x direction) match the plan."""
    motion = pytest.importorskip("vjepa_adapt.motion.features")
    classes = pytest.importorskip("vjepa_adapt.motion.classes")
    rows = S.generate_world(tmp_path, num_clips=32, style="target", seed=11, contact_sheet=False)
    feats = []
    for r in rows:
        frames = _decode(tmp_path / r["path"])
        feats.append(motion.extract_motion_features(motion.pairs_from_clip(frames), backend="farneback"))
    cuts = classes.fit_magnitude_cuts([f[motion.FG_MAG_MEAN] for f in feats])
    agree = np.mean([classes.classify_features(f, cuts) == r["motion_class"] for f, r in zip(feats, rows)])
    assert agree >= 0.9
