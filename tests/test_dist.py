"""Two CPU processes (gloo) train with DDP through a stage change and stay bit-identical."""

from __future__ import annotations

import os
import socket

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


def test_init_is_a_noop_in_one_process(monkeypatch):
    from vjepa_adapt import dist

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    d = dist.init("cpu")
    assert (d.rank, d.world_size, d.is_main, d.enabled) == (0, 1, True, False)
    t = torch.ones(3)
    assert dist.all_reduce_mean(t) is t and torch.equal(t, torch.ones(3))


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
