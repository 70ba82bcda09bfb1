"""A stage's hash covers every setting it reads (issue #9, defect 7: stale caches)."""

from __future__ import annotations

import pytest

from vjepa_adapt.config import load_config
from vjepa_adapt.stages.graph import build_graph


@pytest.mark.parametrize("override", [
    "data.crop_scale=[0.5,1.0]", "data.crop_ratio=[0.8,1.2]", "data.flip_prob=0.0", "data.split_seed=3",
])
def test_trained_arms_rerun_when_an_augmentation_or_split_setting_changes(override):
    # the trainer crops/flips with cfg.data's settings; data.split_seed moves clips between splits
    before = build_graph(load_config("demo")).hashes(load_config("demo"))
    cfg = load_config("demo", [override])
    after = build_graph(cfg).hashes(cfg)
    for arm in ("pretrain", "pretrain_head", "surgery", "surgery_head"):
        assert after[arm] != before[arm], arm
    # the frozen encoder's features never see an augmentation: only a new split re-embeds them
    assert (after["embed/frozen"] != before["embed/frozen"]) == override.startswith("data.split_seed")
