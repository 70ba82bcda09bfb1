"""embed: pooled tokens + mean per clip; an interrupted run resumes without recomputing chunks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import write_video

from vjepa_adapt.data.clips import Clip
from vjepa_adapt.evaluate import embed as E
from vjepa_adapt.models.vjepa import build_model

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, pred_hidden_size=32,
            pred_num_hidden_layers=1, pred_num_attention_heads=2)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("embed")
    rng = np.random.default_rng(0)
    out = [Clip(f"c{i}", str(write_video(folder / f"c{i}.mp4", rng.integers(0, 255, (10, 40, 40, 3), np.uint8))),
                f"v{i}") for i in range(6)]
    (folder / "bad.mp4").write_bytes(b"")
    out.append(Clip("bad", str(folder / "bad.mp4"), "vb"))
    return out


def _encoder():
    torch.manual_seed(0)
    return build_model("tiny", crop_size=32, frames_per_clip=8, **TINY).encoder


def test_features_shapes_and_bad_clip(tmp_path, clips):
    res = E.embed_clips(_encoder(), clips, tmp_path, num_frames=8, size=32, batch_size=2, chunk_size=4,
                        pooled_grid=(1, 2, 2))
    f = E.load_features(tmp_path)
    assert list(f["clip_ids"]) == [f"c{i}" for i in range(6)]
    assert f["tokens"].shape == (6, 4, 32) and f["tokens"].dtype == np.float16
    assert f["mean"].shape == (6, 32)
    assert res.done == 6 and [(s.clip, s.reason) for s in res.skipped] == [("bad", "empty")]


def test_frame_shuffle_changes_features_and_extra_is_appended(tmp_path, clips):
    enc = _encoder()
    E.embed_clips(enc, clips[:2], tmp_path / "a", num_frames=8, size=32, chunk_size=4, pooled_grid=(1, 2, 2))
    E.embed_clips(enc, clips[:2], tmp_path / "b", num_frames=8, size=32, chunk_size=4, pooled_grid=(1, 2, 2),
                  frame_shuffle_seed=0, extra_features=lambda t: torch.ones(t.shape[0], 3))
    a, b = E.load_features(tmp_path / "a"), E.load_features(tmp_path / "b")
    assert b["tokens"].shape[-1] == 35 and np.all(b["mean"][:, 32:] == 1)
    assert not np.allclose(a["mean"], b["mean"][:, :32])


def test_head_vector_appended_to_stored_features_equals_encoding_with_the_head(tmp_path, clips):
    """The head-only arms' embed reads embed/frozen instead of encoding again: appending the head's
    vector on the stored mean gives the arrays the embed work gives with the head as extra_features."""
    from vjepa_adapt.evaluate.probe import append_clip_vectors
    from vjepa_adapt.models.heads import MotionAuxHead

    enc = _encoder()
    torch.manual_seed(1)
    head = MotionAuxHead(32, 8, reg_dims=4).eval()
    kw = dict(num_frames=8, size=32, chunk_size=4, pooled_grid=(1, 2, 2))
    E.embed_clips(enc, clips[:3], tmp_path / "frozen", **kw)
    with torch.no_grad():
        E.embed_clips(enc, clips[:3], tmp_path / "encoded", extra_features=lambda t: head(t.float().mean(dim=1))[2],
                      **kw)
        frozen = E.load_features(tmp_path / "frozen")
        derived = append_clip_vectors(frozen, head(torch.from_numpy(frozen["mean"]))[2].numpy())
    encoded = E.load_features(tmp_path / "encoded")
    assert derived["tokens"].dtype == np.float16 and derived["tokens"].shape == encoded["tokens"].shape
    np.testing.assert_array_equal(derived["tokens"], encoded["tokens"])
    np.testing.assert_allclose(derived["mean"], encoded["mean"], rtol=0, atol=1e-6)


def test_interrupted_embed_resumes_without_recomputing(tmp_path, clips, monkeypatch):
    enc = _encoder()
    calls = []
    real = E.encode_full

    def counting(encoder, video):
        calls.append(video.shape[0])
        if len(calls) == 3:  # second chunk's first batch: the process dies here
            raise KeyboardInterrupt
        return real(encoder, video)

    monkeypatch.setattr(E, "encode_full", counting)
    kw = dict(num_frames=8, size=32, batch_size=2, chunk_size=4, pooled_grid=(1, 2, 2))
    with pytest.raises(KeyboardInterrupt):
        E.embed_clips(enc, clips, tmp_path, **kw)
    first = (tmp_path / "chunks" / "chunk-00000.npz").stat().st_mtime_ns
    assert not (tmp_path / "chunks" / "chunk-00001.npz").exists()
    calls.clear()
    E.embed_clips(enc, clips, tmp_path, **kw)
    assert calls == [2]  # only chunk 1 (c4, c5; 'bad' is skipped) was encoded again
    assert (tmp_path / "chunks" / "chunk-00000.npz").stat().st_mtime_ns == first
    straight = tmp_path / "straight"
    monkeypatch.setattr(E, "encode_full", real)
    E.embed_clips(enc, clips, straight, **kw)
    np.testing.assert_array_equal(E.load_features(tmp_path)["tokens"], E.load_features(straight)["tokens"])


def test_embed_with_a_decode_worker_matches_in_process(tmp_path, clips):
    enc = _encoder()
    kw = dict(num_frames=8, size=32, batch_size=2, chunk_size=4, pooled_grid=(1, 2, 2))
    E.embed_clips(enc, clips, tmp_path / "w0", num_workers=0, **kw)
    E.embed_clips(enc, clips, tmp_path / "w1", num_workers=1, **kw)
    a, b = E.load_features(tmp_path / "w0"), E.load_features(tmp_path / "w1")
    assert list(a["clip_ids"]) == list(b["clip_ids"])
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
