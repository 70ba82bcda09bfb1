"""The clip-parallel engine: in-process, on a local Ray cluster, and sharded by rank (2 gloo processes)
write the same bytes; a crash mid-stage resumes without recomputing finished chunks."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import npz_members, run_stage

from vjepa_adapt import engine
from vjepa_adapt.data.clips import Clip

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, pred_hidden_size=32,
            pred_num_hidden_layers=1, pred_num_attention_heads=2)


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """16 synthetic clips + one unreadable clip (a manifest), and a tiny random V-JEPA 2 folder."""
    from vjepa_adapt.models.vjepa import build_model
    from vjepa_adapt.world import generate_world

    root = tmp_path_factory.mktemp("world")
    generate_world(root / "w", num_clips=16, style="target", seed=0, width=64, height=48, num_frames=20, fps=16.0,
                   clips_per_video=1, contact_sheet=False)
    (root / "w" / "bad.mp4").write_bytes(b"")
    with open(root / "w" / "manifest.jsonl", "a") as fh:
        fh.write(json.dumps({"clip_id": "zz_bad", "path": "bad.mp4", "video_id": "vbad"}) + "\n")
    torch.manual_seed(0)
    build_model("tiny", crop_size=32, frames_per_clip=8, patch_size=16, **TINY).save_pretrained(root / "model")
    return root


def _cfg(world: Path, out: Path, *extra: str):
    from vjepa_adapt.config import load_config

    return load_config(None, [
        f"data.clips={world / 'w' / 'manifest.jsonl'}", f"model.weights={world / 'model'}", f"run.out={out}",
        "run.device=cpu", "run.threads=1", "run.chunk_size=3", "data.num_frames=8", "data.size=32", "model.patch_size=16",
        "motion.num_classes=4", "motion.min_count_per_split=1", "embed.chunk_size=4", "embed.batch_size=2",
        "embed.pooled_grid=[1,2,2]", "embed.baselines=[random_init]", "data.max_bad_fraction=0.5", *extra])


def _assert_same_outputs(a: Path, b: Path, files: list[str]) -> None:
    for rel in files:
        pa, pb = a / rel, b / rel
        if rel.endswith(".npz"):
            assert npz_members(pa) == npz_members(pb), rel
        else:
            assert pa.read_bytes() == pb.read_bytes(), rel


def _skipped(run: Path, stage: str) -> list[dict]:
    return json.loads((run / stage / "stage.json").read_text())["skipped"]


OUTPUTS = {"motion": ["motion/features.npz", "motion/labels.csv", "motion/classes.json"],
           "tag": ["tag/tags.jsonl"],
           "embed": ["embed/frozen/features.npz", "embed/random_init/features.npz"]}


@pytest.fixture(scope="module")
def local_run(world, tmp_path_factory):
    run = tmp_path_factory.mktemp("local") / "run"
    for command in ("motion", "tag", "embed"):
        run_stage(_cfg(world, run), command)
    return run


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


# ------------------------------------------------------------------------------------------ engine units


def _clips(n: int) -> list[Clip]:
    return [Clip(f"c{i}", f"/nowhere/c{i}.mp4", f"v{i}") for i in range(n)]


def _counting_worker(log: list[str], fail_on: str | None = None):
    def work(chunks):
        for chunk in chunks:
            ids = []
            for c in chunk.clips:
                if c.clip_id == fail_on:
                    raise RuntimeError(f"bug on {c.clip_id}")
                log.append(c.clip_id)
                ids.append(c.clip_id)
            yield chunk.index, {"clip_ids": np.asarray(ids, dtype=str), "x": np.arange(len(ids)) + 10 * chunk.index}
    return work


def test_local_engine_parts_in_chunk_order_and_resume_recomputes_only_missing_chunks(tmp_path):
    log: list[str] = []
    job = engine.ClipJob("t", _clips(7), 3, tmp_path / "parts", lambda: _counting_worker(log, fail_on="c4"))
    with pytest.raises(RuntimeError, match="bug on c4"):
        engine.run_job(job)
    assert log == ["c0", "c1", "c2", "c3"] and sorted(p.name for p in (tmp_path / "parts").iterdir()) == [
        "part-00000.npz"]
    log.clear()
    job.make_worker = lambda: _counting_worker(log)
    parts = engine.run_job(job)
    assert log == ["c3", "c4", "c5", "c6"]  # chunk 0 (c0-c2) was finished: not recomputed
    assert [p["clip_ids"].tolist() for p in parts] == [["c0", "c1", "c2"], ["c3", "c4", "c5"], ["c6"]]
    assert [p[engine.CHUNK_CLIPS_KEY].tolist() for p in parts][2] == ["c6"]
    # A part of another chunking (chunk size changed between runs) is not taken for this chunk's.
    log.clear()
    job.chunk_size = 2
    engine.run_job(job)
    assert log == ["c0", "c1", "c2", "c3", "c4", "c5", "c6"]
    with pytest.raises(Exception, match="run.engine"):
        engine.run_job(job, engine="spark")


def test_in_process_motion_crash_then_rerun_computes_only_unfinished_chunks(world, local_run, tmp_path,
                                                                            monkeypatch):
    from vjepa_adapt.motion import stage as motion_stage

    real, calls = motion_stage.extract_motion_features, []

    def flaky(pairs, **kw):
        calls.append(1)
        if len(calls) == 5:  # a bug (not bad input) on the 5th clip: the stage fails
            raise RuntimeError("flow backend crashed")
        return real(pairs, **kw)

    monkeypatch.setattr(motion_stage, "extract_motion_features", flaky)
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="flow backend crashed"):
        run_stage(_cfg(world, run), "motion")
    assert sorted(p.name for p in (run / "motion" / "parts").iterdir()) == ["part-00000.npz"]  # clips 0-2
    calls.clear()
    monkeypatch.setattr(motion_stage, "extract_motion_features", lambda pairs, **kw: (calls.append(1), real(pairs, **kw))[1])
    run_stage(_cfg(world, run), "motion")
    assert len(calls) == 16 - 3  # 17 clips, 3 finished before the crash, the bad one never reaches the flow
    _assert_same_outputs(run, local_run, OUTPUTS["motion"])
    assert not (run / "motion" / "parts").exists()


def test_chunk_size_does_not_change_the_bytes(world, local_run, tmp_path):
    run = tmp_path / "run"
    run_stage(_cfg(world, run, "run.chunk_size=5", "embed.chunk_size=16"), "motion")
    _assert_same_outputs(run, local_run, OUTPUTS["motion"])


# ------------------------------------------------------------------------------------------ Ray


@pytest.fixture(scope="module")
def ray_run(tmp_path_factory):
    return tmp_path_factory.mktemp("ray") / "run"


@pytest.mark.parametrize("command", ["motion", "tag", "embed"])
def test_ray_engine_writes_the_in_process_engines_bytes(command, world, local_run, ray_cluster, ray_run):
    # embed: the frozen arm only (each arm starts its own actor pool: ~10 s of worker start-up here)
    run_stage(_cfg(world, ray_run, "run.engine=ray", *(["embed.baselines=[]"] if command == "embed" else [])), command)
    _assert_same_outputs(ray_run, local_run, OUTPUTS[command][:1] if command == "embed" else OUTPUTS[command])
    for stage in {"motion": ["motion"], "tag": ["tag"], "embed": ["embed/frozen"]}[command]:
        skipped = _skipped(ray_run, stage)
        assert skipped == _skipped(local_run, stage) and [s["clip"] for s in skipped] == ["zz_bad"], stage
        assert "empty" in skipped[0]["reason"]
        assert not (ray_run / stage / "parts").exists()  # motion/tag: merged, then the parts are removed


def test_ray_crash_mid_stage_then_rerun_computes_only_unfinished_chunks(ray_cluster, tmp_path):
    """A clip raises a bug (not bad input) in a Ray worker: the stage fails, the parts that finished
    are on disk, and the re-run computes only the chunks without one."""
    marker, computed = tmp_path / "fail", tmp_path / "computed"
    marker.write_text("")
    computed.mkdir()

    def make_worker():  # pickled by value to the Ray workers (a nested function)
        def work(chunks):
            for chunk in chunks:
                for c in chunk.clips:
                    if c.clip_id == "c9" and os.path.exists(marker):
                        raise RuntimeError("bug on c9")
                    (computed / c.clip_id).write_text("")
                yield chunk.index, {"clip_ids": np.asarray([c.clip_id for c in chunk.clips], dtype=str)}
        return work

    job = engine.ClipJob("t", _clips(12), 2, tmp_path / "parts", make_worker, uses_model=True)
    with pytest.raises(Exception, match="bug on c9"):
        engine.run_job(job, engine="ray", workers=1)
    done_first = sorted(int(p.name[5:10]) for p in (tmp_path / "parts").iterdir())
    assert 4 not in done_first  # c9's chunk never finished
    for p in computed.iterdir():
        p.unlink()
    marker.unlink()
    parts = engine.run_job(job, engine="ray", workers=2)
    recomputed = sorted(int(p.name[1:]) for p in computed.iterdir())
    assert recomputed == [i for k in range(6) if k not in done_first for i in (2 * k, 2 * k + 1)]
    assert [p["clip_ids"].tolist() for p in parts] == [[f"c{2 * k}", f"c{2 * k + 1}"] for k in range(6)]


# ------------------------------------------------------------------------------------------ torchrun ranks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank: int, world_size: int, port: int, world: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank), VJEPA_ADAPT_QUIET="1")
    torch.set_num_threads(1)
    from vjepa_adapt import dist

    dist.init("cpu")
    try:
        run_stage(_cfg(Path(world), Path(out)), "embed")
    finally:
        dist.shutdown()


def test_embed_sharded_by_rank_under_two_gloo_processes_equals_one_process(world, local_run, tmp_path):
    import torch.multiprocessing as mp

    run = tmp_path / "run"
    mp.spawn(_rank_worker, args=(2, _free_port(), str(world), str(run)), nprocs=2, join=True)
    _assert_same_outputs(run, local_run, OUTPUTS["embed"])
    assert _skipped(run, "embed/frozen") == _skipped(local_run, "embed/frozen")
    # 17 clips in chunks of 4 -> 5 chunks; rank 0 took 0, 2, 4 and rank 1 took 1, 3 (both wrote parts)
    assert sorted(p.name for p in (run / "embed" / "frozen" / "chunks").iterdir()) == [
        f"chunk-{k:05d}.npz" for k in range(5)]
