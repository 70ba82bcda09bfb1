"""Two CPU processes (gloo) train with DDP through a stage change and stay bit-identical."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp
from conftest import write_video
from test_train import DATA, MASKING, TINY, _aux, _moving_square

from vjepa_adapt.config import Stage, TrainConfig
from vjepa_adapt.data.clips import Clip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from vjepa_adapt import dist
    from vjepa_adapt.models.heads import MotionAuxHead
    from vjepa_adapt.models.vjepa import build_model
    from vjepa_adapt.train.loop import train

    info = dist.init("cpu")
    assert info.world_size == world and info.rank == rank
    clips = [Clip(f"c{i}", os.path.join(folder, f"c{i}.mp4"), f"v{i}") for i in range(8)]
    torch.manual_seed(0)
    model = build_model("tiny", crop_size=32, frames_per_clip=8, **TINY)
    head = MotionAuxHead(32, 2, reg_dims=13)
    tcfg = TrainConfig(steps=4, batch_size=2, lr=1e-3, warmup_steps=1, eval_every=4, checkpoint_every=4,
                       stages=[Stage(name="s1", steps=2, unfreeze_fraction=0.5), Stage(name="s2", steps=2)])
    train(tcfg=tcfg, data=DATA, masking=MASKING, model=model, head=head, train_clips=clips[:6], val_clips=clips[6:],
          aux=_aux(clips), out_dir=os.path.join(folder, "run"), seed=3)
    torch.save({k: v.detach().clone() for k, v in {**model.state_dict(), **{f"head.{k}": v for k, v in
                                                                         head.state_dict().items()}}.items()},
               os.path.join(folder, f"rank{rank}.pt"))
    dist.shutdown()


def test_two_process_ddp_ranks_stay_equal_across_a_stage_change(tmp_path):
    for i in range(8):
        write_video(tmp_path / f"c{i}.mp4", _moving_square(12, 2 if i % 2 else -2, i), fps=10)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and they trained: the last block only trains in stage 2, after the DDP re-wrap
    from vjepa_adapt.models.vjepa import build_model

    torch.manual_seed(0)
    init = build_model("tiny", crop_size=32, frames_per_clip=8, **TINY).state_dict()
    assert not torch.equal(a["encoder.layer.1.mlp.fc1.weight"], init["encoder.layer.1.mlp.fc1.weight"])
    assert (tmp_path / "run" / "checkpoints" / "latest.pt").exists()


def _bad_clip_worker(rank: int, world: int, port: int, folder: str) -> None:
    """Rank 1 cannot read its micro-batch 1, no rank can read micro-batch 2 (see the test)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from vjepa_adapt import dist
    from vjepa_adapt.models.heads import MotionAuxHead
    from vjepa_adapt.models.vjepa import build_model
    from vjepa_adapt.train.loop import train

    dist.init("cpu")
    clips = [Clip(f"c{i}", os.path.join(folder, f"c{i}.mp4"), f"v{i}") for i in range(8)]
    train_clips = _train_clips_with_bad(clips, folder)
    states = {}
    for name, aux in (("bad_clips", _aux(clips)), ("head_unused", None)):
        torch.manual_seed(0)
        model = build_model("tiny", crop_size=32, frames_per_clip=8, **TINY)
        head = MotionAuxHead(32, 2, reg_dims=13)  # without aux targets it gets no gradient: DDP must know
        tcfg = TrainConfig(steps=2, batch_size=1, grad_accum=2, lr=1e-3, warmup_steps=0, eval_every=2,
                           checkpoint_every=2)
        res = train(tcfg=tcfg, data=DATA, masking=MASKING, model=model, head=head, train_clips=train_clips,
                    val_clips=clips[6:], aux=aux, out_dir=os.path.join(folder, name), seed=3)
        states.update({f"{name}.{k}": v.detach().clone() for k, v in model.state_dict().items()})
        states.update({f"{name}.head.{k}": v.detach().clone() for k, v in head.state_dict().items()})
        states[f"{name}.skipped"] = torch.tensor(len(res.skipped))
    torch.save(states, os.path.join(folder, f"rank{rank}.pt"))
    dist.shutdown()


def _train_clips_with_bad(clips: list[Clip], folder: str) -> list[Clip]:
    # 2 ranks x batch 1, grad_accum 2: micro-batch m of rank r is position 2m + r of the (seed 3) stream.
    # Position 3 (rank 1, micro 1 of step 0) and positions 4, 5 (both ranks, micro 0 of step 1) unreadable.
    import numpy as np

    bad = os.path.join(folder, "bad.mp4")
    with open(bad, "w") as fh:
        fh.write("not a video")
    perm = np.random.default_rng([3, 0]).permutation(8)
    out = [*clips[:6], *clips[:2]]
    for pos in (3, 4, 5):
        out[int(perm[pos])] = Clip(f"bad{pos}", bad, f"vb{pos}")
    return out


def test_two_ranks_with_an_unreadable_clip_on_one_neither_hang_nor_diverge(tmp_path):
    """Issue #9: a rank with no readable micro-batch skipped backward while the other waited in the
    all-reduce; a head without aux targets hung DDP (find_unused_parameters off)."""
    for i in range(8):
        write_video(tmp_path / f"c{i}.mp4", _moving_square(12, 2 if i % 2 else -2, i), fps=10)
    ctx = mp.spawn(_bad_clip_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 300
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the 2-rank run hung (a rank waiting in a collective the other never joined)")
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert int(a["bad_clips.skipped"]) == 1 and int(b["bad_clips.skipped"]) == 2  # rank 0: pos 4; rank 1: 3, 5
    for k in (k for k in a if not k.endswith(".skipped")):
        assert torch.equal(a[k], b[k]), k
    from vjepa_adapt.models.vjepa import build_model

    torch.manual_seed(0)
    init = build_model("tiny", crop_size=32, frames_per_clip=8, **TINY).state_dict()
    for run in ("bad_clips", "head_unused"):  # and they trained
        assert not torch.equal(a[f"{run}.encoder.layer.1.mlp.fc1.weight"], init["encoder.layer.1.mlp.fc1.weight"])
    rows = [json.loads(line) for line in (tmp_path / "bad_clips" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all("loss" in r for r in rows)


def test_init_is_a_noop_in_one_process(monkeypatch):
    from vjepa_adapt import dist

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    d = dist.init("cpu")
    assert (d.rank, d.world_size, d.is_main, d.enabled) == (0, 1, True, False)
    t = torch.ones(3)
    assert dist.all_reduce_sum(t) is t and torch.equal(t, torch.ones(3))
    assert not dist.initialized()
    dist.barrier(), dist.wait_for_main()  # no-ops
    m = torch.nn.Linear(2, 2)
    assert dist.wrap_ddp(m, torch.device("cpu")) is m


def test_failed_init_is_not_swallowed(monkeypatch):
    from vjepa_adapt import dist

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "0")
    import torch.distributed as td

    def boom(*a, **k):
        raise RuntimeError("rendezvous failed")

    monkeypatch.setattr(td, "init_process_group", boom)
    with pytest.raises(RuntimeError, match="rendezvous failed"):
        dist.init("cpu")


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_torchrun_two_ranks_pretrain_end_to_end_on_cpu(tmp_path, parallel):
    """`torchrun --nproc_per_node 2 -m vjepa_adapt pretrain ...` on CPU (gloo): synth and clips on rank 0,
    motion on both ranks (clip-parallel: each rank its share of the chunks, rank 0 merges), pretrain on
    both ranks from the packaged base (DDP and FSDP), one set of outputs."""
    import subprocess
    import sys

    from test_smoke import TINY as SMOKE

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vjepa_adapt", "pretrain", "--out", str(run), *SMOKE, f"train.parallel={parallel}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VJEPA_ADAPT_QUIET": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for stage in ("synth", "clips", "motion", "pretrain/pretrain"):
        assert json.loads((run / stage / "stage.json").read_text())["status"] == "complete", stage
    rank1 = [line for line in proc.stderr.splitlines() if "[rank 1]" in line]
    assert sum("stage 'all'" in line for line in rank1) == 1  # rank 1 trained pretrain too ...
    assert any("motion: running" in line for line in rank1)  # ... ran its share of motion's chunks ...
    assert not any(f"{stage}: running" in line for line in rank1 for stage in ("synth", "clips"))  # ... not these
    if parallel == "fsdp":
        assert any("FSDP" in line for line in rank1)
    rows = [json.loads(line) for line in (run / "pretrain" / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # written once (rank 0)
    from vjepa_adapt.models.vjepa import load_model

    load_model(str(run / "pretrain" / "pretrain" / "final" / "encoder"))


def test_graph_under_torchrun_rank_1_runs_only_the_distributed_stages_and_writes_nothing(tmp_path, monkeypatch):
    from vjepa_adapt import dist
    from vjepa_adapt.config import load_config
    from vjepa_adapt.pipeline import StageGraph, StageSpec
    from vjepa_adapt.stage_result import StageResult

    calls, waits = [], []
    monkeypatch.setattr(dist, "info", lambda: dist.DistInfo(rank=1, world_size=2))
    monkeypatch.setattr(dist, "wait_for_main", lambda: waits.append(len(calls)))

    def stage(name):
        def run(ctx):
            calls.append(name)
            return StageResult(done=1)
        return run

    graph = StageGraph([StageSpec("motion", stage("motion")),
                        StageSpec("pretrain", stage("pretrain"), needs=["motion"], distributed=True)])
    graph.run(load_config("demo"), tmp_path)
    assert calls == ["pretrain"]  # motion is rank 0's
    assert waits == [0, 0, 0, 1]  # before motion; before pretrain and once its folder is ready; at the end
    assert not (tmp_path / "config.yaml").exists() and not list(tmp_path.rglob("stage.json"))
