"""The packaged demo base (``vjepa_adapt/assets/demo_base``): it is what the current recipe trains,
it loads as the frozen encoder of a demo run, and it reads motion on source-style clips it never saw.

A test cannot retrain it in CI time (600 steps, ~11 min on 2 cores): the slow test below runs the
``base`` command itself on tiny settings, so the command that made the shipped files stays working.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vjepa_adapt import storage
from vjepa_adapt.config import load_config
from vjepa_adapt.pipeline import _config_subset
from vjepa_adapt.stages.base import RECIPE_KEYS, RECORD
from vjepa_adapt.stages.encoders import packaged_base

BASE = packaged_base()


def test_the_shipped_base_is_what_the_current_recipe_trains():
    record = storage.read_json(BASE / RECORD)
    now = _config_subset(load_config("demo").model_dump(mode="json"), list(RECIPE_KEYS))
    assert record["recipe"] == now, ("the demo's recipe changed since the base was shipped: retrain it with "
                                     "`vjepa-adapt base --out runs/base --ship`")
    config = storage.read_json(BASE / "config.json")
    assert config["input_transform"] == now["base"]["input_transform"]
    assert {"config.json", "model.safetensors", "head.safetensors"} <= {p.name for p in BASE.iterdir()}
    # its own score, on the source style, with the probe protocol: far above chance
    p = record["source_probe"]
    assert p["n_test"] >= 100 and p["ci_low"] > 2 / p["num_classes"]


def test_the_shipped_base_reads_motion_on_unseen_source_clips(tmp_path):
    """Fresh source-style scenes (a seed the base never saw), its own motion_aux head on the whole
    clip, against the classes the world planned: at least 3x chance on 48 clips."""
    from safetensors.torch import load_file

    from vjepa_adapt.data.clips import Clip
    from vjepa_adapt.data.loader import ClipDataset, build_eval_loader
    from vjepa_adapt.models.heads import MotionAuxHead
    from vjepa_adapt.models.vjepa import encode_full, load_model
    from vjepa_adapt.stages.data import render_world

    cfg = load_config("demo", ["synth.workers=1"])
    record = storage.read_json(BASE / RECORD)
    classes = record["classes"]
    rows = render_world(cfg, tmp_path / "w", "source", 48, seed=9_001)
    rows = [r for r in rows if r["motion_class"] in classes]
    assert len(rows) >= 40
    model, _ = load_model(BASE, crop_size=cfg.data.size, frames_per_clip=cfg.data.num_frames)
    state = load_file(BASE / "head.safetensors")
    head = MotionAuxHead(model.config.hidden_size, len(classes), reg_dims=state["reg.weight"].shape[0])
    head.load_state_dict(state)
    model.eval(), head.eval()
    clips = [Clip(r["clip_id"], str(tmp_path / "w" / r["path"]), r["video_id"]) for r in rows]
    data = ClipDataset(clips, num_frames=cfg.data.num_frames, size=cfg.data.size, seed=0, train=False)
    preds = []
    with torch.no_grad():
        for batch in build_eval_loader(data, 16):
            logits, _, _ = head(encode_full(model.encoder, batch["video"]).mean(dim=1))
            preds += logits.argmax(-1).tolist()
    truth = [classes.index(r["motion_class"]) for r in rows]
    acc = float(np.mean(np.asarray(preds) == np.asarray(truth)))
    assert acc >= 3 / len(classes), acc


@pytest.mark.slow
def test_the_base_command_trains_probes_and_ships(tmp_path):
    from vjepa_adapt.cli import main

    out, dest = tmp_path / "base", tmp_path / "ship"
    args = ["base", "--out", str(out), "base.clips=48", "base.steps=4", "base.warmup_steps=1",
            "base.checkpoint_every=2", "synth.width=64", "synth.height=48", "synth.num_frames=16",
            "data.num_frames=8", "data.size=32", "probe.epochs=2", "synth.workers=1",
            "motion.num_classes=4", "motion.min_count_per_split=1", "embed.pooled_grid=[1,2,2]"]
    assert main(args) == 0
    record = storage.read_json(out / RECORD)
    assert record["train"]["steps"] == 4 and record["recipe"]["base"]["steps"] == 4
    assert 0.0 <= record["source_probe"]["top1"] <= 1.0 and record["classes"]
    from vjepa_adapt.stages.base import ship

    ship(out, dest)
    assert {p.name for p in dest.iterdir()} == {"config.json", "model.safetensors", "head.safetensors", RECORD}
