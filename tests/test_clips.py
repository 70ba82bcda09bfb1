"""Clip sources (folder, manifests, shards, hf://), windows, and splits by source video."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from conftest import frame_indices_of, indexed_frames, write_bad_videos

from vjepa_adapt.data import clips as clips_mod
from vjepa_adapt.data.clips import (
    Clip,
    ClipSourceError,
    cut_into_clips,
    download_hf_source,
    expand_braces,
    load_clips,
    load_splits,
    make_splits,
    open_clip,
    parse_hf_url,
    save_splits,
    scan_shard,
    select_split,
    write_shards,
)
from vjepa_adapt.data.video import VideoError, read_frames

# ----------------------------------------------------------------------------- one clip set, four sources


@pytest.fixture
def video_folder(tmp_path, make_video):
    root = tmp_path / "videos"
    # Distinct content per clip: clip k starts at frame index 10 * k.
    for k, rel in enumerate(["a.mp4", "sub/b.mkv", "sub/deeper/c.webm", "d.avi", "e.mov"]):
        make_video(root / rel, indexed_frames(10 * k + 20)[10 * k:], fps=10)
    (root / "readme.txt").write_text("not a clip")
    make_video(root / ".hidden.mp4", 20)
    return root


EXPECTED_IDS = ["a", "d", "e", "sub__b", "sub__deeper__c"]


def _frames_by_id(clips):
    return {c.clip_id: frame_indices_of(read_frames(open_clip(c), 4)) for c in clips}


def test_folder_manifests_and_shards_load_the_same_clips(tmp_path, video_folder):
    folder = load_clips(video_folder)
    assert [c.clip_id for c in folder] == EXPECTED_IDS
    assert all(c.video_id == c.clip_id for c in folder)
    frames = _frames_by_id(folder)
    assert frames["a"] == [0, 6, 13, 19] and frames["d"] == [30, 36, 43, 49]

    # CSV manifest with paths relative to the manifest's folder.
    manifest_dir = tmp_path
    with open(manifest_dir / "clips.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["clip_id", "path", "video_id", "start", "end", "style"])
        for c in folder:
            rel = Path(c.path).relative_to(manifest_dir).as_posix()  # e.g. videos/sub/b.mkv
            w.writerow([c.clip_id, rel, c.video_id, "", "", "target"])
    from_csv = load_clips(manifest_dir / "clips.csv")
    assert [c.clip_id for c in from_csv] == EXPECTED_IDS
    assert from_csv[0].meta == {"style": "target"} and from_csv[0].start is None
    assert _frames_by_id(from_csv) == frames

    # JSONL manifest with absolute paths and extra columns like the synthetic world's.
    rows = [{"clip_id": c.clip_id, "path": c.path, "video_id": c.video_id, "style": "source",
             "motion_class": "fast_right", "truth": f"truth/{c.clip_id}.npz"} for c in folder]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    from_jsonl = load_clips(tmp_path / "manifest.jsonl")
    assert [c.clip_id for c in from_jsonl] == EXPECTED_IDS
    assert from_jsonl[1].meta == {"style": "source", "motion_class": "fast_right", "truth": "truth/d.npz"}
    assert _frames_by_id(from_jsonl) == frames

    # WebDataset shards, 2 clips per shard -> 3 shards; read back by brace pattern, glob, folder.
    shards = write_shards(folder, str(tmp_path / "shards" / "train-{:06d}.tar"), max_per_shard=2)
    assert [p.rsplit("/", 1)[1] for p in shards] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    for source in [str(tmp_path / "shards" / "train-{000000..000002}.tar"), str(tmp_path / "shards" / "*.tar"),
                   tmp_path / "shards"]:
        from_tar = load_clips(source)
        assert [c.clip_id for c in from_tar] == EXPECTED_IDS
        assert all(".tar#" in c.path for c in from_tar)
        assert [c.video_id for c in from_tar] == [c.video_id for c in folder]
        assert _frames_by_id(from_tar) == frames
    # A member's bytes are the original file's bytes.
    b = next(c for c in load_clips(shards[1]) if c.clip_id == "e")
    assert open_clip(b) == (video_folder / "e.mov").read_bytes()


def test_shards_keep_windows_and_meta(tmp_path, make_video):
    path = make_video(tmp_path / "long.mp4", 40)
    clip = Clip("v1.part", str(path), "v1", start=1.0, end=2.0, meta={"style": "target", "n": 3})
    (shard,) = write_shards([clip], tmp_path / "out", max_per_shard=10)
    (back,) = load_clips(shard)
    assert (back.clip_id, back.video_id, back.start, back.end) == ("v1.part", "v1", 1.0, 2.0)
    assert back.meta == {"style": "target", "n": 3}
    assert frame_indices_of(read_frames(open_clip(back), 2, start=back.start, end=back.end)) == [10, 19]


def _tar_with(path, members: dict[str, bytes]):
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("linked.mp4")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tf.addfile(link)


def test_unsafe_tar_members_are_rejected(tmp_path, make_video):
    video = make_video(tmp_path / "v.mp4", 20).read_bytes()
    tar = tmp_path / "evil.tar"
    _tar_with(tar, {"ok.mp4": video, "ok.json": b'{"clip_id": "good", "video_id": "g"}',
                    "../evil.mp4": video, "/abs.mp4": video, "sub/../../x.mp4": video})
    clips, rejected = scan_shard(str(tar))
    assert [c.clip_id for c in clips] == ["good"]
    reasons = dict(rejected)
    assert reasons["../evil.mp4"] == "'..' in path"
    assert reasons["/abs.mp4"] == "absolute path"
    assert reasons["sub/../../x.mp4"] == "'..' in path"
    assert "link" in reasons["linked.mp4"]
    assert [c.clip_id for c in load_clips(tar)] == ["good"]
    # A clip path naming such a member (e.g. from a hand-written manifest) is refused on open.
    for member in ("../evil.mp4", "/abs.mp4"):
        with pytest.raises(VideoError) as e:
            open_clip(Clip("x", f"{tar}#{member}", "x"))
        assert e.value.reason == "unsafe_path"
    with pytest.raises(VideoError) as e:
        open_clip(Clip("x", f"{tar}#nothere.mp4", "x"))
    assert e.value.reason == "missing"


def test_bad_files_are_all_reported_by_reason(tmp_path, make_video):
    folder = tmp_path / "mixed"
    expected = write_bad_videos(folder)
    make_video(folder / "fine_one.mp4", 20)
    make_video(folder / "sub" / "fine_two.webm", 20)
    reasons: dict[str, str] = {}
    good = []
    for clip in load_clips(folder):
        try:
            frames = read_frames(open_clip(clip), 16)
        except VideoError as e:
            reasons[clip.clip_id] = e.reason
            continue
        good.append((clip.clip_id, frames.shape))
    assert reasons == expected
    assert good == [("fine_one", (16, 48, 64, 3)), ("sub__fine_two", (16, 48, 64, 3))]


def test_manifest_errors_name_the_line(tmp_path):
    (tmp_path / "m.csv").write_text("clip_id,path\na,x.mp4\n,y.mp4\n")
    with pytest.raises(ClipSourceError, match=r"m.csv:3: missing clip_id"):
        load_clips(tmp_path / "m.csv")
    (tmp_path / "n.csv").write_text("id,file\na,x.mp4\n")
    with pytest.raises(ClipSourceError, match="clip_id and path"):
        load_clips(tmp_path / "n.csv")
    (tmp_path / "m.jsonl").write_text('{"clip_id": "a", "path": "a.mp4", "start": "soon"}\n')
    with pytest.raises(ClipSourceError, match=r"m.jsonl:1: start='soon'"):
        load_clips(tmp_path / "m.jsonl")
    (tmp_path / "d.jsonl").write_text('{"clip_id": "a", "path": "a.mp4"}\n{"clip_id": "a", "path": "b.mp4"}\n')
    with pytest.raises(ClipSourceError, match="duplicate clip_id"):
        load_clips(tmp_path / "d.jsonl")
    with pytest.raises(ClipSourceError, match="does not exist"):
        load_clips(tmp_path / "nowhere")
    with pytest.raises(ClipSourceError, match="does not exist"):
        load_clips(str(tmp_path / "s-{0..1}.tar"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipSourceError, match="no clips"):
        load_clips(tmp_path / "empty")


def test_manifest_video_id_defaults_and_windows(tmp_path):
    (tmp_path / "m.jsonl").write_text(
        '{"clip_id": "a", "path": "x.mp4"}\n{"clip_id": "b", "path": "/abs/y.mp4", "video_id": "V", "start": 1, "end": 2.5}\n')
    a, b = load_clips(tmp_path / "m.jsonl")
    assert (a.video_id, a.path) == ("a", str(tmp_path / "x.mp4"))
    assert (b.video_id, b.path, b.start, b.end) == ("V", "/abs/y.mp4", 1.0, 2.5)


def test_expand_braces():
    assert expand_braces("s-{000008..000011}.tar") == ["s-000008.tar", "s-000009.tar", "s-000010.tar", "s-000011.tar"]
    assert expand_braces("{a,b}/x-{1..2}") == ["a/x-1", "a/x-2", "b/x-1", "b/x-2"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_hf_urls(monkeypatch, tmp_path, make_video):
    assert parse_hf_url("hf://datasets/me/clips@v1/shards/train-{0..3}.tar") == ("me/clips", "v1", "shards/train-{0..3}.tar")
    assert parse_hf_url("hf://datasets/me/clips") == ("me/clips", None, "")
    with pytest.raises(ClipSourceError, match="expected hf://datasets"):
        parse_hf_url("hf://me/clips")
    huggingface_hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("offline and not in cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ClipSourceError, match="could not download"):
        load_clips("hf://datasets/me/clips/videos")

    make_video(tmp_path / "videos" / "a.mp4", 20)
    seen = {}

    def cached(repo_id, repo_type, revision, allow_patterns):
        seen.update(repo_id=repo_id, repo_type=repo_type, allow=allow_patterns)
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", cached)
    assert download_hf_source("hf://datasets/me/clips/videos") == str(tmp_path / "videos")
    assert seen == {"repo_id": "me/clips", "repo_type": "dataset", "allow": ["videos", "videos/*", "videos/**"]}
    assert [c.clip_id for c in load_clips("hf://datasets/me/clips/videos")] == ["a"]


# ----------------------------------------------------------------------------- windows


def test_cut_into_clips_windows_keep_video_id(tmp_path, make_video):
    long = make_video(tmp_path / "long.mp4", 40, fps=10)  # 4 s
    broken = tmp_path / "broken.mp4"
    broken.write_text("nope")
    videos = [Clip("long", str(long), "street1"), Clip("broken", str(broken), "b")]
    windows = cut_into_clips(videos, clip_seconds=1.5, stride_seconds=1.0)
    assert [(w.clip_id, w.start, w.end) for w in windows] == [
        ("long__w0000", 0.0, 1.5), ("long__w0001", 1.0, 2.5), ("long__w0002", 2.0, 3.5)]
    assert {w.video_id for w in windows} == {"street1"}
    assert frame_indices_of(read_frames(long, 3, start=windows[1].start, end=windows[1].end)) == [10, 17, 24]
    assert len(cut_into_clips(videos, clip_seconds=2.0)) == 2  # no overlap by default
    # Cutting inside an existing window.
    inner = cut_into_clips([Clip("long", str(long), "s", start=1.0, end=3.0)], clip_seconds=1.0)
    assert [(w.start, w.end) for w in inner] == [(1.0, 2.0), (2.0, 3.0)]


# ----------------------------------------------------------------------------- splits


def _many_clips(n_videos=60, seed=0):
    rng = np.random.default_rng(seed)
    clips, labels = [], {}
    for v in range(n_videos):
        cls = ["walk", "drive", "turn"][v % 3]
        for k in range(int(rng.integers(1, 6))):
            cid = f"v{v:03d}_{k}"
            clips.append(Clip(cid, f"/x/{cid}.mp4", f"v{v:03d}"))
            labels[cid] = cls
    return clips, labels


def test_splits_are_by_video_seeded_and_near_the_ratios():
    clips, _ = _many_clips()
    splits = make_splits(clips, seed=0)
    assert set(splits) == {c.clip_id for c in clips}
    split_of_video = defaultdict(set)
    for c in clips:
        split_of_video[c.video_id].add(splits[c.clip_id])
    assert all(len(s) == 1 for s in split_of_video.values())
    counts = Counter(splits.values())
    n = len(clips)
    assert abs(counts["train"] / n - 0.7) < 0.05
    assert abs(counts["val"] / n - 0.15) < 0.05 and abs(counts["test"] / n - 0.15) < 0.05
    assert make_splits(clips, seed=0) == splits
    assert make_splits(list(reversed(clips)), seed=0) == splits  # input order does not matter
    assert make_splits(clips, seed=1) != splits
    assert set(make_splits(clips, ratios=(1.0, 0.0, 0.0)).values()) == {"train"}


def test_stratified_splits_keep_every_class_in_every_split():
    clips, labels = _many_clips(n_videos=15)  # 5 videos per class
    splits = make_splits(clips, seed=3, labels=labels)
    present = defaultdict(set)
    for cid, s in splits.items():
        present[s].add(labels[cid])
    assert all(present[s] == {"walk", "drive", "turn"} for s in ("train", "val", "test"))
    # Holds for every seed, not just a lucky one.
    for seed in range(10):
        splits = make_splits(clips, seed=seed, labels=labels)
        assert all({labels[c] for c, s in splits.items() if s == name} == {"walk", "drive", "turn"}
                   for name in ("train", "val", "test"))


def test_split_files_round_trip(tmp_path):
    clips, _ = _many_clips(10)
    splits = make_splits(clips)
    save_splits(tmp_path / "splits.csv", splits)
    assert load_splits(tmp_path / "splits.csv") == splits
    assert (tmp_path / "splits.csv").read_text().splitlines()[0] == "clip_id,split"
    assert [c.clip_id for c in select_split(clips, splits, "val")] == sorted(
        c for c, s in splits.items() if s == "val")
    (tmp_path / "bad.csv").write_text("clip_id,split\na,holdout\n")
    with pytest.raises(ClipSourceError, match="holdout"):
        load_splits(tmp_path / "bad.csv")


def test_tar_index_is_cached_per_file_version(tmp_path, make_video):
    clip = Clip("a", str(make_video(tmp_path / "a.mp4", 20)), "a")
    (shard,) = write_shards([clip], tmp_path / "s")
    (back,) = load_clips(shard)
    clips_mod._tar_index.cache_clear()
    open_clip(back)
    open_clip(back)
    assert clips_mod._tar_index.cache_info().hits == 1
