"""Ch 11 factorize: D_L / D_A / D_I builders, coverage filters, tube windows without padding,
streaming vs materialised clips, their motion targets, and the stage on a synthetic world."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vjepa_adapt.factors import (
    AGENT,
    INTERACTION,
    LAYOUT,
    FactorParams,
    FactorSpec,
    agent_coverage,
    build_factor_clip,
    build_factor_frames,
    factor_motion,
    plan_factors,
    remove_agents,
    resample_indices,
    soft_mask,
    spec_from_row,
    spec_to_row,
    suppress_background,
    tube_box,
)
from vjepa_adapt.segmentation.masks import ClipMasks

# ----------------------------------------------------------------------------- hand-made clips


def clip_with_agents(n: int = 12, h: int = 48, w: int = 64, squares=((10, 20, 1), (40, 20, 2)),
                     interactions=()) -> tuple[np.ndarray, ClipMasks]:
    """Grey background, one red square per (x, y, id) moving 1 px/frame right; frame t carries its
    index in the blue channel of pixel (0, 0) so tests can tell which frame a factor frame came from."""
    frames = np.full((n, h, w, 3), 120, np.uint8)
    labels = np.zeros((n, h, w), np.uint16)
    for t in range(n):
        for x, y, i in squares:
            frames[t, y:y + 8, x + t:x + t + 8] = (220, 30, 30)
            labels[t, y:y + 8, x + t:x + t + 8] = i
        frames[t, 0, 0] = (0, 0, t)
    rows = [{"id": i, "role": "agent"} for _, _, i in squares]
    return frames, ClipMasks("c", labels, np.arange(n), rows, list(interactions), info={"num_frames": n})


# ----------------------------------------------------------------------------- pure pieces


def test_resample_indices_span_the_real_window_without_padding():
    idx = resample_indices(5, 9, 16)  # a 4-frame window stretched to 16 frames
    assert idx[0] == 5 and idx[-1] == 8 and (np.diff(idx) >= 0).all() and set(idx) == {5, 6, 7, 8}
    counts = np.bincount(idx)[5:9]
    assert counts.max() - counts.min() <= 1  # evenly stretched: the last frame is not repeated to fill
    assert resample_indices(0, 32, 16).tolist() == list(range(1, 32, 2))  # a long window: one per pair, no repeats
    assert resample_indices(3, 8, 5).tolist() == [3, 4, 5, 6, 7]
    with pytest.raises(ValueError):
        resample_indices(3, 3, 4)


def test_soft_mask_dilates_and_feathers():
    m = np.zeros((21, 21), bool)
    m[10, 10] = True
    s = soft_mask(m, dilate_px=2, feather_px=2)
    assert s[10, 10] == 1.0 and s[10, 12] == 1.0  # inside the dilation: fully covered
    assert 0 < s[10, 14] < 1 and s[0, 0] < 1e-3  # a soft edge, nothing far away
    assert soft_mask(m, 0, 0).sum() == 1


def test_layout_factor_removes_agents_with_the_surrounding_colour():
    frames, masks = clip_with_agents(n=3)
    out = remove_agents(frames, masks.agent_mask(), dilate_px=1.5, feather_px=1.5, blur_sigma_px=4)
    agent = masks.agent_mask()
    red = out[agent].astype(int)
    assert np.abs(red - 120).max() <= 3  # the squares are filled with the grey around them
    far = np.zeros_like(agent)
    far[:, 40:, :8] = True
    assert np.array_equal(out[far], frames[far])  # away from agents nothing changes


def test_agent_factor_greys_and_darkens_the_background():
    frames, masks = clip_with_agents(n=2)
    out = suppress_background(frames, masks.agent_mask(), dilate_px=0.5, feather_px=1.0, level=0.3)
    agent = masks.agent_mask()
    assert np.array_equal(out[agent], frames[agent])  # agents untouched
    far = np.zeros_like(agent)
    far[:, 40:, 30:] = True
    assert np.abs(out[far].astype(int) - 36).max() <= 1  # 0.3 x grey 120; and grey (R = G = B)


def test_tube_box_contains_the_pair_at_the_frame_aspect_inside_the_frame():
    union = np.zeros((48, 64), bool)
    union[20:28, 10:18] = True
    union[22:30, 30:38] = True
    x0, y0, x1, y1 = tube_box(union, margin=0.25, height=48, width=64)
    assert x0 <= 10 and x1 >= 38 and y0 <= 20 and y1 >= 30
    assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 48
    assert (x1 - x0) / (y1 - y0) == pytest.approx(64 / 48, rel=0.06)
    corner = np.zeros((48, 64), bool)
    corner[0:6, 58:64] = True
    x0, y0, x1, y1 = tube_box(corner, 0.25, 48, 64)
    assert x1 == 64 and y0 == 0 and (x1 - x0) / (y1 - y0) == pytest.approx(64 / 48, rel=0.1)  # shifted, not cut


def test_coverage_filters_keep_and_drop_layout_and_agent_factors():
    params = FactorParams(max_agent_coverage_layout=0.7, min_agent_coverage_agent=0.05)
    n, h, w = 4, 10, 10
    for cover, kinds in ((0.8, {AGENT}), (0.7, {LAYOUT, AGENT}), (0.05, {LAYOUT, AGENT}), (0.04, {LAYOUT})):
        labels = np.zeros((n, h, w), np.uint16)
        labels.reshape(n, -1)[:, :int(round(cover * h * w))] = 1
        masks = ClipMasks("c", labels, np.arange(n), [{"id": 1, "role": "agent"}])
        assert agent_coverage(masks.agent_mask()) == pytest.approx(cover)
        specs, dropped = plan_factors(masks, params)
        assert {s.kind for s in specs} == kinds, cover
        assert set(dropped) == {LAYOUT, AGENT, INTERACTION} - kinds
    # a layout tracklet is not an agent: it never counts towards coverage
    masks = ClipMasks("c", np.ones((n, h, w), np.uint16), np.arange(n), [{"id": 1, "role": "layout"}])
    assert {s.kind for s in plan_factors(masks, params)[0]} == {LAYOUT}


def test_interaction_tube_uses_only_frames_of_its_window():
    frames, masks = clip_with_agents(n=20, squares=((4, 20, 1), (20, 20, 2)),
                                     interactions=[{"a": 1, "b": 2, "start": 6, "end": 11}])
    params = FactorParams(num_frames=16, tube_margin=0.2)
    specs, _ = plan_factors(masks, params)
    tube = [s for s in specs if s.kind == INTERACTION]
    assert len(tube) == 1 and tube[0].window == (6, 11) and tube[0].pair == (1, 2)
    x0, y0, x1, _ = tube[0].box
    assert x0 <= 4 + 6 and x1 >= 20 + 10 + 8  # both squares over the whole window
    crop_src = frames.copy()
    crop_src[:, y0, x0] = frames[:, 0, 0]  # put the frame index where the crop can see it
    out = build_factor_frames(crop_src, masks, tube[0], params)
    assert out.shape == (16, 48, 64, 3)
    seen = out[:, 0, 0, 2].astype(int)  # crop's top-left pixel = frame index (resize keeps the corner)
    assert seen.min() >= 6 and seen.max() <= 10 and seen[0] == 6 and seen[-1] == 10
    full = build_factor_frames(crop_src, masks, tube[0], params, full_rate=True)
    assert full[:, 0, 0, 2].tolist() == [6, 7, 8, 9, 10]


def test_spec_rows_round_trip_and_kind_names_match_train_streams():
    from vjepa_adapt.config import Stage

    spec = FactorSpec(INTERACTION, "c__inter0", "c", (2, 9), 0.2, pair=(1, 3), box=(0, 1, 30, 24))
    assert spec_from_row(json.loads(json.dumps(spec_to_row(spec)))) == spec
    Stage(name="s", steps=1, mixture={LAYOUT: 0.5, AGENT: 0.3, INTERACTION: 0.2})  # the surgery mixture accepts them


def test_streamed_factor_clip_equals_the_built_one_and_has_its_own_motion():
    frames, masks = clip_with_agents(n=12, interactions=[{"a": 1, "b": 2, "start": 0, "end": 12}])
    params = FactorParams(num_frames=8, min_agent_coverage_agent=0.02)  # two 8x8 squares: 4% of the frame
    for kind in (LAYOUT, AGENT, INTERACTION):
        spec = next(s for s in plan_factors(masks, params)[0] if s.kind == kind)
        assert np.array_equal(build_factor_clip(frames, masks, kind, params), build_factor_frames(frames, masks, spec,
                                                                                                   params))
    layout = build_factor_clip(frames, masks, LAYOUT, params, full_rate=True)
    agent = build_factor_clip(frames, masks, AGENT, params, full_rate=True)
    f_layout = factor_motion(layout, num_pairs=8, backend="farneback", max_side=None)
    f_agent = factor_motion(agent, num_pairs=8, backend="farneback", max_side=None)
    assert f_layout.shape == f_agent.shape == (23,)
    assert f_agent[13] > 5 * f_layout[13]  # foreground motion: the agents moved, the layout did not


# ----------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def segmented_run(tmp_path_factory):
    from vjepa_adapt.cli import main
    from vjepa_adapt.world import generate_world

    root = tmp_path_factory.mktemp("factors")
    generate_world(root / "world", num_clips=10, style="target", seed=5, width=128, height=96, num_frames=32,
                   clips_per_video=1)
    args = ["--clips", str(root / "world" / "manifest.jsonl"), "--out", str(root / "run")]
    assert main(["segment", *args]) == 0
    return root, args


def test_factorize_stage_materialised(segmented_run):
    from vjepa_adapt.cli import main
    from vjepa_adapt.data.clips import load_clips
    from vjepa_adapt.data.video import read_frames

    root, args = segmented_run
    assert main(["factorize", *args]) == 0
    out = root / "run" / "factorize"
    rec = json.loads((out / "stage.json").read_text())
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert rec["done"] == 10 and sum(rec["extra"]["factor_clips"].values()) == len(rows)
    assert rec["extra"]["factor_clips"][LAYOUT] >= 8 and rec["extra"]["factor_clips"][AGENT] >= 5
    for kind in (LAYOUT, AGENT):
        assert (out / f"samples_{kind}.png").stat().st_size > 10_000
    clips = load_clips(out / "manifest.jsonl")
    assert {c.video_id for c in clips} <= {f"target_v{v:04d}" for v in range(10)}  # splits by source video
    splits = {r["split"] for r in rows}
    assert splits <= {"train", "val", "test"} and "train" in splits
    frames = read_frames(clips[0].path, num_frames=16)
    assert frames.shape == (16, 96, 128, 3)
    with np.load(out / "motion.npz") as z:
        assert z["features"].shape == (len(rows), 23) and z["clip_ids"].tolist() == [r["clip_id"] for r in rows]
        assert np.isfinite(z["features"]).all()
    tubes = [r for r in rows if r["kind"] == INTERACTION]
    for r in tubes:
        s, e = r["window"]
        assert 0 <= s < e <= 32 and r["source_frames"] == [s, e - 1] and len(r["box"]) == 4


def test_factorize_stage_streamed_rebuilds_from_the_source_clip(segmented_run):
    from vjepa_adapt.cli import main
    from vjepa_adapt.data.clips import Clip
    from vjepa_adapt.segmentation.masks import load_clip_masks

    root, args = segmented_run
    assert main(["factorize", *args, "factors.materialise=false", "--out", str(root / "run2")]) == 0
    out = root / "run2" / "factorize"
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert rows and not any((out / k).exists() for k in (LAYOUT, AGENT, INTERACTION))
    row = rows[0]
    masks = load_clip_masks(root / "run2" / "segment" / "masks" / f"{row['source_clip']}.npz")
    clip = Clip(row["source_clip"], row["path"], row["video_id"])
    frames = build_factor_clip(clip, masks, spec_from_row(row))
    assert frames.shape == (16, 96, 128, 3) and frames.dtype == np.uint8


def test_factorize_without_segment_outputs_runs_segment_first(segmented_run):
    from vjepa_adapt.cli import main

    root, args = segmented_run
    run = root / "run3"
    assert main(["factorize", *args, "--out", str(run), "segment.num_frames=16", "factors.num_frames=8"]) == 0
    assert json.loads((run / "segment" / "stage.json").read_text())["done"] == 10
    assert (run / "factorize" / "manifest.jsonl").read_text()
