"""Stage requirements (issue #9, defects 1 and 2): each stage declares what it needs, only the stages a
command selects are checked, and everything checkable is checked before the first stage runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

import vjepa_adapt.stages.encoders as enc
from vjepa_adapt.cli import main
from vjepa_adapt.config import load_config
from vjepa_adapt.errors import UserError, WeightsError
from vjepa_adapt.stages.graph import build_graph

MOTION_SMALL = ["motion.num_classes=2", "motion.min_count_per_split=1", "motion.num_pairs=4"]


@pytest.fixture
def real_folder(tmp_path, make_video):
    """A folder of nine short encoded videos (a user's clips). All nine are copies of one video of a
    square moving right, so every clip gets the same motion class and any split has labels."""
    bg = (np.random.default_rng(0).uniform(0, 255, (48, 64, 1)) * np.ones((1, 1, 3))).astype(np.uint8)
    frames = np.stack([bg] * 12)
    for t in range(12):
        frames[t, 16:28, 10 + 2 * t:22 + 2 * t] = 255
    one = make_video(tmp_path / "one.mp4", frames).read_bytes()
    folder = tmp_path / "my_clips"
    folder.mkdir()
    for i in range(9):
        (folder / f"v{i}.mp4").write_bytes(one)
    return folder


# ------------------------------------------------------------------- defect 1: motion needs no model


def test_motion_on_real_clips_runs_without_a_model(tmp_path, real_folder):
    run = tmp_path / "run"
    rc = main(["motion", "--clips", str(real_folder), "--out", str(run), *MOTION_SMALL])
    assert rc == 0
    classes = json.loads((run / "motion" / "classes.json").read_text())
    assert classes["num_clips"] == 9
    assert not (run / "embed").exists() and not (run / "pretrain").exists()


def test_requirements_are_checked_only_for_the_selected_stages(tmp_path):
    cfg = load_config(None, ["data.clips=/some/videos", f"run.out={tmp_path}"])  # real clips, no model
    graph = build_graph(cfg)  # building the graph demands nothing
    graph.check_requirements(cfg, graph.upstream(["motion"]))
    graph.check_requirements(cfg, graph.upstream(["tag"]))
    with pytest.raises(UserError, match=r"model\.weights: required.*embed/frozen"):
        graph.check_requirements(cfg, graph.upstream(["embed/frozen"]))
    # the random-init baseline needs no weights either
    graph.check_requirements(cfg, graph.upstream(["embed/random_init"]))


def test_every_stage_that_loads_the_frozen_encoder_declares_it(tmp_path):
    cfg = load_config(None, ["data.clips=/some/videos"])
    graph = build_graph(cfg)
    needing = set()
    for name in graph.specs:
        try:
            graph.check_requirements(cfg, [name])
        except UserError:
            needing.add(name)
    # embed/pretrain_head and embed/surgery_head read embed/frozen's features (and their head): they
    # load no encoder themselves, their upstream stages do
    assert needing == {"pretrain", "pretrain_head", "surgery", "surgery_head", "embed/frozen", "embed/frame_shuffled"}


def test_demo_graph_needs_no_weights():
    cfg = load_config("demo")
    graph = build_graph(cfg)
    graph.check_requirements(cfg, list(graph.specs))  # the base stage provides the frozen encoder


# ------------------------------------------------------------------- defect 2: wrong weights found first


def test_missing_weights_path_fails_in_seconds_before_any_stage(tmp_path, real_folder, capsys):
    run = tmp_path / "run"
    t0 = time.perf_counter()
    rc = main(["run", "--clips", str(real_folder), "--out", str(run), "model.weights=/typo/path", *MOTION_SMALL])
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "/typo/path" in err and "does not exist" in err
    assert seconds < 15, seconds
    stage_folders = [p for p in run.iterdir() if p.is_dir()] if run.exists() else []
    assert stage_folders == []


def test_cached_stages_are_not_checked_again(tmp_path, real_folder):
    run = tmp_path / "run"
    assert main(["motion", "--clips", str(real_folder), "--out", str(run), *MOTION_SMALL]) == 0
    cfg = load_config(None, [f"data.clips={real_folder}", f"run.out={run}", *MOTION_SMALL])
    graph = build_graph(cfg)
    assert graph.run(cfg, run, targets=["motion"]) == {"clips": "cached", "motion": "cached"}


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _cache_repo(cache: Path, repo_id: str) -> None:
    """The layout huggingface_hub writes: models--owner--name/{refs/main, snapshots/<rev>/config.json}."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    rev = "0" * 40
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(rev)
    snap = root / "snapshots" / rev
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")


def test_weights_precheck_kinds(tmp_path, hf_cache):
    with pytest.raises(WeightsError, match="does not exist"):
        enc.check_weights_source(str(tmp_path / "nope.pt"))
    with pytest.raises(WeightsError, match="does not exist"):
        enc.check_weights_source("/typo/path")
    folder = tmp_path / "hf_folder"
    folder.mkdir()
    with pytest.raises(WeightsError, match="config.json"):
        enc.check_weights_source(str(folder))
    (folder / "config.json").write_text("{}")
    with pytest.raises(WeightsError, match="no weights file"):
        enc.check_weights_source(str(folder))
    (folder / "model.safetensors").write_bytes(b"x")
    enc.check_weights_source(str(folder))
    notes = tmp_path / "weights.txt"
    notes.write_text("hello")
    with pytest.raises(WeightsError, match="not a known weights file"):
        enc.check_weights_source(str(notes))
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match="empty"):
        enc.check_weights_source(str(empty))
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\xff" * 16)
    with pytest.raises(WeightsError, match="safetensors"):
        enc.check_weights_source(str(bad_st))
    import torch

    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(2)}, good)
    enc.check_weights_source(str(good))
    for bad_id in ("facebook//vjepa2", "a/b/c", "face book/vjepa2", "-x/y"):
        with pytest.raises(WeightsError):
            enc.check_weights_source(bad_id)


def test_hub_id_offline_needs_the_cache(hf_cache):
    with pytest.raises(WeightsError, match="not in the Hugging Face cache.*HF_HUB_OFFLINE=1"):
        enc.check_weights_source("facebook/vjepa2-vitl-fpc64-256")
    _cache_repo(hf_cache, "facebook/vjepa2-vitl-fpc64-256")
    enc.check_weights_source("facebook/vjepa2-vitl-fpc64-256")


def test_hub_id_online_is_looked_up_unless_cached(hf_cache, monkeypatch):

    monkeypatch.delenv("HF_HUB_OFFLINE")
    hub = "facebook/vjepa2-vitl-fpc64-256"
    monkeypatch.setattr(enc, "_hub_status", lambda repo_id, timeout_s=10.0: ("unreachable", "ConnectError: no DNS"))
    with pytest.raises(WeightsError, match="not in the Hugging Face cache.*cannot be reached"):
        enc.check_weights_source(hub)
    monkeypatch.setattr(enc, "_hub_status", lambda repo_id, timeout_s=10.0: ("missing", ""))
    with pytest.raises(WeightsError, match="no model .* on the Hugging Face Hub"):
        enc.check_weights_source("facebook/vjepa2-vitl-fpc64-265")
    monkeypatch.setattr(enc, "_hub_status", lambda repo_id, timeout_s=10.0: ("found", ""))
    enc.check_weights_source(hub)  # downloadable: the loader fetches it
    _cache_repo(hf_cache, hub)
    monkeypatch.setattr(enc, "_hub_status", lambda repo_id, timeout_s=10.0: pytest.fail("cached: no network probe"))
    enc.check_weights_source(hub)


def test_tag_and_motion_backends_are_checked_before_any_stage(tmp_path, real_folder, monkeypatch, capsys):
    run = tmp_path / "run"
    rc = main(["tag", "--clips", str(real_folder), "--out", str(run), "tag.backend=hf",
               f"tag.model={tmp_path / 'no_such_vlm'}"])
    assert rc == 2 and "tag.model" in capsys.readouterr().err and not run.exists()
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchvision"
                        else real_find_spec(name, *a))
    rc = main(["motion", "--clips", str(real_folder), "--out", str(run), "motion.backend=raft_small"])
    err = capsys.readouterr().err
    assert rc == 2 and "motion.backend=raft_small" in err and "torchvision" in err and not run.exists()


def test_a_gpu_preset_on_a_cpu_machine_runs_motion_and_stops_gpu_stages_first(tmp_path, real_folder, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_config("vitl-256", [f"data.clips={real_folder}", "model.weights=/typo/path"])  # run.device: cuda
    graph = build_graph(cfg)
    graph.check_requirements(cfg, graph.upstream(["motion"]))  # Farnebäck runs on the CPU
    with pytest.raises(UserError, match="run.device=cuda.*needed by probe/random_init"):
        graph.check_requirements(cfg, ["probe/random_init"])
    run = tmp_path / "run"
    assert main(["motion", "--config", "vitl-256", "--clips", str(real_folder), "--out", str(run),
                 *MOTION_SMALL]) == 0
