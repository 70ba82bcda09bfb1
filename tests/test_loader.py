"""The one clip loader (data/loader.py): skips, reproducibility across worker counts, steps, ranks and resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import indexed_frames

from vjepa_adapt.data.clips import Clip
from vjepa_adapt.data.loader import (
    ClipDataset,
    Collate,
    StepBatchSampler,
    batch_to_device,
    build_eval_loader,
    build_train_loader,
)
from vjepa_adapt.errors import BadInputError
from vjepa_adapt.masking import MultiblockMasker, derive_generator


@pytest.fixture
def clip_set(tmp_path, make_video):
    """10 good clips (distinct textures) and 2 bad ones (indices 3 and 8)."""
    rng = np.random.default_rng(0)
    clips = []
    for k in range(12):
        path = tmp_path / f"c{k:02d}.mp4"
        if k == 3:
            path.write_bytes(b"")
        elif k == 8:
            path.write_text("not a video")
        else:
            frames = indexed_frames(12, 48, 64)
            frames[:, 10:30, 10:40] = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)  # texture per clip
            make_video(path, frames)
        clips.append(Clip(f"c{k:02d}", str(path), f"v{k // 2}"))
    return clips


MASKER = MultiblockMasker(grid=(2, 4, 4), seed=5)  # masks depend on the step only, not on the video


def _train_loader(clips, batch_size, seed, steps, start=0, num_workers=0, rank=0, world_size=1, masker=None):
    ds = ClipDataset(clips, train=True, size=32, num_frames=4, seed=seed)
    sampler = StepBatchSampler(len(ds), batch_size, seed, start_step=start, total_steps=steps, rank=rank,
                               world_size=world_size)
    return build_train_loader(ds, sampler, masker, num_workers)


def test_dataset_returns_samples_and_skip_records(clip_set):
    ds = ClipDataset(clip_set, train=True, size=32, num_frames=4, seed=0)
    item = ds[0]
    assert item["video"].shape == (4, 3, 32, 32) and item["video"].dtype == torch.float32
    assert item["clip_id"] == "c00" and item["index"] == 0 and item["step"] == 0 and isinstance(item["flipped"], bool)
    bad = ds[3]
    assert "video" not in bad and bad["skip_reason"] == "empty" and bad["clip_id"] == "c03"
    assert ds[8]["skip_reason"] == "not_video"
    # Same (seed, step, index) -> same augmentation; another step -> another crop.
    assert torch.equal(ds[(0, 1)]["video"], ds[(0, 1)]["video"])
    assert not torch.equal(ds[(0, 1)]["video"], ds[(0, 2)]["video"])


def test_collate_drops_bad_clips_and_lists_them(clip_set):
    ds = ClipDataset(clip_set, train=False, size=32, num_frames=4, seed=0)
    batch = Collate()([ds[2], ds[3], ds[4], ds[8]])
    assert batch["video"].shape == (2, 4, 3, 32, 32)
    assert batch["clip_id"] == ["c02", "c04"] and batch["index"].tolist() == [2, 4]
    assert batch["flipped"].tolist() == [False, False]
    assert batch["skipped"] == [("c03", "empty"), ("c08", "not_video")]
    all_bad = Collate(MASKER)([ds[3]])
    assert all_bad["video"] is None and all_bad["clip_id"] == [] and all_bad["skipped"] == [("c03", "empty")]
    assert "masks" not in all_bad  # nothing to mask


def test_train_loader_is_reproducible_whatever_the_worker_count(clip_set):
    in_process = list(_train_loader(clip_set, 4, seed=7, steps=3, masker=MASKER))
    with_workers = list(_train_loader(clip_set, 4, seed=7, steps=3, num_workers=2, masker=MASKER))
    assert len(in_process) == len(with_workers) == 3  # 12 clips, batch 4: steps 0-2 are epoch 0
    for a, b in zip(in_process, with_workers):
        assert a["clip_id"] == b["clip_id"] and a["skipped"] == b["skipped"]
        assert torch.equal(a["video"], b["video"]) and torch.equal(a["flipped"], b["flipped"])
        for ma, mb in zip(a["masks"], b["masks"]):
            assert torch.equal(ma.context_ids, mb.context_ids) and torch.equal(ma.target_ids, mb.target_ids)
    # Every clip once per epoch; the two bad ones are reported, not raised.
    seen = [c for b in in_process for c in b["clip_id"]] + [c for b in in_process for c, _ in b["skipped"]]
    assert sorted(seen) == [c.clip_id for c in clip_set]
    assert sorted(r for b in in_process for _, r in b["skipped"]) == ["empty", "not_video"]
    # Masks differ from step to step.
    a, b = in_process[0]["masks"][0], in_process[1]["masks"][0]
    assert not (torch.equal(a.target_ids[:1], b.target_ids[:1]) and torch.equal(a.context_ids[:1], b.context_ids[:1]))


def test_epochs_reshuffle_deterministically(clip_set):
    def order(first_step):  # 12 clips, batch 4: 3 steps make an epoch
        loader = _train_loader(clip_set, 4, seed=1, steps=first_step + 3, start=first_step)
        return [c for b in loader for c in b["clip_id"] + [s for s, _ in b["skipped"]]]

    assert order(0) == order(0)
    assert order(0) != order(3)
    assert sorted(order(0)) == sorted(order(3))


def test_resume_mid_epoch_skips_exactly_the_consumed_batches(clip_set):
    full = list(_train_loader(clip_set, 3, seed=2, steps=4))
    loader = _train_loader(clip_set, 3, seed=2, steps=4, start=2)
    resumed = list(loader)
    assert len(loader) == 2 and len(resumed) == 2 and len(full) == 4
    for a, b in zip(full[2:], resumed):
        assert a["clip_id"] == b["clip_id"] and a["step"] == b["step"]
        assert torch.equal(a["video"], b["video"])


@pytest.mark.parametrize("n, world_size", [(12, 2), (11, 3), (10, 4)])
def test_ranks_get_disjoint_equal_shares(n, world_size):
    b = 2

    def shares(steps):
        out = []
        for rank in range(world_size):
            s = StepBatchSampler(n, batch_size=b, seed=5, start_step=0, total_steps=steps, rank=rank,
                                 world_size=world_size)
            keys = [k for batch in s for k in batch]
            assert [st for _, st in keys] == [st for st in range(steps) for _ in range(b)]  # keyed by step
            out.append([i for i, _ in keys])
        return out

    within = shares(n // (world_size * b))  # the steps that fit in epoch 0
    assert len({len(s) for s in within}) == 1  # equal size
    flat = [i for s in within for i in s]
    assert len(set(flat)) == len(flat)  # disjoint
    covering = shares(-(-n // (world_size * b)))  # one more step wraps into epoch 1
    assert len({len(s) for s in covering}) == 1
    assert set(i for s in covering for i in s) == set(range(n))  # everything covered


def test_eval_loader_keeps_order_and_never_flips(clip_set):
    batches = list(build_eval_loader(ClipDataset(clip_set, train=False, size=32, num_frames=4, seed=0), 5))
    assert len(batches) == 3  # no drop_last in evaluation
    ids = [c for b in batches for c in b["clip_id"]]
    assert ids == [c.clip_id for c in clip_set if c.clip_id not in ("c03", "c08")]
    assert not any(b["flipped"].any() for b in batches)


def test_derive_generator_mixes_its_parts():
    seed = lambda *parts: derive_generator(*parts).initial_seed()  # noqa: E731
    assert seed(1, 2, 3) == seed(1, 2, 3)
    assert len({seed(0, e, b) for e in range(10) for b in range(10)}) == 100
    assert seed(1, 2) != seed(2, 1)


def test_batch_to_device_moves_every_tensor_the_model_reads(clip_set):
    """Masks too (issue #9): a CUDA gather with a CPU index is an error; the 'meta' device shows a
    tensor left behind on CPU."""
    ds = ClipDataset(clip_set, train=True, size=32, num_frames=4, seed=0, aux=_aux(clip_set))
    batch = Collate(MASKER)([ds[(0, 0)], ds[(1, 0)]])
    moved = batch_to_device(batch, torch.device("meta"))
    tensors = [moved["video"], moved["label"], moved["reg"]]
    tensors += [t for m in moved["masks"] for t in (m.context_ids, m.target_ids)]
    assert len(moved["masks"]) == len(MASKER.specs)
    assert all(t.device.type == "meta" for t in tensors)
    assert batch["video"].device.type == "cpu"  # the input batch is left as it was


def _aux(clips):
    from vjepa_adapt.data.loader import AuxTargets

    reg = {c.clip_id: np.full(3, float(i), np.float32) for i, c in enumerate(clips)}
    return AuxTargets(labels={c.clip_id: i % 2 for i, c in enumerate(clips)}, reg=reg, reg_flipped=reg,
                      label_flipped={c.clip_id: i % 2 for i, c in enumerate(clips)})


def test_bad_share_limit():
    # one limit for every stage: vjepa_adapt.stage_result.check_bad_share
    from vjepa_adapt.stage_result import StageResult, check_bad_share

    skipped = [("a", "empty"), ("b", "truncated"), ("c", "truncated")]
    ok = StageResult(done=7)
    for clip, reason in skipped:
        ok.skip(clip, reason)
    check_bad_share(ok, max_bad_fraction=0.3, stage="embed")  # 30% is allowed
    bad = StageResult(done=6, skipped=list(ok.skipped))
    with pytest.raises(BadInputError, match=r"3/9 clips unusable \(33%.*truncated ×2, empty ×1"):
        check_bad_share(bad, max_bad_fraction=0.3, stage="embed")


def test_loader_reads_shards_like_files(tmp_path, clip_set):
    from vjepa_adapt.data.clips import load_clips, write_shards

    good = [c for c in clip_set if c.clip_id not in ("c03", "c08")]
    sharded = load_clips(write_shards(good, tmp_path / "shards", max_per_shard=4)[0].rsplit("/", 1)[0])
    assert [c.clip_id for c in sharded] == [c.clip_id for c in good]
    for a, b in zip(_train_loader(good, 4, seed=3, steps=2), _train_loader(sharded, 4, seed=3, steps=2)):
        assert a["clip_id"] == b["clip_id"] and torch.equal(a["video"], b["video"])
