"""The decoded-frame cache: same frames as decoding, decoded once, bad clips still skipped, size capped."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_video

from vjepa_adapt.data import frame_cache as fc
from vjepa_adapt.data.clips import Clip
from vjepa_adapt.data.loader import ClipDataset
from vjepa_adapt.data.video import VideoError, read_frames


def test_cached_frames_equal_decoded_frames_and_decode_once(tmp_path, monkeypatch):
    clip = Clip("a/b", str(write_video(tmp_path / "a.mp4", 20)), "v")
    cache = fc.FrameCache(tmp_path / "cache", num_frames=8)
    first = cache(clip, 8)
    np.testing.assert_array_equal(first, read_frames(clip.path, num_frames=8))
    calls = []
    monkeypatch.setattr(fc, "read_frames", lambda *a, **k: calls.append(1))
    np.testing.assert_array_equal(cache(clip, 8), first)  # from disk, no decode
    assert calls == [] and cache.path(clip).parent == tmp_path / "cache" / "f8-sNone-mNone"
    with pytest.raises(ValueError, match="holds 8 frames"):
        cache(clip, 4)


def test_a_rewritten_video_is_decoded_again_not_served_from_the_old_entry(tmp_path):
    """A re-rendered world (or a re-run factorize) writes new files under the same clip ids."""
    import os

    rng = np.random.default_rng(0)
    path = write_video(tmp_path / "a.mp4", rng.integers(0, 255, (10, 32, 32, 3), np.uint8))
    clip = Clip("a", str(path), "v")
    cache = fc.FrameCache(tmp_path / "cache", num_frames=4)
    old = np.array(cache(clip, 4))
    st = os.stat(path)
    write_video(path, rng.integers(0, 255, (10, 32, 32, 3), np.uint8))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a new mtime even on coarse clocks
    new = cache(clip, 4)
    np.testing.assert_array_equal(new, read_frames(str(path), num_frames=4))
    assert not np.array_equal(new, old)
    assert Clip("a", str(path), "v", 0.0, 0.5) != clip and cache.path(Clip("a", str(path), "v", 0.0, 0.5)) != cache.path(clip)


def test_a_dataset_reading_through_the_cache_gives_the_same_samples_and_skips(tmp_path):
    good = Clip("g", str(write_video(tmp_path / "g.mp4", 20)), "v")
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    bad = Clip("b", str(tmp_path / "bad.mp4"), "v")
    cache = fc.FrameCache(tmp_path / "cache", num_frames=8)
    plain = ClipDataset([good, bad], num_frames=8, size=32, seed=3, train=True)
    cached = ClipDataset([good, bad], num_frames=8, size=32, seed=3, train=True, read=cache)
    for step in (0, 5):
        a, b = plain[(0, step)], cached[(0, step)]
        assert a["flipped"] == b["flipped"]
        assert np.array_equal(a["video"].numpy(), b["video"].numpy())
    assert cached[(1, 0)]["skip_reason"] == plain[(1, 0)]["skip_reason"]
    assert not cache.path(bad).exists()


def test_large_frames_are_stored_with_a_capped_short_side(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (10, 96, 128, 3), dtype=np.uint8)
    clip = Clip("big", str(write_video(tmp_path / "big.mp4", frames)), "v")
    out = fc.FrameCache(tmp_path / "c", num_frames=4, max_short_side=48)(clip, 4)
    assert out.shape == (4, 48, 64, 3)
    with pytest.raises(VideoError):
        fc.FrameCache(tmp_path / "c", num_frames=4)(Clip("m", str(tmp_path / "missing.mp4"), "v"), 4)


def test_the_trainer_reads_train_val_and_probe_clips_through_the_cache(tmp_path):
    """fit_arm passes the run's cache as ``read``: every raw clip the trainer touches is decoded once
    into it, and a run through the cache trains on the same samples as one decoding each time."""
    import torch
    from test_train import DATA, MASKING, TINY, _aux, _moving_square

    from vjepa_adapt.config import TrainConfig
    from vjepa_adapt.models.heads import MotionAuxHead
    from vjepa_adapt.models.vjepa import build_model
    from vjepa_adapt.train import loop

    clips = [Clip(f"c{i}", str(write_video(tmp_path / f"c{i}.mp4", _moving_square(12, 2 if i % 2 else -2, i),
                                           fps=10)), f"v{i}") for i in range(8)]
    tcfg = TrainConfig(steps=2, batch_size=2, warmup_steps=0, eval_every=2, checkpoint_every=2).for_arm(0.0)

    def run(out, read):
        torch.manual_seed(0)
        model = build_model("tiny", crop_size=32, frames_per_clip=8, **TINY)
        loop.train(tcfg=tcfg, data=DATA, masking=MASKING, model=model, head=MotionAuxHead(32, 2, reg_dims=13),
                   train_clips=clips[:6], val_clips=clips[6:], aux=_aux(clips), out_dir=out, seed=1, read=read)
        return model

    cache = fc.FrameCache(tmp_path / "cache", num_frames=8)
    cached, plain = run(tmp_path / "a", cache), run(tmp_path / "b", None)
    assert all(cache.path(c).exists() for c in clips)  # train (drawn or probed) and val clips
    for p, q in zip(cached.parameters(), plain.parameters()):
        torch.testing.assert_close(p, q)
