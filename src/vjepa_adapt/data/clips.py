"""Clip records and clip sources (folders, manifests, WebDataset shards) and splits by source video.

Sources ``load_clips`` understands:
- **a folder** (searched recursively) of .mp4/.avi/.mkv/.webm/.mov files. ``clip_id`` is the path
  relative to the folder without its suffix, '/' replaced by '__'; ``video_id = clip_id`` (a folder
  carries no grouping; use a manifest to say which clips come from one source video). Hidden files
  are ignored. A folder holding no videos but ``.tar`` files is read as a folder of shards.
- **a manifest**: ``.csv`` (header row) or ``.jsonl`` with ``clip_id``, ``path`` and optionally
  ``video_id`` (default: the clip_id), ``start``/``end`` (seconds). Relative paths are resolved
  against the manifest's folder; every other column goes to ``Clip.meta``.
- **WebDataset tar shards**, read through the ``webdataset`` library: one ``.tar``, a glob, a brace
  pattern such as ``shards/train-{000000..000009}.tar``, ``::``-joined lists, and URLs webdataset
  opens: ``pipe:<command>`` (object stores: ``pipe:aws s3 cp s3://bucket/train-{0..9}.tar -``) and
  ``http(s)://``. A sample is ``<key>.<video ext>`` plus an optional ``<key>.json`` with clip_id /
  video_id / start / end (+ extra keys -> meta). ``Clip.path`` is ``<shard>#<member>``;
  ``open_clip`` returns that member's bytes (random access through a local file index; a remote
  shard is fetched once into a local cache, see ``local_shard``). ``stream_clips`` streams shards
  front to back, split by rank and DataLoader worker (``wds.split_by_node`` / ``split_by_worker``).
  Members with absolute or '..' paths, links and devices, and samples without a video are skipped
  with a logged reason.
- **hf://datasets/<owner>/<name>[@revision]/<path in repo>**: downloaded with huggingface_hub
  (cache honoured), then read as one of the above.

Splits are made by source video: every clip of a video lands in the same split (see make_splits).
With fewer source videos than the splits need (a few long walking-tour videos), each video is cut into
contiguous time blocks train | val | test with a guard gap between blocks (see split_by_time);
plan_splits picks the rule and says which it used.
"""

from __future__ import annotations

import csv
import functools
import glob
import io
import itertools
import json
import os
import re
import tarfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from vjepa_adapt import storage
from vjepa_adapt.errors import UserError
from vjepa_adapt.progress import get_logger

log = get_logger("data.clips")

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")
SPLITS = ("train", "val", "test")
_TAR_MARK = ".tar#"


@dataclass(frozen=True)
class Clip:
    """One short video to process.

    ``path`` is a filesystem path, or ``<shard.tar>#<key>`` for a member of a WebDataset shard.
    ``start``/``end`` (seconds) select a window of a longer video; ``None`` means the whole file.
    ``meta`` carries optional manifest columns (style, motion_class, truth, ...).
    """

    clip_id: str
    path: str
    video_id: str
    start: float | None = None
    end: float | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


class ClipSourceError(UserError):
    """A clip source (folder, manifest, shard pattern, hf:// URL) that cannot be read."""


class SplitError(UserError):
    """The clips cannot fill every split (train, val, test)."""


# ----------------------------------------------------------------------------------- loading


def load_clips(source: str | os.PathLike) -> list[Clip]:
    """All clips of a folder, manifest (.csv/.jsonl), tar shard(s) or hf:// URL (see module doc)."""
    text = os.fspath(source)
    if text.startswith("hf://"):
        return load_clips(download_hf_source(text))
    path = Path(text)
    if path.is_dir():
        clips = _load_folder(path)
        if not clips:
            tars = sorted(p for p in path.rglob("*.tar") if not p.name.startswith("."))
            if tars:
                clips = _load_shards([str(p) for p in tars])
    elif path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".csv":
            clips = _load_csv_manifest(path)
        elif suffix in (".jsonl", ".json"):
            clips = _load_jsonl_manifest(path)
        elif suffix == ".tar":
            clips = _load_shards([text])
        elif suffix in VIDEO_EXTENSIONS:
            clips = [Clip(clip_id=path.stem, path=str(path), video_id=path.stem)]
        else:
            raise ClipSourceError(f"{text}: not a folder, manifest (.csv/.jsonl), .tar shard or video file")
    elif is_remote_shard(text) or any(ch in text for ch in "*?[{") or "::" in text:
        clips = _load_shards(shard_urls(text))
    else:
        raise ClipSourceError(f"clip source {text!r} does not exist")
    if not clips:
        raise ClipSourceError(f"no clips found in {text}")
    _check_unique_ids(clips, text)
    return clips


def _check_unique_ids(clips: Sequence[Clip], where: str) -> None:
    counts = Counter(c.clip_id for c in clips)
    dupes = [k for k, n in counts.items() if n > 1]
    if dupes:
        raise ClipSourceError(f"{where}: duplicate clip_id {dupes[:5]} ({len(dupes)} in all); clip ids must be unique")


def _load_folder(folder: Path) -> list[Clip]:
    clips = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if name.startswith(".") or p.suffix.lower() not in VIDEO_EXTENSIONS:
                continue
            rel = p.relative_to(folder).with_suffix("").as_posix()
            clip_id = rel.replace("/", "__")
            clips.append(Clip(clip_id=clip_id, path=str(p), video_id=clip_id))
    clips.sort(key=lambda c: c.clip_id)
    return clips


def _parse_time(value: Any, where: str, column: str) -> float | None:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    try:
        t = float(value)
    except (TypeError, ValueError) as e:
        raise ClipSourceError(f"{where}: {column}={value!r} is not a number of seconds") from e
    if not np.isfinite(t) or t < 0:
        raise ClipSourceError(f"{where}: {column}={value!r} must be a finite number >= 0")
    return t


def _clip_from_row(row: dict[str, Any], base: Path, where: str) -> Clip:
    missing = [k for k in ("clip_id", "path") if row.get(k) in (None, "")]
    if missing:
        raise ClipSourceError(f"{where}: missing {', '.join(missing)}")
    clip_id = str(row["clip_id"])
    raw_path = str(row["path"])
    if is_remote_shard(raw_path):
        path = raw_path  # a URL: nothing to resolve
    elif _TAR_MARK in raw_path:
        tar, member = raw_path.split(_TAR_MARK, 1)
        path = f"{_resolve(tar + '.tar', base)}#{member}"
    else:
        path = _resolve(raw_path, base)
    video_id = str(row["video_id"]) if row.get("video_id") not in (None, "") else clip_id
    start = _parse_time(row.get("start"), where, "start")
    end = _parse_time(row.get("end"), where, "end")
    if start is not None and end is not None and end <= start:
        raise ClipSourceError(f"{where}: end ({end}) must be after start ({start})")
    meta = {k: v for k, v in row.items() if k not in ("clip_id", "path", "video_id", "start", "end")}
    return Clip(clip_id=clip_id, path=path, video_id=video_id, start=start, end=end, meta=meta)


def _resolve(path: str, base: Path) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else base / p)


def _load_csv_manifest(path: Path) -> list[Clip]:
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"clip_id", "path"} <= set(reader.fieldnames):
            raise ClipSourceError(f"{path}: a CSV manifest needs a header with clip_id and path columns")
        return [_clip_from_row(row, path.parent, f"{path}:{i + 2}") for i, row in enumerate(reader)]


def _load_jsonl_manifest(path: Path) -> list[Clip]:
    clips = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ClipSourceError(f"{path}:{i}: not valid JSON ({e.msg})") from e
            if not isinstance(row, dict):
                raise ClipSourceError(f"{path}:{i}: each line must be a JSON object")
            clips.append(_clip_from_row(row, path.parent, f"{path}:{i}"))
    return clips


# ----------------------------------------------------------------------------------- shards


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{000..003}`` (zero-padded numeric ranges) and ``{a,b}`` alternatives, in order."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    head, body, tail = pattern[: m.start()], m.group(1), pattern[m.end():]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = int(rng.group(1)), int(rng.group(2))
        width = len(rng.group(1))
        step = 1 if hi >= lo else -1
        options = [f"{i:0{width}d}" for i in range(lo, hi + step, step)]
    else:
        options = body.split(",")
    return [out for opt in options for out in expand_braces(head + opt + tail)]


def expand_shard_pattern(pattern: str) -> list[str]:
    """Shard paths from a brace pattern and/or glob; every brace-expanded path must exist."""
    paths: list[str] = []
    for expanded in expand_braces(pattern):
        if any(ch in expanded for ch in "*?["):
            paths.extend(sorted(glob.glob(expanded)))
        elif os.path.isfile(expanded):
            paths.append(expanded)
        else:
            raise ClipSourceError(f"shard {expanded} (from {pattern}) does not exist")
    if not paths:
        raise ClipSourceError(f"no shard matches {pattern}")
    return paths


def unsafe_member_reason(name: str) -> str | None:
    """Why a tar member path must not be used (absolute, '..', empty), or None when it is fine."""
    if not name or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "'..' in path"
    return None


@dataclass(frozen=True)
class _Member:
    offset: int
    size: int


@functools.lru_cache(maxsize=64)
def _tar_index(tar_path: str, mtime_ns: int) -> dict[str, _Member]:
    """Regular-file members of a local tar and where their bytes sit (cached per file version): random
    access by clip id (embed and the trainer read one clip at a time)."""
    del mtime_ns  # part of the cache key only: a rewritten shard is re-indexed
    index = {}
    try:
        with tarfile.open(tar_path, mode="r:") as tf:
            for info in tf:
                if info.isfile():
                    index[info.name] = _Member(info.offset_data, info.size)
    except (tarfile.TarError, OSError) as e:
        raise ClipSourceError(f"{tar_path}: not a readable (uncompressed) tar shard ({e})") from e
    return index


def is_remote_shard(source: str) -> bool:
    """A shard URL that webdataset opens: ``pipe:<command>`` (object stores: ``pipe:aws s3 cp s3://… -``,
    ``pipe:gsutil cat gs://…``) or ``http(s)://`` (curl)."""
    return source.startswith("pipe:") or bool(re.match(r"^(https?|gs|ais|sftp|scp|ftps)://", source))


def shard_urls(pattern: str) -> list[str]:
    """Shard URLs of a pattern: braces (``{000..009}``) and ``::`` lists expanded by webdataset; local
    paths also globbed and checked to exist."""
    import webdataset as wds

    if is_remote_shard(pattern):
        return list(wds.shardlists.expand_urls(pattern))
    return [os.path.abspath(p) for part in pattern.split("::") for p in expand_shard_pattern(part)]


def iter_shard_samples(
    urls: Sequence[str],
    *,
    by_node: bool = False,
    by_worker: bool = False,
    read: Callable[[str], bool] = lambda ext: True,
    on_reject: Callable[[str, str, str], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """WebDataset samples of ``urls`` through webdataset's pipeline: ``{"__key__", "__url__", <ext>: bytes}``.

    ``by_node`` / ``by_worker``: ``wds.split_by_node`` (torchrun rank) / ``wds.split_by_worker``
    (DataLoader worker) take this process's share of the shards. ``read(ext)``: whether a member's
    bytes are read (False: None in the sample; a local shard then seeks past them). Members that are
    not used — absolute or '..' paths, links and devices, names without ``<key>.<ext>`` — never reach
    a sample; ``on_reject(url, member, reason)`` hears of each. A member's original name is
    ``f"{__key__}.{ext}"`` (extensions keep their case).
    """
    import webdataset as wds
    from webdataset.tariterators import group_by_keys

    def reject(url: str, member: str, reason: str) -> None:
        if on_reject is not None:
            on_reject(url, member, reason)
        else:
            log.warning("skipping member %s of %s: %s", member, url, reason)

    def members(src: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for shard in src:
            yield from _tar_members(shard["url"], read, reject)
            yield {}  # end of shard: webdataset's grouping never joins samples across shards

    def duplicate(exn: Exception) -> bool:  # group_by_keys: one key with the same extension twice
        reject("", str(exn.args[0]).split(":", 1)[0], "duplicate member in its sample")
        return True

    stages: list[Any] = [wds.SimpleShardList(list(urls))]
    if by_node:
        stages.append(wds.split_by_node)
    if by_worker:
        stages.append(wds.split_by_worker)
    stages += [members, functools.partial(group_by_keys, lcase=False, handler=duplicate)]
    yield from wds.DataPipeline(*stages)


def _tar_members(url: str, read: Callable[[str], bool], reject: Callable[[str, str, str], None],
                 ) -> Iterator[dict[str, Any]]:
    """The usable members of one shard as webdataset's ``{fname, data, __url__}`` records, in tar order."""
    import webdataset as wds

    local = not is_remote_shard(url)
    try:
        with (open(url, "rb") if local else wds.gopen(url)) as fh, \
                tarfile.open(fileobj=fh, mode="r:" if local else "r|*") as tf:
            for info in tf:
                if info.isdir():
                    continue
                reason = unsafe_member_reason(info.name)
                if reason is None and not info.isfile():
                    reason = "not a regular file (link or device)"
                base = info.name.rpartition("/")[2]
                if reason is None and (base.startswith(".") or "." not in base):
                    reason = "not a <key>.<ext> sample file"
                if reason is not None:
                    reject(url, info.name, reason)
                    continue
                ext = base.partition(".")[2]  # WebDataset: the key ends at the first dot
                data = None
                if read(ext.lower()):
                    member = tf.extractfile(info)
                    data = member.read() if member else b""
                yield {"fname": info.name, "data": data, "__url__": url}
    except (tarfile.TarError, OSError, ValueError) as e:
        raise ClipSourceError(f"{url}: not a readable tar shard ({e})") from e


def scan_shard(tar_path: str) -> tuple[list[Clip], list[tuple[str, str]]]:
    """Clips of one WebDataset shard (a path or URL), and ``(member, reason)`` for every member skipped."""
    rejected: list[tuple[str, str]] = []
    samples = iter_shard_samples([tar_path], read=lambda ext: ext == "json",
                                 on_reject=lambda url, member, reason: rejected.append((member, reason)))
    clips = [c for c in (_clip_of_sample(s, rejected) for s in samples) if c is not None]
    clips.sort(key=lambda c: c.clip_id)
    return clips, rejected


def _clip_of_sample(sample: dict[str, Any], rejected: list[tuple[str, str]]) -> Clip | None:
    key, url = sample["__key__"], sample["__url__"]
    exts = [k for k in sample if not k.startswith("__")]
    videos = sorted(e for e in exts if "." + e.lower() in VIDEO_EXTENSIONS)
    json_ext = next((e for e in exts if e.lower() == "json"), None)
    if not videos:
        if json_ext:
            rejected.append((f"{key}.{json_ext}", "sample has no video member"))
        return None
    record: Any = {}
    if json_ext:
        try:
            record = json.loads((sample[json_ext] or b"").decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            rejected.append((f"{key}.{json_ext}", f"bad JSON ({e})"))
            return None
        if not isinstance(record, dict):
            rejected.append((f"{key}.{json_ext}", "JSON is not an object"))
            return None
    record.setdefault("clip_id", key.replace("/", "__"))
    record["path"] = f"{url}#{key}.{videos[0]}"
    return _clip_from_row(record, Path("."), f"{url}#{key}")


def stream_clips(source: str, by_node: bool = True, by_worker: bool = True) -> Iterator[tuple[Clip, bytes]]:
    """Stream ``(clip, video bytes)`` from shards, in shard order, this rank's / DataLoader worker's share.

    For sequential readers of remote shards (no random access: each shard is read once, front to
    back). Random access by clip id (``open_clip``) goes through a local file instead: local shards
    directly, remote ones through a local copy (:func:`local_shard`).
    """
    for sample in iter_shard_samples(shard_urls(source), by_node=by_node, by_worker=by_worker):
        rejected: list[tuple[str, str]] = []
        clip = _clip_of_sample(sample, rejected)
        for member, reason in rejected:
            log.warning("skipping member %s of %s: %s", member, sample["__url__"], reason)
        if clip is not None:
            yield clip, sample[clip.path.rpartition("#")[2][len(sample["__key__"]) + 1:]]


SHARD_CACHE_ENV = "VJEPA_ADAPT_SHARD_CACHE"


def local_shard(url: str) -> str:
    """A local path holding the shard ``url``: the path itself, or a copy streamed once (via webdataset's
    ``gopen``) into ``$VJEPA_ADAPT_SHARD_CACHE`` (default ``~/.cache/vjepa_adapt/shards``), atomically."""
    import hashlib

    import webdataset as wds

    if not is_remote_shard(url):
        return url
    cache = Path(os.environ.get(SHARD_CACHE_ENV) or Path.home() / ".cache" / "vjepa_adapt" / "shards")
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", url.rsplit("/", 1)[-1])[-60:]
    path = cache / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name}"
    if not path.exists():
        try:
            with wds.gopen(url) as src, storage.atomic_open(path, "wb") as dst:
                while block := src.read(1 << 20):
                    dst.write(block)
        except (OSError, ValueError) as e:
            raise ClipSourceError(f"{url}: could not fetch the shard ({e})") from e
    return str(path)


def _load_shards(paths: Iterable[str]) -> list[Clip]:
    clips: list[Clip] = []
    for tar_path in paths:
        found, rejected = scan_shard(tar_path if is_remote_shard(tar_path) else os.path.abspath(tar_path))
        for member, reason in rejected:
            log.warning("skipping member %s of %s: %s", member, tar_path, reason)
        clips.extend(found)
    return clips


def split_tar_path(path: str) -> tuple[str, str] | None:
    """``(shard, member)`` for a ``<shard.tar>#<member>`` or ``<shard URL>#<member>`` clip path, else None."""
    if is_remote_shard(path):
        url, sep, member = path.rpartition("#")
        return (url, member) if sep else None
    i = path.find(_TAR_MARK)
    if i < 0:
        return None
    return path[: i + len(".tar")], path[i + len(_TAR_MARK):]


def open_clip(clip: Clip) -> str | bytes:
    """What ``read_frames`` needs for a clip: its file path, or the bytes of its tar member.

    A member of a remote shard is read from the shard's local copy (:func:`local_shard`, fetched once).
    Raises ``VideoError`` ('missing', 'unsafe_path') so a loader can skip the clip with a reason.
    """
    from vjepa_adapt.data.video import VideoError

    parts = split_tar_path(clip.path)
    if parts is None or os.path.isfile(clip.path):
        return clip.path
    tar_path, member = parts
    reason = unsafe_member_reason(member)
    if reason is not None:
        raise VideoError("unsafe_path", f"{clip.path}: tar member refused ({reason})")
    try:
        tar_path = local_shard(tar_path)
        index = _tar_index(tar_path, os.stat(tar_path).st_mtime_ns)
    except FileNotFoundError as e:
        raise VideoError("missing", f"shard {tar_path} does not exist") from e
    except ClipSourceError as e:
        raise VideoError("unreadable", str(e)) from e
    entry = index.get(member)
    if entry is None:
        raise VideoError("missing", f"{tar_path} has no member {member}")
    with open(tar_path, "rb") as fh:
        fh.seek(entry.offset)
        data = fh.read(entry.size)
    if len(data) != entry.size:
        raise VideoError("truncated", f"{clip.path}: shard ends inside this member")
    return data


def write_shards(clips: Sequence[Clip], pattern_or_dir: str | os.PathLike, max_per_shard: int = 1000,
                 ) -> list[str]:
    """Pack clips into WebDataset tar shards; returns the shard paths.

    ``pattern_or_dir``: a folder (shards named ``shard-000000.tar``, ...) or a pattern with one
    ``{}``-style or ``%``-style integer field, e.g. ``out/train-{:06d}.tar`` / ``out/train-%06d.tar``.
    Each clip becomes ``<key>.<ext>`` (the source file's bytes, whole — a clip's start/end window is
    kept in the JSON, nothing is re-encoded) + ``<key>.json``. Each shard is written atomically.
    """
    if max_per_shard < 1:
        raise ValueError("max_per_shard must be >= 1")
    target = os.fspath(pattern_or_dir)
    if target.endswith(".tar"):
        if "%" in target:
            name_of = lambda i: target % i  # noqa: E731
        elif "{" in target:
            name_of = target.format
        else:
            raise ValueError(f"{target}: a shard pattern needs an index field such as {{:06d}} or %06d")
    else:
        name_of = lambda i: os.path.join(target, f"shard-{i:06d}.tar")  # noqa: E731
    paths = []
    used_keys: set[str] = set()
    for shard_i, lo in enumerate(range(0, len(clips), max_per_shard)):
        out = name_of(shard_i)
        with storage.atomic_open(out, "wb") as fh, tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for clip in clips[lo: lo + max_per_shard]:
                key = _shard_key(clip.clip_id, used_keys)
                data = open_clip(clip)
                if isinstance(data, str):
                    with open(data, "rb") as src:
                        data = src.read()
                ext = _video_suffix(clip.path)
                record = {"clip_id": clip.clip_id, "video_id": clip.video_id, **clip.meta}
                if clip.start is not None:
                    record["start"] = clip.start
                if clip.end is not None:
                    record["end"] = clip.end
                _add_member(tf, f"{key}{ext}", data)
                _add_member(tf, f"{key}.json", json.dumps(record, default=storage._json_default).encode("utf-8"))
        paths.append(out)
    return paths


def _shard_key(clip_id: str, used: set[str]) -> str:
    # Keys may not contain '.' (WebDataset splits key and extension at the first dot) or '/'.
    base = re.sub(r"[^A-Za-z0-9_-]", "_", clip_id) or "clip"
    key, n = base, 1
    while key in used:
        key, n = f"{base}_{n}", n + 1
    used.add(key)
    return key


def _video_suffix(path: str) -> str:
    parts = split_tar_path(path)
    name = parts[1] if parts else path
    suffix = PurePosixPath(name).suffix.lower()
    return suffix if suffix in VIDEO_EXTENSIONS else ".mp4"


def _add_member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # deterministic shards
    info.mode = 0o644
    tf.addfile(info, io.BytesIO(data))


# ----------------------------------------------------------------------------------- hf://


def parse_hf_url(url: str) -> tuple[str, str | None, str]:
    """``hf://datasets/owner/name[@rev]/sub/path`` -> (repo_id, revision, sub/path)."""
    m = re.fullmatch(r"hf://datasets/([^/@]+/[^/@]+)(?:@([^/]+))?(?:/(.*))?", url)
    if not m:
        raise ClipSourceError(f"{url}: expected hf://datasets/<owner>/<name>[@revision][/<path>]")
    return m.group(1), m.group(2), (m.group(3) or "").strip("/")


def download_hf_source(url: str) -> str:
    """Download (or reuse from the cache) what an hf:// URL names; returns the local path."""
    repo_id, revision, sub = parse_hf_url(url)
    try:
        import huggingface_hub
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as e:
        raise ClipSourceError(f"{url}: reading hf:// sources needs the huggingface_hub package") from e
    has_glob = any(ch in sub for ch in "*?[{")
    allow = None
    if sub:
        allow = expand_braces(sub) if has_glob else [sub, f"{sub}/*", f"{sub}/**"]
    try:
        root = huggingface_hub.snapshot_download(repo_id, repo_type="dataset", revision=revision,
                                                 allow_patterns=allow)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise ClipSourceError(
            f"{url}: could not download from the Hugging Face Hub and nothing is cached "
            f"(offline, wrong name, or a gated dataset without a token?): {e}") from e
    return os.path.join(root, sub) if sub else root


# ----------------------------------------------------------------------------------- windows


def cut_into_clips(videos: Sequence[Clip], clip_seconds: float, stride_seconds: float | None = None,
                   ) -> list[Clip]:
    """Cut long videos into windows ``[t, t + clip_seconds)`` every ``stride_seconds`` (default: no overlap).

    A tail shorter than ``clip_seconds`` is dropped. Window ids are ``<clip_id>__w<k:04d>``; every
    window keeps its video's ``video_id`` so splits stay by source video. A video that cannot be
    probed is skipped with a logged reason. If an input clip has a window itself, it is cut within it.
    """
    from vjepa_adapt.data.video import VideoError, probe_video

    if clip_seconds <= 0:
        raise ValueError("clip_seconds must be positive")
    stride = clip_seconds if stride_seconds is None else stride_seconds
    if stride <= 0:
        raise ValueError("stride_seconds must be positive")
    out: list[Clip] = []
    for video in videos:
        try:
            duration = probe_video(open_clip(video), count_frames=False).duration
        except VideoError as e:
            log.warning("skipping %s: %s", video.clip_id, e)
            continue
        lo = video.start or 0.0
        hi = min(video.end, duration) if video.end is not None else duration
        k, t = 0, lo
        while t + clip_seconds <= hi + 1e-6:
            out.append(replace(video, clip_id=f"{video.clip_id}__w{k:04d}", start=round(t, 6),
                               end=round(t + clip_seconds, 6), meta=dict(video.meta)))
            k += 1
            t = lo + k * stride
    return out


# ----------------------------------------------------------------------------------- splits


def make_splits(clips: Sequence[Clip], ratios: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0,
                labels: dict[str, str] | None = None) -> dict[str, str]:
    """``clip_id -> 'train'|'val'|'test'``, by source video: a video's clips all go to one split.

    Algorithm (deterministic for a seed):
    1. Group clips by ``video_id``; a video's class is the majority label of its labelled clips
       (ties -> the smaller label; no labels -> one shared group). Without ``labels`` there is one group.
    2. Within each class, videos are shuffled with the seed. If the class has at least as many
       videos as there are splits with a non-zero ratio, the first videos are dealt one to each
       such split (so every class appears in train, val and test when possible).
    3. The remaining videos, largest first (seeded order among equals), each go to the split with
       the largest deficit ``ratio * clips_in_class - clips_given``, which keeps per-class
       proportions near the ratios and hence the overall ratio too.
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"ratios must be three non-negative numbers with a positive sum, got {ratios}")
    total_ratio = float(sum(ratios))
    shares = [r / total_ratio for r in ratios]
    by_video: dict[str, list[str]] = defaultdict(list)
    for clip in clips:
        by_video[clip.video_id].append(clip.clip_id)
    video_class: dict[str, str] = {}
    for vid, ids in by_video.items():
        votes = Counter(labels[c] for c in ids if labels and c in labels and labels[c] is not None)
        if votes:
            best = max(votes.values())
            video_class[vid] = min(str(k) for k, v in votes.items() if v == best)
        else:
            video_class[vid] = ""
    classes: dict[str, list[str]] = defaultdict(list)
    for vid in sorted(by_video):
        classes[video_class[vid]].append(vid)
    rng = np.random.default_rng(seed)
    active = [i for i, s in enumerate(shares) if s > 0]
    assignment: dict[str, str] = {}
    for cls in sorted(classes):
        vids = [classes[cls][i] for i in rng.permutation(len(classes[cls]))]
        size = {v: len(by_video[v]) for v in vids}
        given = [0.0, 0.0, 0.0]
        total = sum(size.values())
        rest = vids
        if len(vids) >= len(active):
            for split_i, vid in zip(active, vids):
                assignment[vid] = SPLITS[split_i]
                given[split_i] += size[vid]
            rest = vids[len(active):]
        for vid in sorted(rest, key=lambda v: -size[v]):  # stable: seeded order among equal sizes
            deficits = [shares[i] * total - given[i] if i in active else -np.inf for i in range(3)]
            split_i = int(np.argmax(deficits))
            assignment[vid] = SPLITS[split_i]
            given[split_i] += size[vid]
    return {cid: assignment[vid] for vid, ids in by_video.items() for cid in ids}


@dataclass
class SplitPlan:
    """The splits of a run and how they were made."""

    splits: dict[str, str]  # clip_id -> split; clips dropped in a guard gap are absent
    rule: str  # "by_video" | "time_blocks"
    dropped: list[str] = field(default_factory=list)  # clip ids that fell in a guard gap
    record: dict[str, Any] = field(default_factory=dict)  # the rule as stage.json records it


def plan_splits(clips: Sequence[Clip], ratios: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0,
                labels: dict[str, str] | None = None, guard_seconds: float | None = None) -> SplitPlan:
    """Splits by source video (:func:`make_splits`); when that leaves a split with a non-zero ratio
    empty (fewer source videos than splits), contiguous time blocks per video (:func:`split_by_time`).

    Raises :class:`SplitError` when a split is still empty. ``labels`` stratify the by-video rule
    only; ``guard_seconds`` is the time-block rule's guard (None: one clip length).
    """
    n_videos = len({c.video_id for c in clips})
    active = [s for s, r in zip(SPLITS, ratios) if r > 0]
    by_video = make_splits(clips, ratios=ratios, seed=seed, labels=labels)
    if all(any(v == s for v in by_video.values()) for s in active):
        return SplitPlan(by_video, "by_video", record={"rule": "by_video", "videos": n_videos})
    splits, dropped, record = split_by_time(clips, ratios, guard_seconds=guard_seconds)
    record = {"rule": "time_blocks", "videos": n_videos,
              "why": f"{n_videos} source video(s) cannot fill {len(active)} splits by video", **record}
    empty = [s for s in active if not any(v == s for v in splits.values())]
    if empty:
        timed = record["timed_videos"]
        raise SplitError(
            f"split {empty[0]!r} would be empty: {len(clips)} clips from {n_videos} source videos "
            f"({timed} with clip times to cut into blocks, {len(dropped)} clips dropped in guard gaps). Add videos, "
            "or cut long videos into more clips with data.clip_seconds (or a manifest with start/end), "
            "or lower data.split_guard_seconds")
    return SplitPlan(splits, "time_blocks", dropped=dropped, record=record)


def split_by_time(clips: Sequence[Clip], ratios: tuple[float, float, float] = (0.7, 0.15, 0.15),
                  guard_seconds: float | None = None) -> tuple[dict[str, str], list[str], dict[str, Any]]:
    """Contiguous time blocks per source video: ``(splits, dropped clip ids, record)``.

    Rule, for each video whose clips all have ``start`` and ``end``:
    1. Its span [t0, t1] (first start, last end) is cut at the split ratios into blocks in time
       order train | val | test; a clip belongs to the block holding its midpoint.
    2. Guard: at each boundary between two non-empty blocks, while the gap between the earlier
       block's latest end and the later block's earliest start is below ``guard_seconds`` (default:
       the video's median clip length), the larger block (on a tie the later one) drops its clip
       nearest the boundary. So no clip of one split overlaps, or comes within the guard of, a clip
       of another split of the same video. Dropped clips are returned (and left out of the splits).
    A video whose clips lack times (whole files) cannot be cut and goes to train whole.
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"ratios must be three non-negative numbers with a positive sum, got {ratios}")
    if guard_seconds is not None and guard_seconds < 0:
        raise ValueError(f"guard_seconds must be >= 0, got {guard_seconds}")
    shares = np.asarray(ratios, dtype=np.float64) / float(sum(ratios))
    edges = np.cumsum(shares)[:2]
    by_video: dict[str, list[Clip]] = defaultdict(list)
    for clip in clips:
        by_video[clip.video_id].append(clip)
    splits: dict[str, str] = {}
    dropped: list[str] = []
    untimed = 0
    for vid in sorted(by_video):
        vclips = by_video[vid]
        if any(c.start is None or c.end is None for c in vclips):
            untimed += 1
            splits.update({c.clip_id: "train" for c in vclips})
            continue
        t0, t1 = min(c.start for c in vclips), max(c.end for c in vclips)
        cuts = t0 + edges * (t1 - t0)
        guard = float(np.median([c.end - c.start for c in vclips])) if guard_seconds is None else guard_seconds
        blocks: list[list[Clip]] = [[], [], []]
        for c in sorted(vclips, key=lambda c: (c.start, c.end, c.clip_id)):
            blocks[int(np.searchsorted(cuts, (c.start + c.end) / 2, side="right"))].append(c)
        live = [b for b in blocks if b]
        for a, b in itertools.pairwise(live):  # adjacent non-empty blocks, in time order
            while a and b and min(c.start for c in b) - max(c.end for c in a) < guard - 1e-9:
                if len(a) > len(b):
                    out = max(a, key=lambda c: c.end)
                    a.remove(out)
                else:
                    out = min(b, key=lambda c: c.start)
                    b.remove(out)
                dropped.append(out.clip_id)
        for name, block in zip(SPLITS, blocks):
            splits.update({c.clip_id: name for c in block})
    record = {
        "block_order": list(SPLITS),
        "guard_seconds": "one clip length (median per video)" if guard_seconds is None else float(guard_seconds),
        "dropped_in_guard": len(dropped),
        "timed_videos": len(by_video) - untimed,
        "untimed_videos_in_train": untimed,
    }
    return splits, dropped, record


def save_splits(path: str | os.PathLike, splits: dict[str, str]) -> None:
    """Write ``clip_id,split`` rows (sorted by clip_id) atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["clip_id", "split"])
    for clip_id in sorted(splits):
        writer.writerow([clip_id, splits[clip_id]])
    storage.write_text(path, buf.getvalue())


def load_splits(path: str | os.PathLike) -> dict[str, str]:
    """Read a file written by :func:`save_splits`; unknown split names are an error."""
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames != ["clip_id", "split"]:
            raise ClipSourceError(f"{path}: expected a header 'clip_id,split', got {reader.fieldnames}")
        out = {}
        for i, row in enumerate(reader, start=2):
            if row["split"] not in SPLITS:
                raise ClipSourceError(f"{path}:{i}: split {row['split']!r} is not one of {SPLITS}")
            out[row["clip_id"]] = row["split"]
    return out


def select_split(clips: Sequence[Clip], splits: dict[str, str], split: str) -> list[Clip]:
    """The clips assigned to ``split`` (clips absent from ``splits`` are left out)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    return [c for c in clips if splits.get(c.clip_id) == split]
