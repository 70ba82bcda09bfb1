"""The ``tag`` stage: tag every clip, write ``tags.jsonl``, count repairs and defaults.

One line per tagged clip::

    {"clip_id": ..., "tags": {field: value | [values]}, "confidences": {field: float},
     "repaired": ["field: what", ...], "defaulted": ["field", ...], "backend": "hf",
     "raw": "first 2000 chars of the reply"  |  "measurements": {...}  (heuristic)}

Clips the backend could not tag (TagFailure) are skipped with their reason. The file is written
atomically at the end — also when the run then fails its checks, so the evidence stays on disk.
While running, rows also go to ``tags.jsonl.partial`` so a crashed run resumes where it stopped.
The run fails (BadInputError) when more than ``max_bad_fraction`` of the clips were skipped, or
when more than ``max_default_fraction`` of the answered fields fell back to "unknown".
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from vjepa_adapt.errors import BadInputError
from vjepa_adapt.progress import get_logger, progress
from vjepa_adapt.stage_result import StageResult, check_bad_share
from vjepa_adapt.storage import _json_default, append_jsonl, read_jsonl, write_jsonl
from vjepa_adapt.tagging.backends import TagBackend
from vjepa_adapt.tagging.frames import TagFailure
from vjepa_adapt.tagging.parse import parse_tags
from vjepa_adapt.tagging.taxonomy import Taxonomy

log = get_logger("tagging")

TAGS_FILE = "tags.jsonl"


def tag_clips(
    items: Iterable[tuple[str, np.ndarray | Callable[[], np.ndarray] | Exception]],
    backend: TagBackend,
    taxonomy: Taxonomy,
    out_path: str | os.PathLike,
    max_default_fraction: float = 0.5,
    max_bad_fraction: float = 0.5,
    raw_max_chars: int = 2000,
    resume: bool = True,
    total: int | None = None,
) -> StageResult:
    """Tag ``(clip_id, frames)`` pairs with ``backend``; write ``out_path`` (a ``tags.jsonl``).

    ``frames`` is a ``(T, H, W, 3)`` uint8 array, a zero-argument callable returning one (so a
    resumed clip is not decoded again), or the exception met while reading the clip (the clip is
    skipped with that message). Rows are also appended to ``<out_path>.partial`` as they
    are made; with ``resume`` a re-run after a crash reuses the rows there that came from the same
    backend and taxonomy fields, instead of asking the model again.
    """
    out_path = Path(out_path)
    partial = out_path.with_name(out_path.name + ".partial")
    expected = expected_fields(backend, taxonomy)
    previous = _read_partial(partial, backend.name, taxonomy.names) if resume else {}
    if not resume:
        partial.unlink(missing_ok=True)
    rows: list[dict] = []
    skipped: list[tuple[str, str]] = []
    seen: set[str] = set()

    for clip_id, frames in progress(items, desc="tag", total=total, unit="clip"):
        if clip_id in seen:
            raise BadInputError(f"tag: clip id {clip_id!r} appears twice in the input")
        seen.add(clip_id)
        if clip_id in previous:
            rows.append(previous[clip_id])
            continue
        row, reason = tag_one(clip_id, frames, backend, taxonomy, expected, raw_max_chars)
        if row is None:
            skipped.append((clip_id, reason))
            continue
        append_jsonl(partial, row)
        rows.append(row)

    result = finish_tags(rows, skipped, out_path, backend.name, taxonomy, expected,
                         reused=sum(r["clip_id"] in previous for r in rows),
                         max_default_fraction=max_default_fraction, max_bad_fraction=max_bad_fraction,
                         before_checks=lambda: partial.unlink(missing_ok=True))
    return result


def expected_fields(backend: TagBackend, taxonomy: Taxonomy) -> tuple[str, ...]:
    """The taxonomy fields the backend answers, in taxonomy order (the heuristic measures only some)."""
    measured = backend.measured_fields
    return tuple(n for n in taxonomy.names if measured is None or n in measured)


def tag_one(
    clip_id: str,
    frames: np.ndarray | Callable[[], np.ndarray] | Exception,
    backend: TagBackend,
    taxonomy: Taxonomy,
    expected: tuple[str, ...],
    raw_max_chars: int = 2000,
) -> tuple[dict | None, str | None]:
    """One clip's ``tags.jsonl`` row, or ``(None, reason)`` when it cannot be read or tagged."""
    if isinstance(frames, Exception):
        log.warning("tag: skipped %s (unreadable: %s)", clip_id, frames)
        return None, f"unreadable: {frames}"
    try:
        reply = backend.tag(clip_id, frames() if callable(frames) else frames)
    except TagFailure as err:
        log.warning("tag: skipped %s (%s)", clip_id, err)
        return None, str(err)
    return build_row(clip_id, reply, backend.name, taxonomy, expected, raw_max_chars), None


def finish_tags(
    rows: list[dict],
    skipped: list[tuple[str, str]],
    out_path: str | os.PathLike,
    backend_name: str,
    taxonomy: Taxonomy,
    expected: tuple[str, ...],
    reused: int = 0,
    max_default_fraction: float = 0.5,
    max_bad_fraction: float = 0.5,
    before_checks: Callable[[], None] | None = None,
) -> StageResult:
    """Write ``tags.jsonl`` (rows in clip order), count repairs and defaults, then run the checks."""
    out_path = Path(out_path)
    result = StageResult(done=len(rows))
    for clip_id, reason in skipped:
        result.skip(clip_id, reason)
    write_jsonl(out_path, rows)
    if before_checks is not None:
        before_checks()
    n_defaulted = sum(len(r["defaulted"]) for r in rows)
    per_field = Counter(f for r in rows for f in r["defaulted"])
    n_json_errors = sum("json_error" in r for r in rows)
    answered = result.done * len(expected)
    default_fraction = n_defaulted / answered if answered else 0.0
    result.extra.update(
        {
            "tags_path": str(out_path),
            "backend": backend_name,
            "taxonomy": taxonomy.source,
            "fields_answered": list(expected),
            "reused_clips": reused,
            "repaired_clips": sum(bool(r["repaired"]) for r in rows),
            "defaulted_clips": sum(bool(r["defaulted"]) for r in rows),
            "defaulted_fields": n_defaulted,
            "default_fraction": round(default_fraction, 4),
            "json_errors": n_json_errors,
            "defaults_per_field": dict(per_field.most_common()),
        }
    )
    log.info(
        "tag: %d clips tagged, %d skipped; %d repaired, %d with defaults (%.0f%% of fields)",
        result.done, len(result.skipped), result.extra["repaired_clips"], result.extra["defaulted_clips"],
        100 * default_fraction,
    )

    check_bad_share(result, max_bad_fraction, stage="tag")
    if default_fraction > max_default_fraction:
        worst = ", ".join(f"{f} ×{n}" for f, n in per_field.most_common(3))
        raise BadInputError(
            f"tag: {n_defaulted}/{answered} answered fields fell back to 'unknown' "
            f"({default_fraction:.0%} > allowed {max_default_fraction:.0%}; tag.max_default_fraction); "
            f"{n_json_errors} replies had no readable JSON; most defaulted: {worst}. "
            f"Check the model/prompt — raw replies are in {out_path}"
        )
    return result


# ------------------------------------------------------------------- clip-parallel (engine) form


def make_tag_work(backend: TagBackend, taxonomy: Taxonomy, read: Callable[[Any], np.ndarray],
                  raw_max_chars: int = 2000):
    """``work(chunks) -> (chunk index, part)`` for :mod:`vjepa_adapt.engine`; ``read(clip)`` decodes a clip
    (its VideoError becomes the clip's 'unreadable' reason). A part: rows (JSON lines), skipped ids/reasons."""
    from vjepa_adapt.data.video import VideoError
    from vjepa_adapt.engine import clips_of

    expected = expected_fields(backend, taxonomy)

    def work(chunks):
        rows: list[dict] = []
        skipped: list[tuple[str, str]] = []
        for chunk, c, last in clips_of(chunks, "tag"):
            try:
                frames: Any = read(c)
            except VideoError as e:
                frames = e
            row, reason = tag_one(c.clip_id, frames, backend, taxonomy, expected, raw_max_chars)
            if row is None:
                skipped.append((c.clip_id, reason))
            else:
                rows.append(row)
            if last:
                yield chunk.index, {
                    "rows": np.asarray([json.dumps(r, default=_json_default) for r in rows], dtype=str),
                    "skipped_ids": np.asarray([i for i, _ in skipped], dtype=str),
                    "skipped_reasons": np.asarray([r for _, r in skipped], dtype=str),
                }
                rows, skipped = [], []

    return work


def merge_tag_parts(parts) -> tuple[list[dict], list[tuple[str, str]]]:
    """Parts in chunk order -> rows and skipped clips in clip order (a clip id twice is an error)."""
    rows: list[dict] = []
    skipped: list[tuple[str, str]] = []
    for part in parts:
        rows.extend(json.loads(str(line)) for line in part["rows"])
        skipped.extend((str(c), str(r)) for c, r in zip(part["skipped_ids"], part["skipped_reasons"]))
    counts = Counter([r["clip_id"] for r in rows] + [c for c, _ in skipped])
    twice = [c for c, n in counts.items() if n > 1]
    if twice:
        raise BadInputError(f"tag: clip id {twice[0]!r} appears twice in the input")
    return rows, skipped


def build_row(
    clip_id: str,
    reply: str | dict,
    backend_name: str,
    taxonomy: Taxonomy,
    expected: tuple[str, ...],
    raw_max_chars: int = 2000,
) -> dict:
    """One ``tags.jsonl`` row from a backend reply (parsed strictly against the taxonomy)."""
    parsed = parse_tags(reply, taxonomy, expected_fields=expected)
    row = {
        "clip_id": clip_id,
        "tags": parsed.tags,
        "confidences": {k: round(v, 4) for k, v in parsed.confidences.items()},
        "repaired": parsed.repaired,
        "defaulted": parsed.defaulted,
        "backend": backend_name,
    }
    if parsed.json_error:
        row["json_error"] = parsed.json_error
    if isinstance(reply, str):
        row["raw"] = reply[:raw_max_chars]  # to see *why* a clip was repaired/defaulted
    elif isinstance(reply.get("measurements"), dict):
        row["measurements"] = reply["measurements"]
    return row


def _read_partial(path: Path, backend_name: str, fields: tuple[str, ...]) -> dict[str, dict]:
    """Rows of an interrupted run that can be reused (torn last line and foreign rows ignored)."""
    if not path.is_file():
        return {}
    out: dict[str, dict] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if (
                isinstance(row, dict)
                and row.get("backend") == backend_name
                and isinstance(row.get("tags"), dict)
                and tuple(row["tags"]) == fields
                and isinstance(row.get("clip_id"), str)
            ):
                out[row["clip_id"]] = row
    if out:
        log.info("tag: resuming, %d clips already tagged in %s", len(out), path)
    return out


def load_tags(path: str | os.PathLike) -> dict[str, dict]:
    """``tags.jsonl`` as ``{clip_id: row}`` (row has tags, confidences, repaired, defaulted, backend)."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"tags file not found: {path} (run the tag stage first)")
    try:
        rows = read_jsonl(path)
    except json.JSONDecodeError as err:
        raise BadInputError(f"{path}: not valid JSON lines ({err})") from None
    out: dict[str, dict] = {}
    for i, row in enumerate(rows, start=1):
        ok = isinstance(row, dict) and isinstance(row.get("clip_id"), str) and isinstance(row.get("tags"), dict)
        if not ok:
            raise BadInputError(f"{path}: line {i} is not a tag row (needs clip_id and tags)")
        if row["clip_id"] in out:
            raise BadInputError(f"{path}: clip {row['clip_id']!r} appears twice (line {i})")
        out[row["clip_id"]] = row
    return out
