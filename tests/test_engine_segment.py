"""segment and factorize on the clip-parallel engine: in-process, in worker processes (run.cpu_workers),
on a local Ray cluster and sharded by rank (2 gloo processes) write the same bytes; an interrupted
segment stage resumes without recomputing finished chunks. Also the engine's worker processes alone."""

from __future__ import annotations

import functools
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

# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """8 synthetic target clips (with ground truth) + one unreadable clip, in a manifest."""
    from vjepa_adapt.world import generate_world

    root = tmp_path_factory.mktemp("segworld")
    generate_world(root / "w", num_clips=8, style="target", seed=3, width=64, height=48, num_frames=20, fps=16.0,
                   clips_per_video=1, contact_sheet=False)
    (root / "w" / "bad.mp4").write_bytes(b"")
    with open(root / "w" / "manifest.jsonl", "a") as fh:
        fh.write(json.dumps({"clip_id": "zz_bad", "path": "bad.mp4", "video_id": "vbad"}) + "\n")
    return root


def _cfg(world: Path, out: Path, *extra: str):
    from vjepa_adapt.config import load_config

    return load_config(None, [
        f"data.clips={world / 'w' / 'manifest.jsonl'}", f"run.out={out}", "run.device=cpu", "run.threads=1",
        "run.chunk_size=3", "segment.num_frames=16", "segment.overlay_clips=2", "factors.num_frames=8",
        "factors.sample_clips=2", "motion.num_pairs=4", "data.max_bad_fraction=0.5", "segment.in_run=true", *extra])


def _outputs(run: Path) -> list[str]:
    """Every file segment and factorize wrote (masks, factor MP4s, ...) but the stage records."""
    files = [str(p.relative_to(run)) for stage in ("segment", "factorize") for p in (run / stage).rglob("*")
             if p.is_file() and p.name not in ("stage.json", ".started")]
    return sorted(files)


def _assert_same_outputs(a: Path, b: Path) -> None:
    files = _outputs(a)
    assert files == _outputs(b)
    assert any(f.startswith("segment/masks/") for f in files) and any(f.endswith(".mp4") for f in files)
    for rel in files:
        if rel.endswith(".npz"):  # the zip's own timestamps are not content
            assert npz_members(a / rel) == npz_members(b / rel), rel
        else:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    for stage in ("segment", "factorize"):
        ra, rb = (json.loads((r / stage / "stage.json").read_text()) for r in (a, b))
        assert ra["skipped"] == rb["skipped"] and ra["done"] == rb["done"], stage
        assert not (a / stage / "parts").exists(), stage  # merged, then the parts are removed
    ra, rb = (json.loads((r / "segment" / "stage.json").read_text()) for r in (a, b))
    assert ra["extra"]["truth"] == rb["extra"]["truth"]


@pytest.fixture(scope="module")
def local_run(world, tmp_path_factory):
    run = tmp_path_factory.mktemp("seglocal") / "run"
    run_stage(_cfg(world, run), "factorize")  # segment comes along
    rec = json.loads((run / "segment" / "stage.json").read_text())
    assert rec["done"] == 8 and [s["clip"] for s in rec["skipped"]] == ["zz_bad"] and "truth" in rec["extra"]
    assert json.loads((run / "factorize" / "stage.json").read_text())["done"] == 8
    assert (run / "segment" / "overlay.png").exists() and (run / "factorize" / "samples_layout.png").exists()
    return run


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


# ------------------------------------------------------------------------------------------ the stages


def test_cpu_workers_write_the_in_process_bytes(world, local_run, tmp_path):
    run = tmp_path / "run"
    run_stage(_cfg(world, run, "run.cpu_workers=2"), "factorize")
    _assert_same_outputs(run, local_run)


def test_streamed_factorize_in_worker_processes_equals_in_process(world, local_run, tmp_path):
    # segment from the local run is reused (same hash): copy it, then factorize streamed both ways
    import shutil

    runs = []
    for workers in (0, 2):
        run = tmp_path / f"run{workers}"
        shutil.copytree(local_run / "segment", run / "segment")
        shutil.copytree(local_run / "clips", run / "clips")
        run_stage(_cfg(world, run, "factors.materialise=false", f"run.cpu_workers={workers}"), "factorize")
        runs.append(run)
    for name in ("manifest.jsonl", "motion.npz", "samples_layout.png"):
        a, b = runs[0] / "factorize" / name, runs[1] / "factorize" / name
        assert (npz_members(a) == npz_members(b)) if name.endswith(".npz") else a.read_bytes() == b.read_bytes()
    rows = [json.loads(line) for line in (runs[0] / "factorize" / "manifest.jsonl").read_text().splitlines()]
    assert rows and not any(r["materialised"] for r in rows)
    assert not any((runs[1] / "factorize" / k).exists() for k in ("layout", "agent", "interaction"))


def test_interrupted_segment_resumes_without_recomputing_finished_chunks(world, local_run, tmp_path, monkeypatch):
    from vjepa_adapt.segmentation import stage as seg_stage

    real, calls = seg_stage.segment_clip, []

    def flaky(*a, **kw):
        calls.append(1)
        if len(calls) == 5:  # a bug (not bad input) on the 5th clip: the stage fails
            raise RuntimeError("segmenter crashed")
        return real(*a, **kw)

    monkeypatch.setattr(seg_stage, "segment_clip", flaky)
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="segmenter crashed"):
        run_stage(_cfg(world, run), "segment")
    assert sorted(p.name for p in (run / "segment" / "parts").iterdir()) == ["part-00000.npz"]  # clips 0-2
    assert not (run / "segment" / "masks").exists()  # the driver writes the files from the parts, at the end
    calls.clear()
    monkeypatch.setattr(seg_stage, "segment_clip", lambda *a, **kw: (calls.append(1), real(*a, **kw))[1])
    run_stage(_cfg(world, run), "factorize")
    assert len(calls) == 8 - 3  # 9 clips, 3 finished before the crash, the bad one never reaches the segmenter
    _assert_same_outputs(run, local_run)


def test_segment_and_factorize_on_ray_write_the_in_process_bytes(world, local_run, ray_cluster, tmp_path):
    run = tmp_path / "run"
    run_stage(_cfg(world, run, "run.engine=ray"), "factorize")
    _assert_same_outputs(run, local_run)


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
    try:  # cpu_workers is ignored under torchrun: the ranks already split the chunks
        run_stage(_cfg(Path(world), Path(out), "run.cpu_workers=2"), "factorize")
    finally:
        dist.shutdown()


def test_segment_and_factorize_sharded_by_rank_equal_one_process(world, local_run, tmp_path):
    import torch.multiprocessing as mp

    run = tmp_path / "run"
    mp.spawn(_rank_worker, args=(2, _free_port(), str(world), str(run)), nprocs=2, join=True)
    _assert_same_outputs(run, local_run)


# ------------------------------------------------------------------------------------------ engine units


def _clips(n: int) -> list[Clip]:
    return [Clip(f"c{i}", f"/nowhere/c{i}.mp4", f"v{i}") for i in range(n)]


def _marking_worker(computed: str, fail_on: str | None):
    """Module level, so the worker processes can unpickle it: marks each clip it computes."""
    def work(chunks):
        for chunk in chunks:
            for c in chunk.clips:
                if c.clip_id == fail_on:
                    raise RuntimeError(f"bug on {c.clip_id}")
                Path(computed, c.clip_id).write_text("")
            yield chunk.index, {"clip_ids": np.asarray([c.clip_id for c in chunk.clips], dtype=str),
                                "pid": np.asarray(os.getpid()), "threads": np.asarray(torch.get_num_threads())}
    return work


def test_cpu_workers_crash_keeps_finished_parts_and_resume_computes_only_the_rest(tmp_path):
    computed = tmp_path / "computed"
    computed.mkdir()
    job = engine.ClipJob("t", _clips(12), 2, tmp_path / "parts",
                         functools.partial(_marking_worker, str(computed), "c9"))
    with pytest.raises(RuntimeError, match="bug on c9"):
        engine.run_job(job, cpu_workers=2)
    done_first = sorted(int(p.name[5:10]) for p in (tmp_path / "parts").iterdir())
    assert 4 not in done_first and done_first  # c9's chunk never finished; others did
    first = [engine.load_part(p) for p in sorted((tmp_path / "parts").iterdir())]
    assert all(int(p["pid"]) != os.getpid() and int(p["threads"]) == 1 for p in first)  # in worker processes
    for p in computed.iterdir():
        p.unlink()
    job.make_worker = functools.partial(_marking_worker, str(computed), None)
    parts = engine.run_job(job, cpu_workers=2)
    recomputed = sorted(int(p.name[1:]) for p in computed.iterdir())
    assert recomputed == [i for k in range(6) if k not in done_first for i in (2 * k, 2 * k + 1)]
    assert [p["clip_ids"].tolist() for p in parts] == [[f"c{2 * k}", f"c{2 * k + 1}"] for k in range(6)]
    if len(done_first) == 5:  # one chunk left: computed in this process (no pool for one chunk)
        assert int(parts[4]["pid"]) == os.getpid()


def test_cpu_workers_are_not_used_for_device_jobs(tmp_path):
    computed = tmp_path / "computed"
    computed.mkdir()
    job = engine.ClipJob("t", _clips(4), 1, tmp_path / "parts", functools.partial(_marking_worker, str(computed), None),
                         uses_model=True, uses_device=True)
    parts = engine.run_job(job, cpu_workers=2)
    assert {int(p["pid"]) for p in parts} == {os.getpid()}


def test_cpu_workers_and_chunking_are_in_no_stage_hash(world, tmp_path):
    from vjepa_adapt.stages.graph import build_graph

    hashes = [build_graph(cfg).hashes(cfg) for cfg in (
        _cfg(world, tmp_path), _cfg(world, tmp_path, "run.cpu_workers=2", "run.chunk_size=7"))]
    assert hashes[0] == hashes[1]
    assert build_graph(_cfg(world, tmp_path)).specs["segment"].clip_parallel
    assert build_graph(_cfg(world, tmp_path)).specs["factorize"].clip_parallel


def test_sam3_backend_runs_through_the_engine_in_this_process(world, tmp_path, monkeypatch):
    """A model backend (SAM 3, here transformers' tiny test sizes with random weights) is a device job:
    made once in this process (run.cpu_workers is not used for it), its tracklets carry SAM 3's categories."""
    pytest.importorskip("transformers.models.sam3_video")
    from test_segmentation import stub_tokenize, tiny_sam3_configs
    from transformers import Sam3VideoModel

    from vjepa_adapt.segmentation.sam3 import Sam3VideoSegmenter
    from vjepa_adapt.stages import segment as seg_adapter

    made = []

    def build(cfg):
        _, video = tiny_sam3_configs()
        torch.manual_seed(0)
        made.append(os.getpid())
        return Sam3VideoSegmenter(Sam3VideoModel(video), stub_tokenize, prompts=["car"], score_threshold=0.0,
                                  nms_iou=0.7)

    monkeypatch.setattr(seg_adapter, "build_segmenter", build)
    monkeypatch.setattr(seg_adapter, "_uses_model", lambda cfg: True)
    run = tmp_path / "run"
    run_stage(_cfg(world, run, "run.cpu_workers=2", "segment.num_frames=4", "run.chunk_size=5"), "segment")
    assert made == [os.getpid()]  # one segmenter, made here (the classical backend would have run in workers)
    rec = json.loads((run / "segment" / "stage.json").read_text())
    assert rec["done"] == 8 and [s["clip"] for s in rec["skipped"]] == ["zz_bad"]
    from vjepa_adapt.segmentation.masks import load_clip_masks

    masks = [load_clip_masks(p) for p in sorted((run / "segment" / "masks").iterdir())]
    assert len(masks) == 8 and all(r.get("category") == "car" for m in masks for r in m.tracklets)
