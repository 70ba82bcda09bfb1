"""Atomic file writes: every file the toolkit produces goes through here.

A write lands as a temporary file in the destination folder, is flushed and fsynced, then renamed
over the destination. ``os.replace`` is atomic on POSIX within one filesystem, so a reader (or a
re-run after ``kill -9``) sees either the old file or the complete new one, never a partial one.
A full disk raises ``OSError`` before the rename, so the previous good file is kept.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[BinaryIO]:
    """Open a temp file next to ``path``; on clean exit fsync and rename it onto ``path``.

    On any exception the temp file is removed and the destination is untouched.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open supports 'wb' and 'w', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    # mkstemp creates 0600; give the file the permissions a plain open() would (reports are shared).
    os.chmod(tmp, 0o666 & ~_umask())
    with _discard_on_error(tmp):
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as fh:
            yield fh  # type: ignore[misc]
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def _discard_on_error(tmp: str | os.PathLike) -> Iterator[None]:
    """Remove the temp file ``tmp`` if the block fails (the destination stays untouched)."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@functools.cache
def _umask() -> int:
    """The process umask, read once on first write (not at import: reading it means setting it)."""
    try:  # Linux exposes it without touching it
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not supported on every platform/filesystem.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r, default=_json_default) + "\n" for r in rows))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one line (metrics logs). A torn last line after a crash is skipped by readers."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, default=_json_default) + "\n")


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` streamed into a temp file, fsynced, renamed (checkpoints, anchors).

    Streamed, not serialised to memory first: torch writes one tensor storage at a time (a GPU
    storage is copied to the host one at a time too), so a save of a ViT-g checkpoint (~16 GB with
    optimizer state) needs no second copy of it in host RAM.
    """
    import torch

    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)


def link_atomic(path: str | os.PathLike, target: str | os.PathLike) -> None:
    """Make ``path`` a symlink to ``target`` (relative to ``path``'s folder), replacing it atomically.

    A reader sees the old link (or file) or the new one, never none. Where symlinks are not
    available, a hard link is made instead: it costs no space either.
    """
    path = Path(path)
    tmp = path.parent / f"{TMP_PREFIX}{path.name}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        os.symlink(os.fspath(target), tmp)
    except OSError:  # no symlinks on this filesystem / platform
        os.link(path.parent / target, tmp)
    with _discard_on_error(tmp):
        os.replace(tmp, path)
    _fsync_dir(path.parent)


def load_torch(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Load a file written by :func:`save_torch`; ``weights_only=True`` so no code is executed."""
    import torch

    return torch.load(path, map_location=map_location, weights_only=True)


def save_npz(path: str | os.PathLike, **arrays: Any) -> None:
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes(path, buf.getbuffer())


def save_figure(path: str | os.PathLike, fig: Any, dpi: int = 120) -> None:
    """Save a matplotlib figure atomically (format from the suffix)."""
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
    write_bytes(path, buf.getbuffer())


def remove_stale_temps(folder: str | os.PathLike) -> int:
    """Delete temp files left by a killed writer; returns how many were removed."""
    folder = Path(folder)
    if not folder.exists():
        return 0
    n = 0
    for p in folder.rglob(TMP_PREFIX + "*"):
        with contextlib.suppress(OSError):
            p.unlink()
            n += 1
    return n


def _json_default(obj: Any) -> Any:
    # numpy scalars/arrays and Paths show up in metrics; keep JSON writing total.
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
