"""Training at any world size (issue 14, trainer side): a global batch kept on any number of ranks,
DDP and FSDP on 2 gloo ranks against 1 process, checkpoints of 2 ranks resumed on 1, the batch plan,
world-size-free samplers and masks, and no host sync inside a step.

Tolerance of "the same weights": 2 ranks and 1 rank compute the same global batch with the same
samples, augmentation and masks, so the only difference is the order of float additions (gradient
all-reduce / reduce-scatter vs accumulation, batch sizes in the matmuls). After 4 AdamW steps in
fp32 the weights agree to ``ATOL`` (measured on 2 cores: max |Δ| 6e-8 FSDP vs DDP, 7e-8 1 rank ×
2 micro-batches vs 2 ranks, 3e-7 1 rank × 1 micro-batch of 4 vs 2 ranks × 2), while the steps moved
the weights by up to 2e-3 — 200 × ATOL, so a different sample, mask or weighting would show.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter

import pytest
import torch
import torch.multiprocessing as mp
from conftest import write_video
from test_dist import _free_port
from test_train import DATA, MASKING, TINY, _aux, _moving_square

from vjepa_adapt.config import MaskingConfig, Stage, TrainConfig
from vjepa_adapt.data.clips import Clip
from vjepa_adapt.errors import ConfigError
from vjepa_adapt.train.plan import micro_batching

ATOL, RTOL = 1e-5, 0.0
MGMAE = MaskingConfig(kind="motion_guided", generators=MASKING.generators)


def _tcfg(**kw) -> TrainConfig:
    base = dict(steps=4, batch_size=2, global_batch_size=4, lr=1e-3, warmup_steps=1, eval_every=4,
                checkpoint_every=2, l2_anchor=[0.01], spd=0.1,
                stages=[Stage(name="s1", steps=2, unfreeze_fraction=0.5), Stage(name="s2", steps=2)])
    return TrainConfig(**{**base, **kw})


def _clips(folder) -> list[Clip]:
    return [Clip(f"c{i}", os.path.join(folder, f"c{i}.mp4"), f"v{i}") for i in range(8)]


def _train(folder, name: str, tcfg: TrainConfig, masking=MASKING) -> dict[str, torch.Tensor]:
    """One run of the tiny model (dropout 0: dropout masks come from each rank's RNG, not the sample);
    returns its full weights (gathered from the shards under FSDP)."""
    from vjepa_adapt import dist
    from vjepa_adapt.models.heads import MotionAuxHead
    from vjepa_adapt.models.vjepa import build_model
    from vjepa_adapt.train.loop import train

    clips = _clips(folder)
    torch.manual_seed(0)
    model = build_model("tiny", crop_size=32, frames_per_clip=8, **TINY)
    head = MotionAuxHead(32, 2, reg_dims=13, dropout=0.0)
    train(tcfg=tcfg, data=DATA, masking=masking, model=model, head=head, train_clips=clips[:6],
          val_clips=clips[6:], aux=_aux(clips), out_dir=os.path.join(folder, name), seed=3)
    state = dist.gather_full({**model.state_dict(), **{f"head.{k}": v for k, v in head.state_dict().items()}})
    return {k: v.detach().clone() for k, v in state.items()}


def _ranks_worker(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from vjepa_adapt import dist

    dist.init("cpu")
    out = {}
    for name, tcfg, masking in (("ddp", _tcfg(), MASKING), ("fsdp", _tcfg(parallel="fsdp"), MASKING),
                                ("mgmae", _tcfg(spd=0.0, l2_anchor=[0.0]), MGMAE)):
        out.update({f"{name}.{k}": v for k, v in _train(folder, name, tcfg, masking).items()})
    torch.save(out, os.path.join(folder, f"rank{rank}.pt"))
    dist.shutdown()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Three runs on 2 gloo ranks (DDP, FSDP, DDP with MGMAE masks): each rank's final weights."""
    folder = tmp_path_factory.mktemp("ranks")
    for i in range(8):
        write_video(folder / f"c{i}.mp4", _moving_square(12, 2 if i % 2 else -2, i), fps=10)
    mp.spawn(_ranks_worker, args=(2, _free_port(), str(folder)), nprocs=2, join=True)
    ranks = [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(2)]
    return folder, ranks


def _split(state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    return {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=ATOL, rtol=RTOL, msg=lambda m, k=k: f"{k}: {m}")


def _init() -> dict[str, torch.Tensor]:
    from vjepa_adapt.models.vjepa import build_model

    torch.manual_seed(0)
    return build_model("tiny", crop_size=32, frames_per_clip=8, **TINY).state_dict()


def test_ddp_and_fsdp_ranks_hold_the_same_weights_through_a_stage_change(two_ranks):
    _, (r0, r1) = two_ranks
    for name in ("ddp", "fsdp", "mgmae"):
        a, b = _split(r0, name), _split(r1, name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    ddp, fsdp, init = _split(r0, "ddp"), _split(r0, "fsdp"), _init()
    # block 1 trains only in stage 2: after the DDP re-wrap / with FSDP's requires_grad flip
    w = "encoder.layer.1.mlp.fc1.weight"
    assert not torch.equal(ddp[w], init[w]) and not torch.equal(fsdp[w], init[w])
    assert max(float((ddp[k] - init[k]).abs().max()) for k in init) > 100 * ATOL  # the tolerance can tell
    _assert_close(fsdp, ddp)  # FSDP's reduce-scatter trains what DDP's all-reduce trains


def test_two_ranks_and_one_rank_with_the_same_global_batch_reach_the_same_weights(two_ranks, tmp_path):
    folder, (r0, _) = two_ranks
    for i in range(8):
        shutil.copy(folder / f"c{i}.mp4", tmp_path / f"c{i}.mp4")
    # 1 rank: micro-batch 2 x 2 accumulation (= 2 ranks x micro 2): the same micro-batches
    _assert_close(_train(tmp_path, "one", _tcfg()), _split(r0, "ddp"))
    # MGMAE: its masks are drawn per micro-batch, the same micro-batch on 1 rank as on 2
    _assert_close(_train(tmp_path, "one_mgmae", _tcfg(spd=0.0, l2_anchor=[0.0]), MGMAE), _split(r0, "mgmae"))
    # static masks come from the whole global batch: 1 micro-batch of 4 trains like 2 ranks x 2 too
    _assert_close(_train(tmp_path, "one_micro4", _tcfg(batch_size=4)), _split(r0, "ddp"))


@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_a_checkpoint_of_two_ranks_resumes_on_one(two_ranks, tmp_path, name):
    """The 2-rank run's step-2 checkpoint (DDP, or FSDP's gathered full state) continues on 1 rank to the
    weights the 2-rank run reached at step 4: same global batch, same sample stream."""
    from vjepa_adapt.train import checkpoint as ckpt

    folder, (r0, _) = two_ranks
    for i in range(8):
        shutil.copy(folder / f"c{i}.mp4", tmp_path / f"c{i}.mp4")
    shutil.copytree(folder / name, tmp_path / "resumed")
    (tmp_path / "resumed" / "checkpoints" / "step-00000004.pt").unlink()
    state = ckpt.load_checkpoint(tmp_path / "resumed" / "checkpoints" / "step-00000002.pt")
    assert state["data"] == {"sampler_position": 2 * 4, "world_size": 2, "global_batch": 4}
    assert not any(hasattr(v, "placements") for v in state["student"].values())  # full tensors, not shards
    resumed = _train(tmp_path, "resumed", _tcfg(parallel=name))  # train.parallel may differ on resume
    _assert_close(resumed, _split(r0, name))


# ------------------------------------------------------------------------------ pure parts


def test_micro_batching_keeps_the_global_batch_and_names_the_field():
    t = TrainConfig(global_batch_size=64, batch_size=4)
    assert [micro_batching(t, w) for w in (1, 2, 8, 16, 64)] == [(4, 16), (4, 8), (4, 2), (4, 1), (1, 1)]
    assert micro_batching(TrainConfig(global_batch_size=24, batch_size=5), 2) == (4, 3)  # largest divisor of 12 <= 5
    assert micro_batching(TrainConfig(global_batch_size=6, batch_size=8), 1) == (6, 1)
    assert micro_batching(TrainConfig(batch_size=3, grad_accum=2), 4) == (3, 2)  # without it: per rank, as before
    with pytest.raises(ConfigError, match=r"train\.global_batch_size=10 is not divisible by the 4 ranks"):
        micro_batching(TrainConfig(global_batch_size=10), 4)
    from vjepa_adapt.config import load_config

    with pytest.raises(ConfigError, match=r"train\.grad_accum.*train\.global_batch_size"):
        load_config("demo", ["train.global_batch_size=16", "train.grad_accum=2"])


@pytest.mark.parametrize("mixture", [False, True])
def test_a_steps_samples_do_not_depend_on_how_the_global_batch_is_split(mixture):
    from vjepa_adapt.data.loader import MixtureBatchSampler, StepBatchSampler

    def sampler(world, rank, accum, micro):
        if mixture:
            return MixtureBatchSampler({"raw": 13, "agent": 5}, [(3, {"agent": 0.75, "raw": 0.25}), (4, {"raw": 1.0})],
                                       micro, seed=3, start_step=0, total_steps=7, rank=rank, world_size=world,
                                       grad_accum=accum)
        return StepBatchSampler(11, micro, seed=3, start_step=0, total_steps=7, rank=rank, world_size=world,
                                grad_accum=accum)

    def by_slot(world, accum, micro):  # {(step, slot): key} over every rank and micro-batch
        out = {}
        for rank in range(world):
            s = sampler(world, rank, accum, micro)
            assert s.global_batch == 8 and len(s) == 7 * accum
            batches = iter(s.micro_batches())
            for step in range(7):
                for _ in range(accum):
                    first, keys = next(batches)
                    assert all(k[-1] == step for k in keys)  # keyed by the optimizer step
                    out.update({(step, first + j): k for j, k in enumerate(keys)})
        return out

    ref = by_slot(1, 1, 8)
    assert len(ref) == 7 * 8
    for world, accum, micro in ((2, 1, 4), (2, 2, 2), (1, 4, 2), (4, 2, 1), (8, 1, 1)):
        assert by_slot(world, accum, micro) == ref, (world, accum, micro)
    if mixture:  # and the stage's share holds per global batch
        assert Counter(k[0] for (step, _), k in ref.items() if step == 0) == {"agent": 6, "raw": 2}


def test_masks_of_a_slot_are_the_same_in_any_micro_batch():
    from vjepa_adapt.masking import MaskSpec, MultiblockMasker

    m = MultiblockMasker(grid=(4, 4, 4), specs=(MaskSpec(2, 0.25), MaskSpec(1, 0.5)), seed=7)
    whole = m(8, 5)
    halves = [m.for_slots(5, range(h * 4, h * 4 + 4), 8) for h in range(2)]
    picked = m.for_slots(5, [6, 1], 8)  # e.g. a micro-batch whose other clips were unreadable
    for g in range(2):
        assert torch.equal(torch.cat([h[g].context_ids for h in halves]), whole[g].context_ids)
        assert torch.equal(torch.cat([h[g].target_ids for h in halves]), whole[g].target_ids)
        assert torch.equal(picked[g].target_ids, whole[g].target_ids[[6, 1]])
        assert picked[g].stats["target_real"] == [whole[g].stats["target_real"][i] for i in (6, 1)]
    # the rank no longer enters: one seed for every rank; unit 0 is the masker's plain draw
    assert all(torch.equal(a.target_ids, b.target_ids) for a, b in zip(m(3, 5), m(3, 5, unit=0)))
    assert not torch.equal(m(3, 5)[0].target_ids, m(3, 5, unit=1)[0].target_ids)


def test_a_step_reads_nothing_back_from_the_device(tmp_path, monkeypatch):
    """Host reads of tensors (item, tolist, bool, float, int) by the trainer during training: only at
    the settle points (every ``log_every`` steps and the heartbeats, evals, checkpoints), one each
    — never per step. Reads by the data loader (CPU work in the decode workers at scale) are not
    counted."""
    from vjepa_adapt.train import loop

    for i in range(8):
        write_video(tmp_path / f"c{i}.mp4", _moving_square(12, 2 if i % 2 else -2, i), fps=10)
    reads: list[tuple[str, int]] = []
    in_eval = [False]
    settles = []
    ignore = ("/data/", "masking.py", "/torch/", "progress.py")

    def spy(name, orig):
        def wrapper(self, *a, **k):
            import sys

            f = sys._getframe(1)
            # check_labels runs on CPU tensors only (where a read is free): a GPU step skips it
            if not in_eval[0] and f.f_code.co_name != "check_labels" and not any(
                    s in f.f_code.co_filename for s in ignore):
                reads.append((f"{name} {os.path.basename(f.f_code.co_filename)}:{f.f_lineno}", len(settles)))
            return orig(self, *a, **k)
        return wrapper

    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, spy(name, getattr(torch.Tensor, name)))
    real_eval, real_settle = loop.evaluate, loop.settle_rows

    def quiet_eval(*a, **k):
        in_eval[0] = True
        try:
            return real_eval(*a, **k)
        finally:
            in_eval[0] = False

    def counted_settle(pending, out_dir):
        settles.append([p.row["step"] for p in pending])
        n = len(reads)
        rows = real_settle(pending, out_dir)
        assert len(reads) - n == 1, reads[n:]  # one read for all the pending rows
        return rows

    monkeypatch.setattr(loop, "evaluate", quiet_eval)
    monkeypatch.setattr(loop, "settle_rows", counted_settle)
    tcfg = _tcfg(steps=40, batch_size=2, global_batch_size=None, grad_accum=2, stages=None, warmup_steps=2,
                 eval_every=20, checkpoint_every=40, log_every=20)
    _train(tmp_path, "run", tcfg)
    # settles at the heartbeats (every 4 steps here) and the evals/checkpoint; in between none
    assert [s[-1] for s in settles] == list(range(4, 41, 4))
    assert all(len(s) == 4 for s in settles)
    assert len(reads) == len(settles), reads  # the settles' one read each: 10 reads in 40 steps, none per step


def test_batches_are_pinned_on_cuda_only(monkeypatch, tmp_path):
    """Pinned batches (and masks, through ``MaskBatch.pin_memory``) so the non_blocking copies overlap."""
    from vjepa_adapt.data import loader
    from vjepa_adapt.masking import MaskBatch
    from vjepa_adapt.train import loop

    ds = loader.ClipDataset([], num_frames=4, size=32, seed=0, train=True)
    s = loader.StepBatchSampler(1, 1, 0, 0, 1)
    assert loader.build_train_loader(ds, s, None, 0).pin_memory is False
    assert loader.build_train_loader(ds, s, None, 0, pin_memory=True).pin_memory is True
    seen = []

    def spy(*a, pin_memory=False):
        seen.append(pin_memory)
        raise KeyboardInterrupt  # stop the run here

    monkeypatch.setattr(loop, "build_train_loader", spy)
    for i in range(8):
        write_video(tmp_path / f"c{i}.mp4", _moving_square(12, 2, i), fps=10)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, "pin", _tcfg())
    assert seen == [False]  # the trainer asks for pinning when its device is CUDA (bench/gpu_check.py runs it there)
    ids = torch.zeros(1, 2, dtype=torch.long)
    assert MaskBatch.pin_memory is not None and MaskBatch(ids, ids).select([0]).context_ids.shape == (1, 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_a_step_between_settles_never_synchronises(tmp_path, monkeypatch):
    """The CUDA truth of test_a_step_reads_nothing_back_from_the_device: torch's sync debug mode warns
    at every synchronising CUDA call; steps between settle points must raise none (the first two
    steps, with CUDA's lazy initialisation, are not counted; evals, exports, checkpoints are settles'
    company and not counted either)."""
    import warnings

    from vjepa_adapt.models.heads import MotionAuxHead
    from vjepa_adapt.models.vjepa import build_model
    from vjepa_adapt.train import checkpoint as ckpt
    from vjepa_adapt.train import loop

    for i in range(8):
        write_video(tmp_path / f"c{i}.mp4", _moving_square(12, 2 if i % 2 else -2, i), fps=10)
    clips = _clips(tmp_path)
    marks: list[tuple[str, int]] = []
    box: list[list] = []  # the warnings list, once recording

    def seen() -> int:
        return len(box[0]) if box else 0

    def mark(name, fn):
        def wrapper(*a, **k):
            marks.append((name + "<", seen()))
            try:
                return fn(*a, **k)
            finally:
                marks.append((name + ">", seen()))
        return wrapper

    real_lr = loop.stage_lr
    monkeypatch.setattr(loop, "stage_lr", lambda step, tcfg: (marks.append((f"step{step}", seen())),
                                                              real_lr(step, tcfg))[1])
    monkeypatch.setattr(loop, "settle_rows", mark("settle", loop.settle_rows))
    monkeypatch.setattr(loop, "evaluate", mark("eval", loop.evaluate))
    monkeypatch.setattr(loop, "_export", mark("export", loop._export))
    monkeypatch.setattr(ckpt, "save_checkpoint", mark("save", ckpt.save_checkpoint))
    torch.manual_seed(0)
    model = build_model("tiny", crop_size=32, frames_per_clip=8, **TINY)
    tcfg = _tcfg(steps=40, global_batch_size=None, grad_accum=2, stages=None, warmup_steps=2, eval_every=20,
                 checkpoint_every=40, log_every=20)
    with warnings.catch_warnings(record=True) as caught:
        box.append(caught)
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            loop.train(tcfg=tcfg, data=DATA, masking=MASKING, model=model, head=MotionAuxHead(32, 2, reg_dims=13),
                       train_clips=clips[:6], val_clips=clips[6:], aux=_aux(clips), out_dir=tmp_path / "run", seed=3,
                       device="cuda")
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    # per step: the syncs between its start and the next step's, minus those inside settle/eval/export/save
    per_step: dict[int, int] = {}
    step, depth, last = None, 0, 0
    for name, n in marks:
        if name.startswith("step"):
            step, last = int(name[4:]), n
            per_step.setdefault(step, 0)
            continue
        if name.endswith("<"):
            if depth == 0 and step is not None:
                per_step[step] += n - last
            depth += 1
        else:
            depth -= 1
            last = n
    if step is not None and depth == 0:
        per_step[step] += seen() - last
    counted = {s: c for s, c in per_step.items() if s >= 2}
    assert sum(counted.values()) == 0, (counted, [str(w.message)[:200] for w in syncs][:5])
