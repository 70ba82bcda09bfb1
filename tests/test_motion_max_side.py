"""Motion flow resolution (issue #9, defect 8): a documented default max_side, recorded in classes.json,
that leaves the synthetic world (rendered at 128x96) untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vjepa_adapt.cli import main
from vjepa_adapt.config import MotionConfig, load_config
from vjepa_adapt.motion import extract_motion_features, read_clip_pairs


def test_default_max_side_is_set_and_presets_keep_it():
    assert MotionConfig().max_side == 256
    for preset in ("demo", "vitl-256", "vitg-384"):
        assert load_config(preset).motion.max_side == 256


@pytest.mark.parametrize("override, recorded", [([], 256), (["motion.max_side=null"], None)])
def test_max_side_used_is_recorded_in_classes_json(tmp_path, make_video, override, recorded):
    rng = np.random.default_rng(0)
    bg = (rng.uniform(0, 255, (96, 320, 1)) * np.ones((1, 1, 3))).astype(np.uint8)  # wider than 256
    frames = np.stack([np.roll(bg, 2 * t, axis=1) for t in range(10)])  # a pan to the right
    one = make_video(tmp_path / "one.mp4", frames).read_bytes()
    folder = tmp_path / "clips"
    folder.mkdir()
    for i in range(6):
        (folder / f"v{i}.mp4").write_bytes(one)
    run = tmp_path / "run"
    assert main(["motion", "--clips", str(folder), "--out", str(run), "motion.min_count_per_split=1",
                 "motion.num_pairs=4", *override]) == 0
    classes = json.loads((run / "motion" / "classes.json").read_text())
    assert classes["max_side"] == recorded
    assert json.loads((run / "motion" / "stage.json").read_text())["extra"]["max_side"] == recorded


def test_default_max_side_leaves_the_synthetic_world_unchanged(tmp_path):
    synthetic = pytest.importorskip("vjepa_adapt.world")
    rows = synthetic.generate_world(tmp_path, num_clips=4, style="target", seed=0, contact_sheet=False)  # 128x96
    default = MotionConfig().max_side
    for r in rows:
        pairs = read_clip_pairs(tmp_path / r["path"])
        assert max(pairs.shape[2:4]) <= default
        np.testing.assert_array_equal(extract_motion_features(pairs, max_side=default),
                                      extract_motion_features(pairs, max_side=None))
