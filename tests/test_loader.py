"""DataLoader over clips: skips, reproducibility across worker counts, epochs, ranks and resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import indexed_frames

from vjepa_adapt.data.clips import Clip
from vjepa_adapt.errors import BadInputError
from vjepa_adapt.data.loader import (
    ClipBatchSampler,
    ClipDataset,
    build_loader,
    collate_clips,
    derive_seed,
    set_loader_epoch,
)


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


def add_noise_mask(batch, gen):
    # Stand-in for the trainer's mask sampler: one random draw per batch from the given generator.
    batch["mask"] = torch.rand(len(batch["clip_id"]), 5, generator=gen)
    return batch


def _run(loader, epoch=0, start_batch=0):
    set_loader_epoch(loader, epoch, start_batch)
    return list(loader)


def test_dataset_returns_samples_and_skip_records(clip_set):
    ds = ClipDataset(clip_set, train=True, size=32, num_frames=4, seed=0)
    item = ds[0]
    assert item["video"].shape == (4, 3, 32, 32) and item["video"].dtype == torch.float32
    assert item["clip_id"] == "c00" and item["index"] == 0 and isinstance(item["flipped"], bool)
    bad = ds[3]
    assert "video" not in bad and bad["skip_reason"] == "empty" and bad["clip_id"] == "c03"
    assert ds[8]["skip_reason"] == "not_video"
    # Same (seed, epoch, index) -> same augmentation; another epoch -> another crop.
    assert torch.equal(ds[(0, 1, 0)]["video"], ds[(0, 1, 5)]["video"])
    assert not torch.equal(ds[(0, 1, 0)]["video"], ds[(0, 2, 0)]["video"])


def test_collate_drops_bad_clips_and_lists_them(clip_set):
    ds = ClipDataset(clip_set, train=False, size=32, num_frames=4)
    batch = collate_clips([ds[2], ds[3], ds[4], ds[8]])
    assert batch["video"].shape == (2, 4, 3, 32, 32)
    assert batch["clip_id"] == ["c02", "c04"] and batch["index"].tolist() == [2, 4]
    assert batch["flipped"].tolist() == [False, False]
    assert batch["skipped"] == [("c03", "empty"), ("c08", "not_video")]
    all_bad = collate_clips([ds[3]])
    assert all_bad["video"] is None and all_bad["clip_id"] == [] and all_bad["skipped"] == [("c03", "empty")]


def test_train_loader_is_reproducible_whatever_the_worker_count(clip_set):
    kw = dict(batch_size=4, train=True, size=32, num_frames=4, seed=7, collate_extra=add_noise_mask)
    in_process = _run(build_loader(clip_set, num_workers=0, **kw), epoch=1)
    with_workers = _run(build_loader(clip_set, num_workers=2, persistent_workers=False, **kw), epoch=1)
    assert len(in_process) == len(with_workers) == 3  # 12 clips, batch 4, drop_last
    for a, b in zip(in_process, with_workers):
        assert a["clip_id"] == b["clip_id"] and a["skipped"] == b["skipped"]
        assert torch.equal(a["video"], b["video"]) and torch.equal(a["flipped"], b["flipped"])
        assert torch.equal(a["mask"], b["mask"])
    # Every clip once per epoch; the two bad ones are reported, not raised.
    seen = [c for b in in_process for c in b["clip_id"]] + [c for b in in_process for c, _ in b["skipped"]]
    assert sorted(seen) == [c.clip_id for c in clip_set]
    assert sorted(r for b in in_process for _, r in b["skipped"]) == ["empty", "not_video"]
    # Masks differ from batch to batch.
    assert not torch.equal(in_process[0]["mask"][:1], in_process[1]["mask"][:1])


def test_epochs_reshuffle_deterministically(clip_set):
    loader = build_loader(clip_set, batch_size=4, num_workers=0, train=True, size=32, num_frames=4, seed=1)

    def order(epoch):
        return [c for b in _run(loader, epoch) for c in b["clip_id"] + [s for s, _ in b["skipped"]]]

    assert order(0) == order(0)
    assert order(0) != order(1)
    assert sorted(order(0)) == sorted(order(1))


def test_resume_mid_epoch_skips_exactly_the_consumed_batches(clip_set):
    loader = build_loader(clip_set, batch_size=3, num_workers=0, train=True, size=32, num_frames=4, seed=2)
    full = _run(loader, epoch=4)
    resumed = _run(loader, epoch=4, start_batch=2)
    assert len(loader) == 2 and len(resumed) == 2 and len(full) == 4
    for a, b in zip(full[2:], resumed):
        assert a["clip_id"] == b["clip_id"] and a["batch"] == b["batch"]
        assert torch.equal(a["video"], b["video"])


@pytest.mark.parametrize("n, world_size, drop_last", [(12, 2, True), (11, 3, True), (11, 3, False), (10, 4, False)])
def test_ranks_get_disjoint_equal_shares(n, world_size, drop_last):
    shares = []
    for rank in range(world_size):
        s = ClipBatchSampler(n, batch_size=2, shuffle=True, seed=5, rank=rank, world_size=world_size,
                             drop_last=drop_last)
        s.set_epoch(3)
        keys = [k for batch in s for k in batch]
        assert all(epoch == 3 for _, epoch, _ in keys)
        shares.append([i for i, _, _ in keys] if not drop_last else s.rank_indices().tolist())
    assert len({len(s) for s in shares}) == 1  # equal size
    flat = [i for s in shares for i in s]
    if drop_last:
        assert len(set(flat)) == len(flat) == n - n % world_size  # disjoint
    else:
        assert set(flat) == set(range(n))  # everything covered; the wrap-around pads a few
        assert len(flat) == -(-n // world_size) * world_size


def test_eval_loader_keeps_order_and_never_flips(clip_set):
    loader = build_loader(clip_set, batch_size=5, num_workers=0, train=False, size=32, num_frames=4)
    batches = _run(loader)
    assert len(batches) == 3  # no drop_last in evaluation
    ids = [c for b in batches for c in b["clip_id"]]
    assert ids == [c.clip_id for c in clip_set if c.clip_id not in ("c03", "c08")]
    assert not any(b["flipped"].any() for b in batches)


def test_derive_seed_mixes_its_parts():
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3)
    assert len({derive_seed(0, e, b) for e in range(10) for b in range(10)}) == 100
    assert derive_seed(1, 2) != derive_seed(2, 1)


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
    kw = dict(batch_size=4, num_workers=0, train=True, size=32, num_frames=4, seed=3)
    for a, b in zip(_run(build_loader(good, **kw)), _run(build_loader(sharded, **kw))):
        assert a["clip_id"] == b["clip_id"] and torch.equal(a["video"], b["video"])
