"""Motion features, mirroring, classes and the motion stage's files (SPEC Ch 9, m04d)."""

from __future__ import annotations

import csv
import math
import sys
import types

import cv2
import numpy as np
import pytest

from vjepa_adapt.errors import BadInputError
from vjepa_adapt.motion import (
    FEATURE_NAMES,
    build_labels,
    class_name,
    classify_features,
    compute_flow,
    direction_histogram,
    dominant_direction,
    extract_features_for_clips,
    extract_motion_features,
    features_from_flows,
    fit_magnitude_cuts,
    load_motion_outputs,
    magnitude_bin,
    mirror_class,
    mirror_features,
    mirror_motion_aux_targets,
    motion_aux_targets,
    pair_frame_indices,
    pairs_from_clip,
    read_clip_pairs,
    select_pair_indices,
    write_motion_outputs,
)
from vjepa_adapt.motion import flow as flow_mod
from vjepa_adapt.motion.features import MIRROR_BIN

H, W = 96, 128


# ----------------------------------------------------------------------------- hand-made frames

def _texture(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth random texture (RGB uint8) that optical flow can lock on to."""
    r = np.random.default_rng(seed).uniform(0, 255, (h, w)).astype(np.float32)
    r = cv2.GaussianBlur(r, (0, 0), 1.5)
    r = (r - r.min()) / (r.max() - r.min()) * 255
    return np.repeat(r[..., None], 3, axis=2).astype(np.uint8)


BG = _texture(H + 40, W + 200, 1)
SQUARE = _texture(32, 32, 2)


def _square_frame(t: int, vx: int, vy: int) -> np.ndarray:
    """Static background with a 32x32 textured square at (30 + vx*t, 30 + vy*t)."""
    f = BG[20:20 + H, 100:100 + W].copy()
    x, y = 30 + vx * t, 30 + vy * t
    f[y:y + 32, x:x + 32] = SQUARE
    return f


def _square_pairs(vx: int, vy: int, n: int = 6) -> np.ndarray:
    return np.stack([np.stack([_square_frame(t, vx, vy), _square_frame(t + 1, vx, vy)]) for t in range(n)])


def _pan_pairs(shift: int, n: int = 6) -> np.ndarray:
    """The view slides right by ``shift`` px/frame, so the whole image content moves left."""
    crop = lambda t: BG[20:20 + H, 100 + shift * t:100 + shift * t + W]  # noqa: E731
    return np.stack([np.stack([crop(t), crop(t + 1)]) for t in range(n)])


# ------------------------------------------------------------------------------- pair selection

def test_select_pair_indices_spreads_over_clip():
    assert select_pair_indices(32, 16) == list(range(0, 31, 2))  # first pair (0,1), last (30,31)
    assert select_pair_indices(17, 16) == list(range(16))
    assert select_pair_indices(5, 16) == [0, 1, 2, 3]  # fewer pairs, no duplicates
    assert select_pair_indices(2, 16) == [0]
    assert select_pair_indices(11, 1) == [4]
    assert pair_frame_indices([0, 4, 8]) == [0, 1, 4, 5, 8, 9]
    with pytest.raises(ValueError, match="at least 2 frames"):
        select_pair_indices(1)
    clip = np.arange(32)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    pairs = pairs_from_clip(clip, 16)
    assert pairs.shape == (16, 2, 2, 2, 3) and list(pairs[:, 0, 0, 0, 0]) == list(range(0, 31, 2))
    assert list(pairs[:, 1, 0, 0, 0]) == list(range(1, 32, 2))


def test_read_clip_pairs_uses_reader_indices():
    calls = []

    def reader(src, indices):
        calls.append(list(indices))
        return [np.full((4, 6, 3), i, np.uint8) for i in indices]

    pairs = read_clip_pairs("v.mp4", 9, num_pairs=3, reader=reader)
    assert calls == [[0, 1, 4, 5, 7, 8]]  # starts 0, round(3.5) = 4 (half to even), 7
    assert pairs.shape == (3, 2, 4, 6, 3)
    assert [int(pairs[p, k, 0, 0, 0]) for p in range(3) for k in range(2)] == [0, 1, 4, 5, 7, 8]
    with pytest.raises(ValueError, match="truncated"):
        read_clip_pairs("v.mp4", 9, num_pairs=3, reader=lambda s, i: [np.zeros((4, 6, 3), np.uint8)])


# ---------------------------------------------------------------- features from hand-made flow

def test_direction_bins_by_hand():
    # (dx, dy) with y down -> expected bin; slightly off-axis so no tie splitting.
    cases = {(1, -0.1): 3, (1, 0.1): 4, (-1, -0.1): 0, (-1, 0.1): 7,  # right 3,4 / left 0,7
             (0.1, -1): 2, (-0.1, -1): 1, (0.1, 1): 5, (-0.1, 1): 6,  # up 1,2 / down 5,6
             (1, -2): 2}  # atan2(-2, 1) = -1.107 -> (pi - 1.107)/(pi/4) = 2.59
    for (dx, dy), b in cases.items():
        h = direction_histogram(np.array([dx]), np.array([dy]), np.array([1.0]))
        assert np.argmax(h) == b and h[b] == 1.0, (dx, dy, h)


def test_direction_histogram_matches_atan2_definition():
    # Off the edges, bins must equal floor((atan2(dy, dx) + pi) / (pi/4)) exactly.
    rng = np.random.default_rng(3)
    dx, dy = rng.normal(size=(2, 5000)).astype(np.float32)
    w = rng.uniform(0.1, 2.0, size=5000)
    ref = np.bincount((np.floor((np.arctan2(dy, dx) + np.pi) / (np.pi / 4)).astype(int)) % 8, weights=w, minlength=8)
    np.testing.assert_allclose(direction_histogram(dx, dy, w), ref / ref.sum(), atol=1e-12)


def test_direction_histogram_is_magnitude_weighted_and_splits_exact_edges():
    # one pixel 3 px right (edge between bins 3|4), one pixel 1 px up (edge 1|2), one still pixel
    h = direction_histogram(np.array([3.0, 0.0, 0.0]), np.array([0.0, -1.0, 0.0]), np.array([3.0, 1.0, 0.0]))
    np.testing.assert_allclose(h, [0, 0.125, 0.125, 0.375, 0.375, 0, 0, 0])
    left = direction_histogram(np.array([-2.0]), np.array([0.0]), np.array([2.0]))  # angle pi == -pi
    np.testing.assert_allclose(left, [0.5, 0, 0, 0, 0, 0, 0, 0.5])
    np.testing.assert_allclose(direction_histogram(np.zeros(4), np.zeros(4), np.zeros(4)), np.full(8, 1 / 8))


def test_features_from_flows_hand_computed():
    # 2 pairs of 4x4: the camera pans (every pixel dx=-2); one pixel also carries an object
    # moving 4 px right relative to the background (dx = -2 + 4 = 2).
    flows = np.zeros((2, 4, 4, 2))
    flows[..., 0] = -2.0
    flows[:, 0, 0, 0] = 2.0
    f = features_from_flows(flows)
    assert f.shape == (23,) and f.dtype == np.float32
    # every pixel has magnitude 2 -> mean 2, std 0, max 2
    np.testing.assert_allclose(f[0:3], [2, 0, 2], atol=1e-6)
    # total histogram: all mass on dx<0, dy=0 (left edge) plus 1/16 on dx>0 (right edge)
    np.testing.assert_allclose(f[3:11], [15 / 32, 0, 0, 1 / 32, 1 / 32, 0, 0, 15 / 32], atol=1e-6)
    np.testing.assert_allclose(f[11:13], [-2, 0], atol=1e-6)  # camera: median of per-pair medians
    # foreground = flow - pair median: one pixel of 16 with |(4, 0)| = 4
    np.testing.assert_allclose(f[13:15], [4 / 16, 4], atol=1e-6)
    np.testing.assert_allclose(f[15:23], [0, 0, 0, 0.5, 0.5, 0, 0, 0], atol=1e-6)


def test_features_of_still_clip_have_uniform_histograms():
    f = features_from_flows(np.zeros((3, 5, 5, 2)))
    np.testing.assert_allclose(f[[0, 1, 2, 11, 12, 13, 14]], 0)
    np.testing.assert_allclose(f[3:11], 1 / 8)
    np.testing.assert_allclose(f[15:23], 1 / 8)


def test_mirror_bin_map_by_hand():
    assert MIRROR_BIN == (3, 2, 1, 0, 7, 6, 5, 4)  # right 3,4 <-> left 0,7; up 1<->2; down 5<->6
    f = np.arange(23, dtype=np.float32)
    m = mirror_features(f)
    assert list(m[3:11]) == [6, 5, 4, 3, 10, 9, 8, 7]
    assert m[11] == -11 and m[12] == 12 and list(m[[0, 1, 2, 13, 14]]) == [0, 1, 2, 13, 14]
    assert list(m[15:23]) == [18, 17, 16, 15, 22, 21, 20, 19]
    np.testing.assert_array_equal(mirror_features(m), f)  # involution
    np.testing.assert_array_equal(mirror_features(f[:13]), m[:13])  # 13-D motion_aux layout
    np.testing.assert_array_equal(mirror_features(np.stack([f, f]))[1], m)  # batched


def test_mirror_features_exact_on_mirrored_flow():
    # Integer flow has many exact-edge angles (axes, diagonals): mirroring must still be exact.
    rng = np.random.default_rng(0)
    flows = rng.integers(-3, 4, size=(4, 6, 7, 2)).astype(np.float64)
    flows[1, :, :, 0] += 2.5  # a panning pair
    mirrored = flows[:, :, ::-1].copy()
    mirrored[..., 0] *= -1
    np.testing.assert_allclose(features_from_flows(mirrored), mirror_features(features_from_flows(flows)), atol=1e-6)


# ---------------------------------------------------------------- features from real optical flow

@pytest.mark.parametrize("backend", ["farneback", "dis"])
def test_square_moving_right(backend):
    k = 3
    f = extract_motion_features(_square_pairs(k, 0), backend=backend)
    as_list = [(p[0], p[1]) for p in _square_pairs(k, 0)]
    np.testing.assert_array_equal(extract_motion_features(as_list, backend=backend), f)
    coverage = 32 * 32 / (H * W)
    # Flow smooths over a halo around the square, so allow the estimate to overshoot somewhat.
    assert 0.8 * k * coverage < f[13] < 1.6 * k * coverage
    assert 0.8 * k < f[14] < 1.3 * k  # fg max ~ the square's speed
    assert abs(f[11]) < 0.05 and abs(f[12]) < 0.05  # background dominates: no camera motion
    assert dominant_direction(f[15:23]) == "right" and dominant_direction(f[3:11]) == "right"
    assert f[15:23][[3, 4]].sum() > 0.9


@pytest.mark.parametrize("backend", ["farneback", "dis"])
def test_square_moving_up_and_down(backend):
    assert dominant_direction(extract_motion_features(_square_pairs(0, -3), backend=backend)[15:23]) == "up"
    down = np.stack([np.stack([_square_frame(t, 0, 3), _square_frame(t + 1, 0, 3)]) for t in range(4)])
    assert dominant_direction(extract_motion_features(down, backend=backend)[15:23]) == "down"


@pytest.mark.parametrize("backend", ["farneback", "dis"])
def test_pure_pan_is_camera_motion(backend):
    f = extract_motion_features(_pan_pairs(3), backend=backend)
    assert f[11] == pytest.approx(-3, abs=0.1) and abs(f[12]) < 0.1
    assert f[0] == pytest.approx(3, abs=0.15)
    assert f[13] < 0.1  # nothing moves relative to the background
    assert dominant_direction(f[3:11]) == "left"


def test_horizontal_flip_mirrors_features_and_class():
    pairs = _square_pairs(3, -1)  # right and a little up
    f = extract_motion_features(pairs)
    ff = extract_motion_features(pairs[:, :, :, ::-1].copy())
    m = mirror_features(f)
    np.testing.assert_allclose(ff[[0, 1, 2, 13, 14]], m[[0, 1, 2, 13, 14]], rtol=0.05)
    np.testing.assert_allclose(ff[3:11], m[3:11], atol=0.05)
    np.testing.assert_allclose(ff[15:23], m[15:23], atol=0.05)
    np.testing.assert_allclose(ff[11:13], m[11:13], atol=0.05)
    cuts = (0.01, 0.05, 0.1)
    c, cf = classify_features(f, cuts), classify_features(ff, cuts)
    assert c == "fast_right" and cf == "fast_left" == mirror_class(c)


def test_compute_flow_checks_inputs():
    a = BG[:32, :40]
    fl = compute_flow(a, a)
    assert fl.shape == (32, 40, 2) and fl.dtype == np.float32 and np.abs(fl).max() < 0.1
    with pytest.raises(ValueError, match="uint8"):
        compute_flow(a.astype(np.float32), a)
    with pytest.raises(ValueError, match="unknown optical-flow backend"):
        compute_flow(a, a, backend="lucas")
    with pytest.raises(ValueError, match="differ in size"):
        compute_flow(a, BG[:30, :40])


# ----------------------------------------------------------------------------------------- RAFT

def test_raft_missing_torchvision_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision...` fail
    monkeypatch.setattr(flow_mod, "_RAFT_CACHE", {})
    with pytest.raises(ImportError, match=r"pip install vjepa-adapt\[raft\]"):
        compute_flow(BG[:16, :16], BG[:16, :16], backend="raft_small", device="cpu")


def test_raft_input_range_padding_and_crop(monkeypatch):
    import torch

    seen = {}

    class FakeRaft(torch.nn.Module):
        def forward(self, x1, x2):
            seen["shape"], seen["min"], seen["max"] = tuple(x1.shape), float(x1.min()), float(x2.max())
            b, _, h, w = x1.shape
            out = torch.zeros(b, 2, h, w)
            out[:, 0] = 1.5  # dx
            out[:, 1] = -0.5  # dy
            return [out * 0, out]  # one flow per refinement iteration; last is final

    fake = types.ModuleType("torchvision.models.optical_flow")
    fake.raft_small = lambda weights=None, progress=False: FakeRaft()
    fake.Raft_Small_Weights = types.SimpleNamespace(DEFAULT="default")
    monkeypatch.setattr(flow_mod.importlib, "import_module", lambda name: fake)
    monkeypatch.setattr(flow_mod, "_RAFT_CACHE", {})
    a = np.zeros((13, 19, 3), np.uint8)
    b = np.full((13, 19, 3), 255, np.uint8)
    fl = compute_flow(a, b, backend="raft_small", device="cpu")
    assert seen["shape"] == (1, 3, 16, 24)  # padded up to multiples of 8
    assert seen["min"] == -1.0 and seen["max"] == 1.0  # [-1, 1] input range
    assert fl.shape == (13, 19, 2) and fl.dtype == np.float32
    np.testing.assert_allclose(fl[..., 0], 1.5) and np.testing.assert_allclose(fl[..., 1], -0.5)


# --------------------------------------------------------------------------------------- classes

def test_magnitude_cuts_and_bins():
    cuts = fit_magnitude_cuts([1, 2, 3, 4, 5])
    assert cuts == (2.0, 3.0, 4.0)
    assert [magnitude_bin(v, cuts) for v in (0, 2, 2.5, 3, 3.01, 4, 4.5)] == [0, 0, 1, 1, 2, 2, 3]
    # many identical still clips: q25 == q50 == 0 -> value 0 stays 'still'
    assert magnitude_bin(0.0, fit_magnitude_cuts([0, 0, 0, 0, 0, 1, 2, 3])) == 0
    with pytest.raises(ValueError, match="no train-split"):
        fit_magnitude_cuts([])


def test_dominant_direction_and_names():
    h = np.zeros(8)
    for d, bins in {"right": (3, 4), "up": (1, 2), "left": (0, 7), "down": (5, 6)}.items():
        h[:] = 0.02
        h[list(bins)] = 0.4
        assert dominant_direction(h) == d
    assert dominant_direction(np.full(8, 1 / 8)) == "right"
    assert class_name(0, "up") == "still_up" and class_name(3, "left") == "fast_left"
    assert mirror_class("medium_right") == "medium_left" and mirror_class("slow_down") == "slow_down"
    with pytest.raises(ValueError):
        class_name(4, "up")
    with pytest.raises(ValueError):
        mirror_class("fast")


def _feat(fg_mean: float, direction: str, total_mean: float | None = None) -> np.ndarray:
    f = np.zeros(23, np.float32)
    f[13] = fg_mean
    f[0] = fg_mean if total_mean is None else total_mean
    hist = np.full(8, 0.01)
    hist[list({"right": (3, 4), "up": (1, 2), "left": (0, 7), "down": (5, 6)}[direction])] = 0.47
    f[15:23] = hist
    f[3:11] = np.roll(hist, 4)  # total histogram points the other way (left<->right, up<->down)
    return f


def test_build_labels_hand_made():
    feats, splits = {}, {}
    # train: fg magnitudes 1..8 -> cuts (2.75, 4.5, 6.25); two directions
    for i in range(8):
        cid = f"tr{i}"
        feats[cid], splits[cid] = _feat(i + 1, "right" if i % 2 == 0 else "up"), "train"
    # val/test with extreme magnitudes must not move the train-only cut points
    for s in ("val", "test"):
        for j, (m, d) in enumerate([(100, "right"), (0.5, "right"), (100, "right"), (0.5, "left"), (7.5, "up")]):
            feats[f"{s}{j}"], splits[f"{s}{j}"] = _feat(m, d), s
    ls = build_labels(feats, splits, num_classes=2, min_count_per_split=1)
    assert ls.cuts == pytest.approx((2.75, 4.5, 6.25))
    # train classes: 1 still_right, 2 still_up, 3 slow_right, 4 slow_up, 5 medium_right,
    # 6 medium_up, 7 fast_right, 8 fast_up; val/test: fast_right x2, still_right, still_left, fast_up
    assert ls.counts_all["train"]["fast_up"] == 1 and ls.counts_all["val"]["fast_right"] == 2
    # eligible (>=1 in every split): fast_right (5 total), fast_up (3), still_right (3) -> keep 2
    assert ls.classes == ["fast_right", "fast_up"]
    assert ls.labels["val0"] == "fast_right" and "val3" not in ls.labels and "tr0" not in ls.labels
    assert ls.counts == {"test": {"fast_right": 2, "fast_up": 1}, "train": {"fast_right": 1, "fast_up": 1},
                         "val": {"fast_right": 2, "fast_up": 1}}
    assert ls.dropped == 18 - 8 and ls.dropped_by_class["still_left"] == 2
    assert list(ls.label_ids(["val4", "val0"])) == [1, 0]
    # min_count 2 in every split: nothing qualifies (train has one clip per class)
    with pytest.raises(BadInputError, match="min_count_per_split"):
        build_labels(feats, splits, min_count_per_split=2)
    # the 'total' option reads idx 0 / 3-10
    tot = build_labels(feats, splits, num_classes=8, min_count_per_split=1, magnitude="total", direction="total")
    assert tot.labels["val0"] == "fast_left"
    with pytest.raises(ValueError, match="no split"):
        build_labels({"x": _feat(1, "up")}, {})


def test_motion_aux_targets_train_stats():
    feats = {c: np.zeros(23, np.float32) for c in ("a", "b", "c")}
    feats["a"][0], feats["b"][0], feats["c"][0] = 1.0, 3.0, 10.0
    z, mean, std = motion_aux_targets(feats, ["a", "b"], dims=13, clip_ids=["c", "a"])
    assert z.shape == (2, 13) and mean[0] == 2 and std[0] == 1
    assert z[0, 0] == 8 and z[1, 0] == -1  # c uses train stats; order follows clip_ids
    assert np.all(z[:, 1] == 0)  # constant dim: std floored, no division by zero
    z23, _, _ = motion_aux_targets(feats, ["a", "b"], dims=23)
    assert z23.shape == (3, 23)
    with pytest.raises(ValueError, match="13 or 23"):
        motion_aux_targets(feats, ["a"], dims=5)


def test_mirror_motion_aux_targets_matches_raw_mirror():
    rng = np.random.default_rng(1)
    feats = {str(i): rng.normal(size=23).astype(np.float32) for i in range(10)}
    z, mean, std = motion_aux_targets(feats, list(feats), dims=13)
    raw_m = mirror_features(np.stack([feats[c][:13] for c in feats]))
    np.testing.assert_allclose(mirror_motion_aux_targets(z, mean, std), (raw_m - mean) / std, atol=1e-5)


# ----------------------------------------------------------------------------------------- stage

def test_extract_skips_bad_clips_and_resumes(tmp_path):
    good = _square_pairs(2, 0, n=2)

    def bad():
        raise OSError("moov atom not found")

    items = [("a", good), ("b", bad), ("c", lambda: good), ("d", lambda: np.zeros((2, 2, 8, 8, 3), np.float32))]
    ckpt = tmp_path / "motion_partial.npz"
    res = extract_features_for_clips(items, checkpoint_path=ckpt, checkpoint_every=1)
    assert sorted(res.features) == ["a", "c"]
    assert [c for c, _ in res.skipped] == ["b", "d"] and "moov atom" in res.skipped[0][1]
    assert "uint8" in res.skipped[1][1]

    def must_not_run():
        raise AssertionError("clip recomputed after resume")

    res2 = extract_features_for_clips([(c, must_not_run) for c in "abcd"] + [("e", good)], checkpoint_path=ckpt)
    assert sorted(res2.features) == ["a", "c", "e"] and len(res2.skipped) == 2
    np.testing.assert_array_equal(res2.features["a"], res.features["a"])
    with pytest.raises(BadInputError, match="2 of 4 clips"):
        extract_features_for_clips(items, max_bad_share=0.25)


def test_write_and_load_motion_outputs(tmp_path):
    feats, splits = {}, {}
    for s in ("train", "val", "test"):
        for i, (m, d) in enumerate([(1, "right"), (2, "right"), (3, "up"), (4, "up"), (5, "left")]):
            feats[f"{s}{i}"], splits[f"{s}{i}"] = _feat(m, d), s
    ls = build_labels(feats, splits, num_classes=3, min_count_per_split=1)
    write_motion_outputs(tmp_path, feats, ls, splits, skipped=[("bad", "OSError: x")], backend="farneback")
    with open(tmp_path / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(ls.labels) and set(rows[0]) == {"clip_id", "split", "label"}
    assert all(r["label"] == ls.labels[r["clip_id"]] and r["split"] == splits[r["clip_id"]] for r in rows)
    back = load_motion_outputs(tmp_path)
    assert back.label_set.labels == ls.labels and back.label_set.classes == ls.classes
    assert back.label_set.cuts == pytest.approx(ls.cuts) and back.label_set.all_labels == ls.all_labels
    assert back.splits == splits and set(back.features) == set(feats)
    np.testing.assert_array_equal(back.features["val3"], feats["val3"])
    assert back.meta["skipped"] == [{"clip_id": "bad", "reason": "OSError: x"}]
    assert back.meta["dropped"] == ls.dropped and back.meta["magnitude"] == "foreground"
    assert list(np.load(tmp_path / "features.npz")["feature_names"]) == list(FEATURE_NAMES)
    assert not list(tmp_path.glob(".tmp-*"))
    (tmp_path / "labels.csv").unlink()
    with pytest.raises(FileNotFoundError, match="labels.csv"):
        load_motion_outputs(tmp_path)


def test_feature_names_match_spec_layout():
    assert len(FEATURE_NAMES) == 23
    assert FEATURE_NAMES[0:3] == ("mag_mean", "mag_std", "mag_max")
    assert FEATURE_NAMES[11:15] == ("camera_x", "camera_y", "fg_mag_mean", "fg_mag_max")
    assert math.isclose(len([n for n in FEATURE_NAMES if "bin" in n]), 16)


def _write_mp4(path, frames, fps=10):
    import av

    with av.open(str(path), "w") as out:
        st = out.add_stream("mpeg4", rate=fps)
        st.width, st.height, st.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        st.options = {"qscale": "2"}
        for f in frames:
            for pkt in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)


def test_read_clip_pairs_from_a_real_file_and_skip_a_bad_one(tmp_path):
    path = tmp_path / "clip.mp4"
    _write_mp4(path, [_square_frame(t, 3, 0) for t in range(10)])
    pairs = read_clip_pairs(path, num_pairs=4)  # frame count probed from the file
    assert pairs.shape == (4, 2, H, W, 3) and pairs.dtype == np.uint8
    (tmp_path / "empty.mp4").write_bytes(b"")
    items = [("ok", lambda: read_clip_pairs(path, num_pairs=4)),
             ("empty", lambda: read_clip_pairs(tmp_path / "empty.mp4"))]
    res = extract_features_for_clips(items)
    assert list(res.features) == ["ok"] and res.skipped[0][0] == "empty" and "VideoError" in res.skipped[0][1]
    assert dominant_direction(res.features["ok"][15:23]) == "right"


# ------------------------------------------------- agreement with the synthetic world's truth

def _world_agreement(out_dir, num_clips: int, split_of, backend: str = "farneback", flip_check: int = 0):
    """Generate target clips, label them from optical flow, compare with the generator's class."""
    import collections

    synthetic = pytest.importorskip("vjepa_adapt.world")
    rows = synthetic.generate_world(out_dir, num_clips=num_clips, style="target", seed=0, contact_sheet=False)
    items = [(r["clip_id"], (lambda p=out_dir / r["path"]: read_clip_pairs(p))) for r in rows]
    res = extract_features_for_clips(items, backend=backend)
    assert not res.skipped
    splits = {r["clip_id"]: split_of(r["video_id"]) for r in rows}
    truth = {r["clip_id"]: r["motion_class"] for r in rows}
    ls = build_labels(res.features, splits, num_classes=8, min_count_per_split=1)
    agree = np.mean([ls.all_labels[c] == truth[c] for c in truth])
    kept = np.mean([ls.labels[c] == truth[c] for c in ls.labels])
    print(f"\nflow-vs-truth agreement ({backend}, {num_clips} clips): all {agree:.1%}, kept {kept:.1%} "
          f"of {len(ls.labels)}; cuts {np.round(ls.cuts, 3).tolist()}")
    for tier in ("still", "slow", "medium", "fast"):
        v = [res.features[c][13] for c in truth if truth[c].startswith(tier)]
        print(f"  {tier:<6} fg magnitude {min(v):.3f} .. {max(v):.3f} (n={len(v)})")
    print("  mismatches (truth, flow):", dict(collections.Counter(
        (truth[c], ls.all_labels[c]) for c in truth if truth[c] != ls.all_labels[c])))
    for r in rows[:flip_check]:  # a horizontally flipped clip must get the mirrored class
        pairs = read_clip_pairs(out_dir / r["path"])
        flipped = extract_motion_features(pairs[:, :, :, ::-1].copy(), backend=backend)
        assert classify_features(flipped, ls.cuts) == mirror_class(ls.all_labels[r["clip_id"]])
    return agree, kept


def test_synthetic_world_agreement_small(tmp_path):
    # 16 clips = 4 videos; each video holds one clip of every tier, so 2 train videos fit the cuts.
    split_of = lambda v: {0: "train", 1: "train", 2: "val", 3: "test"}[int(v.rsplit("v", 1)[1])]  # noqa: E731
    agree, kept = _world_agreement(tmp_path, 16, split_of, flip_check=3)
    assert agree >= 0.9 and kept >= 0.9


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["farneback", "dis"])
def test_synthetic_world_agreement_120(tmp_path, backend):
    import hashlib

    def split_of(video_id: str) -> str:
        h = int(hashlib.sha256(video_id.encode()).hexdigest(), 16) % 100
        return "train" if h < 70 else ("val" if h < 85 else "test")

    agree, kept = _world_agreement(tmp_path, 120, split_of, backend=backend, flip_check=4)
    assert agree >= 0.9 and kept >= 0.9
