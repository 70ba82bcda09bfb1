"""Reading what a run folder holds, for the report: stage records, training logs, images.

Nothing here writes into the run; a missing file means "that stage did not run" and is skipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vjepa_adapt.pipeline import STAGE_FILE, read_stage_record

# folders that hold bulk data, never a stage record: not walked when a run folder is scanned
_BULK = {"chunks", "checkpoints", "videos", "truth", "encoder", "best", "final", "tb", "masks", "frames"}
MAX_SCAN_DEPTH = 3


def read_metrics_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a trainer's ``metrics.jsonl``, one per step (a resumed run's repeated steps: the last
    row wins), in step order. A torn last line (a killed writer) is skipped."""
    rows: dict[float, dict[str, Any]] = {}
    p = Path(path)
    if not p.is_file():
        return []
    with open(p, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
                rows[float(row["step"])] = row
    return [rows[s] for s in sorted(rows)]


def stage_records(run_dir: str | os.PathLike,
                  stage_dirs: Mapping[str, str | os.PathLike] | None = None) -> list[tuple[str, Path, dict]]:
    """(stage name, folder, stage.json) of every finished stage: those of ``stage_dirs`` (the graph's
    folders, in graph order) or, without it, every ``stage.json`` found in the run folder."""
    out = []
    if stage_dirs is not None:
        for name, folder in stage_dirs.items():
            rec = read_stage_record(folder)
            if rec:
                out.append((name, Path(folder), rec))
        return out
    root = Path(run_dir)
    for dirpath, dirnames, filenames in os.walk(root):
        depth = len(Path(dirpath).relative_to(root).parts)
        dirnames[:] = sorted(d for d in dirnames if d not in _BULK and depth < MAX_SCAN_DEPTH)
        if STAGE_FILE in filenames:
            rec = read_stage_record(dirpath)
            if rec:
                out.append((str(rec.get("stage") or Path(dirpath).relative_to(root)), Path(dirpath), rec))
    return out


def find_pngs(folder: str | os.PathLike, depth: int = 1, limit: int = 40) -> list[Path]:
    """PNG files in ``folder`` and its sub-folders down to ``depth`` levels, sorted by path."""
    root = Path(folder)
    if not root.is_dir():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        level = len(Path(dirpath).relative_to(root).parts)
        dirnames[:] = sorted(d for d in dirnames if level < depth and d not in _BULK)
        found += [Path(dirpath) / f for f in filenames if f.lower().endswith(".png") and not f.startswith(".tmp")]
    return sorted(found)[:limit]
