"""Clip records and clip sources (folders, manifests, WebDataset shards) and splits by source video."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
