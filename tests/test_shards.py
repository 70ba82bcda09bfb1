"""WebDataset shards through the webdataset library: local, pipe: and http URLs, per-rank/per-worker
shard splitting, streaming, and the same bad-member reporting."""

from __future__ import annotations

import functools
import http.server
import io
import tarfile
import threading

import pytest
from conftest import frame_indices_of, indexed_frames

from vjepa_adapt.data import clips as C
from vjepa_adapt.data.video import VideoError, read_frames


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from conftest import write_video

    root = tmp_path_factory.mktemp("shards")
    videos = [C.Clip(f"k{i}", str(write_video(root / "v" / f"k{i}.mp4", indexed_frames(10 * i + 12)[10 * i:])),
                     f"vid{i // 2}", meta={"n": i}) for i in range(6)]
    paths = C.write_shards(videos, str(root / "s" / "train-{:03d}.tar"), max_per_shard=2)
    return root, paths


def _first_frame(clip):
    return frame_indices_of(read_frames(C.open_clip(clip), 2))[0]


def test_pipe_urls_list_and_open_clips_like_local_paths(shards, tmp_path, monkeypatch):
    root, paths = shards
    monkeypatch.setenv(C.SHARD_CACHE_ENV, str(tmp_path / "cache"))
    local = C.load_clips(str(root / "s" / "train-{000..002}.tar"))
    piped = C.load_clips(f"pipe:cat {root}/s/train-{{000..002}}.tar")
    assert [c.clip_id for c in piped] == [c.clip_id for c in local] == [f"k{i}" for i in range(6)]
    assert [(c.video_id, c.meta) for c in piped] == [(c.video_id, c.meta) for c in local]
    assert piped[3].path == f"pipe:cat {root}/s/train-001.tar#k3.mp4"
    assert [_first_frame(c) for c in piped] == [_first_frame(c) for c in local] == [0, 10, 20, 30, 40, 50]
    assert len(list((tmp_path / "cache").iterdir())) == 3  # each remote shard fetched once, then indexed
    with pytest.raises(VideoError) as e:
        C.open_clip(C.Clip("x", f"pipe:cat {root}/s/nothere.tar#k0.mp4", "x"))
    assert e.value.reason == "unreadable"


def test_http_shards(shards, tmp_path, monkeypatch):
    root, _ = shards
    monkeypatch.setenv(C.SHARD_CACHE_ENV, str(tmp_path / "cache"))
    handler = functools.partial(_QuietHandler, directory=str(root / "s"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/train-{{000..002}}.tar"
        got = C.load_clips(url)
        assert [c.clip_id for c in got] == [f"k{i}" for i in range(6)]
        assert _first_frame(got[5]) == 50
        streamed = [(c.clip_id, len(data)) for c, data in C.stream_clips(url, by_node=False, by_worker=False)]
        assert [cid for cid, _ in streamed] == [f"k{i}" for i in range(6)] and all(n > 0 for _, n in streamed)
    finally:
        server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_stream_splits_shards_by_rank_and_by_worker(shards, monkeypatch):
    root, _ = shards
    pattern = str(root / "s" / "train-{000..002}.tar")
    every = [c.clip_id for c, _ in C.stream_clips(pattern)]
    assert every == [f"k{i}" for i in range(6)]
    per_rank = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        per_rank[rank] = [c.clip_id for c, _ in C.stream_clips(pattern)]
    assert per_rank == {0: ["k0", "k1", "k4", "k5"], 1: ["k2", "k3"]}  # shards 0, 2 | shard 1
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")

    import torch.utils.data as tud

    class Stream(tud.IterableDataset):
        def __iter__(self):
            for clip, data in C.stream_clips(pattern):
                yield clip.clip_id

    ids = list(tud.DataLoader(Stream(), batch_size=None, num_workers=2))
    assert sorted(ids) == every  # each shard read by exactly one of the two workers
    first = next(C.stream_clips(pattern))
    assert first[1] == (root / "v" / "k0.mp4").read_bytes()


def test_bad_members_are_reported_through_the_streamed_reader(tmp_path, make_video):
    video = make_video(tmp_path / "v.mp4", 20).read_bytes()
    tar = tmp_path / "mixed.tar"
    with tarfile.open(tar, "w") as tf:
        for name, data in {"a.mp4": video, "a.json": b'{"clip_id": "A"}', "../up.mp4": video,
                           "nojson_only.json": b"{}", "b.mp4": video, "b.json": b"[1]", "c.MP4": video,
                           "README": b"x"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("d.mp4")
        link.type = tarfile.SYMTYPE
        link.linkname = "a.mp4"
        tf.addfile(link)
    for source in (str(tar), f"pipe:cat {tar}"):
        clips, rejected = C.scan_shard(source)
        assert [c.clip_id for c in clips] == ["A", "c"]
        assert clips[1].path.endswith("#c.MP4")  # the member's own name, extension case kept
        assert dict(rejected) == {"../up.mp4": "'..' in path", "nojson_only.json": "sample has no video member",
                                  "b.json": "JSON is not an object", "README": "not a <key>.<ext> sample file",
                                  "d.mp4": "not a regular file (link or device)"}
    assert frame_indices_of(read_frames(C.open_clip(clips[1]), 2))[0] == 0


def test_unreadable_shard_is_a_clear_error(tmp_path):
    (tmp_path / "junk.tar").write_bytes(b"not a tar" * 100)
    with pytest.raises(C.ClipSourceError, match="not a readable tar shard"):
        C.load_clips(tmp_path / "junk.tar")
    with pytest.raises(C.ClipSourceError, match="not a readable tar shard"):
        C.load_clips(f"pipe:cat {tmp_path}/nothere.tar")
